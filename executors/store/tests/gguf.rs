//! The GGUF reader against synthetic files.

mod common;

use std::io::Cursor;
use std::path::Path;

use aistack_store::gguf::{self, GgufError, Value, ValueType};
use common::{Gguf, V};

fn parse(bytes: &[u8]) -> Result<gguf::Header, GgufError> {
    gguf::parse(Cursor::new(bytes), bytes.len() as u64, Path::new("m.gguf"))
}

fn every_type() -> Gguf {
    let mut g = Gguf::llama("every");
    g.metadata.extend([
        ("t.u8".into(), V::U8(18)),
        ("t.i8".into(), V::I8(-19)),
        ("t.u16".into(), V::U16(4660)),
        ("t.i16".into(), V::I16(-4661)),
        ("t.u32".into(), V::U32(305_419_896)),
        ("t.i32".into(), V::I32(-305_419_897)),
        ("t.f32".into(), V::F32(0.123_456_79)),
        ("t.bool".into(), V::Bool(true)),
        ("t.string".into(), V::Str("hello world".into())),
        ("t.u64".into(), V::U64(1_311_768_467_463_790_320)),
        ("t.i64".into(), V::I64(-1_311_768_467_463_790_321)),
        ("t.f64".into(), V::F64(0.123_456_789)),
        (
            "t.arr.i16".into(),
            V::Arr(3, vec![V::I16(1), V::I16(2), V::I16(3), V::I16(4)]),
        ),
        (
            "t.arr.nested".into(),
            V::Arr(
                9,
                vec![
                    V::Arr(8, vec![V::Str("a".into()), V::Str("b".into())]),
                    V::Arr(8, vec![]),
                ],
            ),
        ),
        (
            "t.arr.big".into(),
            V::Arr(4, (0..5000).map(V::U32).collect()),
        ),
        (
            "t.arr.big_strings".into(),
            V::Arr(8, (0..2000).map(|i| V::Str(format!("s{i}"))).collect()),
        ),
    ]);
    g
}

#[test]
fn reads_every_value_type_and_the_tensors() {
    for version in [2, 3] {
        let mut g = every_type();
        g.version = version;
        let h = parse(&g.bytes()).unwrap();
        assert_eq!(h.version, version);
        assert_eq!(h.get("t.u8"), Some(&Value::U8(18)));
        assert_eq!(h.get("t.i8"), Some(&Value::I8(-19)));
        assert_eq!(h.get("t.u16"), Some(&Value::U16(4660)));
        assert_eq!(h.get("t.i16"), Some(&Value::I16(-4661)));
        assert_eq!(h.get("t.u32"), Some(&Value::U32(305_419_896)));
        assert_eq!(h.get("t.i32"), Some(&Value::I32(-305_419_897)));
        assert_eq!(h.get("t.f32"), Some(&Value::F32(0.123_456_79)));
        assert_eq!(h.get("t.bool"), Some(&Value::Bool(true)));
        assert_eq!(
            h.get("t.string"),
            Some(&Value::String("hello world".into()))
        );
        assert_eq!(h.get("t.u64"), Some(&Value::U64(1_311_768_467_463_790_320)));
        assert_eq!(
            h.get("t.i64"),
            Some(&Value::I64(-1_311_768_467_463_790_321))
        );
        assert_eq!(h.get("t.f64"), Some(&Value::F64(0.123_456_789)));
        let Some(Value::Array(nested)) = h.get("t.arr.nested") else {
            panic!("nested array missing")
        };
        assert_eq!(nested.item_type, ValueType::Array);
        let items = nested.items.as_ref().unwrap();
        assert_eq!(items.len(), 2);
        let Value::Array(inner) = &items[0] else {
            panic!()
        };
        assert_eq!(
            inner.items.as_deref(),
            Some(&[Value::String("a".into()), Value::String("b".into())][..])
        );
        // Long arrays keep their length only.
        let Some(Value::Array(big)) = h.get("t.arr.big") else {
            panic!()
        };
        assert_eq!((big.len, big.items.is_none()), (5000, true));
        let Some(Value::Array(big)) = h.get("t.arr.big_strings") else {
            panic!()
        };
        assert_eq!((big.len, big.items.is_none()), (2000, true));

        assert_eq!(h.tensors.len(), 3);
        assert_eq!(h.tensors[0].name, "token_embd.weight");
        assert_eq!(h.tensors[0].dims, vec![64, 8]);
        assert_eq!(h.tensors[0].ggml_type, 3);
        assert_eq!(h.tensors[0].offset, 0);
        assert_eq!(h.tensors[1].offset, 320);
        assert_eq!(h.tensors[2].offset, 576);
        assert_eq!(h.data_offset % 32, 0);
        assert_eq!(h.parameters(), 64 * 8 + 64 + 64 * 64);
    }
}

#[test]
fn summary_is_what_dmr_writes() {
    let h = parse(&every_type().bytes()).unwrap();
    let s = gguf::summarize(&[h]);
    assert_eq!(s.architecture.as_deref(), Some("llama"));
    assert_eq!(s.quantization.as_deref(), Some("Q4_1"));
    assert_eq!(s.context_length, Some(4096));
    assert_eq!(s.parameters, 4672);
    let m = &s.metadata;
    // The values DMR's own test expects for the same metadata.
    assert_eq!(m["t.u8"], "18");
    assert_eq!(m["t.i8"], "-19");
    assert_eq!(m["t.u16"], "4660");
    assert_eq!(m["t.i16"], "-4661");
    assert_eq!(m["t.u32"], "305419896");
    assert_eq!(m["t.i32"], "-305419897");
    assert_eq!(m["t.f32"], "0.123457");
    assert_eq!(m["t.u64"], "1311768467463790320");
    assert_eq!(m["t.i64"], "-1311768467463790321");
    assert_eq!(m["t.f64"], "0.123457");
    assert_eq!(m["t.bool"], "true");
    assert_eq!(m["t.string"], "hello world");
    assert_eq!(m["t.arr.i16"], "1, 2, 3, 4");
    assert_eq!(m["t.arr.nested"], "");
    // Arrays over 50 items (a vocabulary) are left out.
    assert!(!m.contains_key("tokenizer.ggml.tokens"));
    assert!(!m.contains_key("t.arr.big"));
}

#[test]
fn quantization_falls_back_to_the_most_common_tensor_type() {
    let mut g = Gguf::llama("q");
    g.metadata.retain(|(k, _)| k != "general.file_type");
    g.tensors
        .push(("blk.0.ffn_up.weight".into(), vec![64, 4], 8));
    let s = gguf::summarize(&[parse(&g.bytes()).unwrap()]);
    assert_eq!(s.quantization.as_deref(), Some("Q4_1"));

    g.metadata.push(("general.file_type".into(), V::U32(99)));
    g.tensors = vec![("a".into(), vec![32, 2], 8), ("b".into(), vec![2], 0)];
    let s = gguf::summarize(&[parse(&g.bytes()).unwrap()]);
    assert_eq!(s.quantization.as_deref(), Some("Q8_0"));
}

#[test]
fn not_gguf_says_what_the_file_starts_with() {
    let e = parse(b"PK\x03\x04 a zip file").unwrap_err();
    assert!(matches!(e, GgufError::NotGguf { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "`m.gguf` is not a GGUF file: it starts with the bytes `50 4b 03 04`, a GGUF file starts with `GGUF`"
    );
    assert!(e.help().unwrap().contains("Docker Model Runner"));
    let e = parse(b"{\"model\": 1}").unwrap_err();
    assert!(e.to_string().contains("it starts with `{\"mo`"), "{e}");
    let e = parse(b"").unwrap_err();
    assert!(matches!(e, GgufError::NotGguf { .. }), "{e:?}");
}

#[test]
fn unsupported_versions_are_refused() {
    let mut g = Gguf::llama("v");
    for version in [1, 4] {
        g.version = version;
        let e = parse(&g.bytes()).unwrap_err();
        assert!(
            matches!(e, GgufError::UnsupportedVersion { version: v, .. } if v == version),
            "{e:?}"
        );
        assert!(e.to_string().contains(&format!("version {version}")), "{e}");
    }
    g.version = 3u32.swap_bytes();
    let e = parse(&g.bytes()).unwrap_err();
    assert!(matches!(e, GgufError::BigEndian { .. }), "{e:?}");
}

#[test]
fn every_truncation_is_a_clean_error() {
    let bytes = every_type().bytes();
    let full = parse(&bytes).unwrap();
    for len in 1..bytes.len() {
        match parse(&bytes[..len]) {
            Err(GgufError::Truncated { offset, .. }) => {
                assert!(offset <= len as u64, "{len}: offset {offset}");
                assert!((len as u64) < full.data_offset, "{len}");
            }
            Err(GgufError::TruncatedData {
                expected, actual, ..
            }) => {
                assert_eq!(actual, len as u64);
                assert_eq!(expected, bytes.len() as u64);
            }
            other => panic!("{len}: {other:?}"),
        }
    }
    let e = parse(&bytes[..100]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "The GGUF header of `m.gguf` ends unexpectedly at byte 100"
    );
}

/// A header prefix with a tensor count and a metadata count.
fn header(tensors: u64, kvs: u64) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend(tensors.to_le_bytes());
    out.extend(kvs.to_le_bytes());
    out
}

#[test]
fn hostile_lengths_do_not_allocate() {
    // A key claiming 2^62 bytes.
    let mut b = header(0, 1);
    b.extend((1u64 << 62).to_le_bytes());
    b.extend([0u8; 64]);
    assert!(matches!(parse(&b), Err(GgufError::Corrupt { .. })));

    // A string value claiming more than the file holds.
    let mut b = header(0, 1);
    b.extend(1u64.to_le_bytes());
    b.push(b'k');
    b.extend(8u32.to_le_bytes());
    b.extend((1u64 << 20).to_le_bytes());
    b.extend([0u8; 64]);
    assert!(matches!(parse(&b), Err(GgufError::Truncated { .. })));

    // An array claiming 2^60 items.
    let mut b = header(0, 1);
    b.extend(1u64.to_le_bytes());
    b.push(b'k');
    b.extend(9u32.to_le_bytes());
    b.extend(4u32.to_le_bytes());
    b.extend((1u64 << 60).to_le_bytes());
    b.extend([0u8; 64]);
    assert!(matches!(parse(&b), Err(GgufError::Corrupt { .. })));

    // Counts larger than the file can hold.
    let mut b = header(u64::MAX, 0);
    b.extend([0u8; 64]);
    assert!(matches!(parse(&b), Err(GgufError::Corrupt { .. })));
    let mut b = header(0, 1 << 40);
    b.extend([0u8; 64]);
    assert!(matches!(parse(&b), Err(GgufError::Corrupt { .. })));
    let mut b = header(0, 1000);
    b.extend([0u8; 64]);
    assert!(matches!(parse(&b), Err(GgufError::Truncated { .. })));

    // An unknown value type, too many dimensions, and a tensor overflowing u64.
    let mut b = header(0, 1);
    b.extend(1u64.to_le_bytes());
    b.push(b'k');
    b.extend(77u32.to_le_bytes());
    b.extend([0u8; 64]);
    assert!(matches!(parse(&b), Err(GgufError::Corrupt { .. })));
    let mut g = Gguf::llama("dims");
    g.tensors = vec![("t".into(), vec![1, 1, 1, 1, 1], 0)];
    assert!(matches!(parse(&g.bytes()), Err(GgufError::Corrupt { .. })));
    let mut b = header(1, 0);
    b.extend(1u64.to_le_bytes());
    b.push(b't');
    b.extend(2u32.to_le_bytes());
    b.extend((1u64 << 40).to_le_bytes());
    b.extend((1u64 << 40).to_le_bytes());
    b.extend(0u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.extend([0u8; 64]);
    assert!(matches!(parse(&b), Err(GgufError::Corrupt { .. })));
}

#[test]
fn reads_files_through_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    every_type().write(&path);
    let h = gguf::read_header(&path).unwrap();
    assert_eq!(h.architecture(), Some("llama"));
    let e = gguf::read_header(&dir.path().join("absent.gguf")).unwrap_err();
    assert!(matches!(e, GgufError::Read { .. }), "{e:?}");
}

#[test]
fn many_small_entries_hit_the_memory_cap() {
    // 1M metadata entries of u8 fit the count cap but the file must hold them all; a file
    // that claims more than the cap is refused before reading them.
    let mut b = header(0, (1 << 20) + 1);
    b.extend([0u8; 64]);
    assert!(matches!(parse(&b), Err(GgufError::Corrupt { .. })));
    // Strings adding up to more than the kept-memory cap are refused.
    let big = "x".repeat(15 << 20);
    let mut g = Gguf::llama("big");
    g.metadata = (0..20)
        .map(|i| (format!("k{i}"), V::Str(big.clone())))
        .collect();
    let e = parse(&g.bytes()).unwrap_err();
    assert!(e.to_string().contains("a header over 256 MiB"), "{e}");
}
