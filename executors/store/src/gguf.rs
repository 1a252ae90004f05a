//! A reader for the header of GGUF files (little-endian, versions 2 and 3).
//!
//! The format is described in ggml's `docs/gguf.md`: a magic, a version, the tensor and
//! metadata counts, the metadata key/value pairs, the tensor infos, then (aligned) the tensor
//! data. Only the header is read, through a buffered reader; the tensor data is never loaded.
//!
//! The file is untrusted. Every length read from it is checked against the bytes that remain
//! in the file and against a fixed cap before anything is allocated, so a hostile header
//! cannot make us allocate more than a few megabytes. Large arrays (a tokenizer's vocabulary)
//! are skipped over and kept only as their length. A file shorter than its header says is a
//! [`GgufError::Truncated`] naming the byte where it ends; a file whose tensor data is cut
//! short is a [`GgufError::TruncatedData`].

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// The four bytes every GGUF file starts with.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// Longest string accepted in a header (a chat template is a few kilobytes).
const MAX_STRING: u64 = 16 << 20;
/// Longest tensor name accepted (ggml's own limit is 64 bytes).
const MAX_NAME: u64 = 64 << 10;
/// Most items accepted in one metadata array (large vocabularies have ~260k).
const MAX_ARRAY: u64 = 64 << 20;
/// Arrays up to this length keep their items; longer ones keep only their length.
pub const MAX_KEPT_ARRAY: u64 = 1024;
/// Most tensors accepted in one file.
const MAX_TENSORS: u64 = 1 << 20;
/// Most dimensions of a tensor (ggml's `GGML_MAX_DIMS`).
const MAX_DIMS: u32 = 4;
/// Deepest nesting of arrays accepted.
const MAX_DEPTH: u32 = 4;
/// Most metadata entries accepted in one file (real models have about a hundred).
const MAX_KVS: u64 = 1 << 20;
/// Most memory the kept header may take (strings, values, tensor infos), roughly counted.
const MAX_KEPT_BYTES: u64 = 256 << 20;

/// Why a file could not be read as GGUF.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be opened or read.
    #[error("Cannot read `{}`", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The first bytes are not the GGUF magic.
    #[error("`{}` is not a GGUF file: it starts with {found}, a GGUF file starts with `GGUF`", path.display())]
    NotGguf {
        /// The file.
        path: PathBuf,
        /// Its first bytes, for the message: as text when printable, else as hex.
        found: String,
    },
    /// A GGUF version this reader does not know.
    #[error("`{}` is GGUF version {version}; only versions 2 and 3 are supported", path.display())]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version its header gives.
        version: u32,
    },
    /// A big-endian GGUF file.
    #[error("`{}` is a big-endian GGUF file; only little-endian files are supported", path.display())]
    BigEndian {
        /// The file.
        path: PathBuf,
    },
    /// The file ends inside its header.
    #[error("The GGUF header of `{}` ends unexpectedly at byte {offset}", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// The byte at which the file ends (its size).
        offset: u64,
    },
    /// The header describes more tensor data than the file holds.
    #[error("The tensor data of `{}` ends unexpectedly at byte {actual}; its header describes {expected} bytes", path.display())]
    TruncatedData {
        /// The file.
        path: PathBuf,
        /// Where the header says the last tensor's data ends, in bytes from the start of the file.
        expected: u64,
        /// The file's size in bytes.
        actual: u64,
    },
    /// A value in the header is impossible (a length over the caps, an unknown value type).
    #[error("The GGUF header of `{}` is corrupt at byte {offset}: {what}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where the impossible value starts, in bytes from the start of the file.
        offset: u64,
        /// What is wrong, for the message, e.g. `a boolean of value 2` or `3000000 tensors`.
        what: String,
    },
}

impl GgufError {
    /// The fix for this error, for a `help:` line.
    pub fn help(&self) -> Option<String> {
        Some(match self {
            GgufError::Read { path, .. } => {
                format!("Check that `{}` exists and is readable", path.display())
            }
            GgufError::NotGguf { path, .. } => format!(
                "Check that `{}` is a GGUF model file; Docker Model Runner artifacts can be pulled by reference instead",
                path.display()
            ),
            GgufError::UnsupportedVersion { .. } | GgufError::BigEndian { .. } => {
                "Convert the model again with a current llama.cpp (`convert_hf_to_gguf.py`)"
                    .to_owned()
            }
            GgufError::Truncated { path, .. } | GgufError::TruncatedData { path, .. } => format!(
                "The file is incomplete; download `{}` again",
                path.display()
            ),
            GgufError::Corrupt { path, .. } => format!(
                "The file is damaged or not a model; download `{}` again",
                path.display()
            ),
        })
    }
}

/// The type tag of a metadata value: gguf.md's `GGUF_METADATA_VALUE_TYPE_*`, in tag order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueType {
    /// Tag 0 (`UINT8`): an unsigned 8-bit integer.
    U8,
    /// Tag 1 (`INT8`): a signed 8-bit integer.
    I8,
    /// Tag 2 (`UINT16`): an unsigned 16-bit integer.
    U16,
    /// Tag 3 (`INT16`): a signed 16-bit integer.
    I16,
    /// Tag 4 (`UINT32`): an unsigned 32-bit integer.
    U32,
    /// Tag 5 (`INT32`): a signed 32-bit integer.
    I32,
    /// Tag 6 (`FLOAT32`): an IEEE 754 single-precision float.
    F32,
    /// Tag 7 (`BOOL`): one byte, 0 or 1.
    Bool,
    /// Tag 8 (`STRING`): a `u64` byte length, then that many bytes of UTF-8, not NUL-terminated.
    String,
    /// Tag 9 (`ARRAY`): an item type tag, a `u64` item count, then the items.
    Array,
    /// Tag 10 (`UINT64`): an unsigned 64-bit integer.
    U64,
    /// Tag 11 (`INT64`): a signed 64-bit integer.
    I64,
    /// Tag 12 (`FLOAT64`): an IEEE 754 double-precision float.
    F64,
}

impl ValueType {
    fn from_tag(tag: u32) -> Option<ValueType> {
        Some(match tag {
            0 => ValueType::U8,
            1 => ValueType::I8,
            2 => ValueType::U16,
            3 => ValueType::I16,
            4 => ValueType::U32,
            5 => ValueType::I32,
            6 => ValueType::F32,
            7 => ValueType::Bool,
            8 => ValueType::String,
            9 => ValueType::Array,
            10 => ValueType::U64,
            11 => ValueType::I64,
            12 => ValueType::F64,
            _ => return None,
        })
    }

    /// The fewest bytes one value of this type takes in a file.
    fn min_size(self) -> u64 {
        match self {
            ValueType::U8 | ValueType::I8 | ValueType::Bool => 1,
            ValueType::U16 | ValueType::I16 => 2,
            ValueType::U32 | ValueType::I32 | ValueType::F32 => 4,
            ValueType::U64 | ValueType::I64 | ValueType::F64 | ValueType::String => 8,
            ValueType::Array => 12,
        }
    }
}

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// An unsigned 8-bit integer.
    U8(u8),
    /// A signed 8-bit integer.
    I8(i8),
    /// An unsigned 16-bit integer.
    U16(u16),
    /// A signed 16-bit integer.
    I16(i16),
    /// An unsigned 32-bit integer.
    U32(u32),
    /// A signed 32-bit integer.
    I32(i32),
    /// A single-precision float.
    F32(f32),
    /// A boolean; a byte other than 0 or 1 is refused as corrupt.
    Bool(bool),
    /// A string, checked to be UTF-8.
    String(String),
    /// An array, its items kept only up to [`MAX_KEPT_ARRAY`].
    Array(Array),
    /// An unsigned 64-bit integer.
    U64(u64),
    /// A signed 64-bit integer.
    I64(i64),
    /// A double-precision float.
    F64(f64),
}

/// A metadata array. Arrays longer than [`MAX_KEPT_ARRAY`] keep only their length.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    /// The type of every item: GGUF arrays hold one type.
    pub item_type: ValueType,
    /// How many items the file declares, known even when the items were not kept.
    pub len: u64,
    /// The items, or `None` when the array was too long to keep.
    pub items: Option<Vec<Value>>,
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as Docker Model Runner writes it into a model config's `gguf` map: Go's
    /// `%d`, `%f` (six decimals) and `%t`, strings as they are, arrays joined with `, `
    /// (nested arrays contribute nothing). `None` for arrays of more than 50 items, which
    /// DMR leaves out.
    pub fn to_dmr_string(&self) -> Option<String> {
        Some(match self {
            Value::U8(v) => v.to_string(),
            Value::I8(v) => v.to_string(),
            Value::U16(v) => v.to_string(),
            Value::I16(v) => v.to_string(),
            Value::U32(v) => v.to_string(),
            Value::I32(v) => v.to_string(),
            Value::U64(v) => v.to_string(),
            Value::I64(v) => v.to_string(),
            Value::F32(v) => go_float(f64::from(*v)),
            Value::F64(v) => go_float(*v),
            Value::Bool(v) => v.to_string(),
            Value::String(s) => s.clone(),
            Value::Array(array) => {
                if array.len > DMR_MAX_ARRAY {
                    return None;
                }
                let items = array.items.as_deref().unwrap_or_default();
                items
                    .iter()
                    .filter(|v| !matches!(v, Value::Array(_)))
                    .filter_map(Value::to_dmr_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        })
    }
}

/// Docker Model Runner leaves arrays longer than this out of the config's `gguf` map.
const DMR_MAX_ARRAY: u64 = 50;

/// Go's `fmt.Sprintf("%f", v)`.
fn go_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        format!("{v:.6}")
    }
}

/// One tensor's description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Its dimensions, innermost first (ggml's `ne`); at most four.
    pub dims: Vec<u64>,
    /// The ggml type id (`GGML_TYPE_*`).
    pub ggml_type: u32,
    /// Offset of its data from the start of the tensor data.
    pub offset: u64,
}

impl TensorInfo {
    /// The number of elements (parameters).
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed GGUF header.
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    /// The GGUF version: 2 or 3.
    pub version: u32,
    /// The metadata, in file order.
    pub metadata: Vec<(String, Value)>,
    /// The tensor infos, in file order.
    pub tensors: Vec<TensorInfo>,
    /// The alignment of the tensor data (`general.alignment`, else 32).
    pub alignment: u64,
    /// Where the header ends (before padding).
    pub header_end: u64,
    /// Where the tensor data starts.
    pub data_offset: u64,
    /// The size of the file.
    pub file_size: u64,
}

impl Header {
    /// The value of metadata key `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture").and_then(Value::as_str)
    }

    /// The sum of the tensors' element counts.
    pub fn parameters(&self) -> u64 {
        self.tensors
            .iter()
            .fold(0u64, |sum, t| sum.saturating_add(t.elements()))
    }

    /// The model's size as gguf-parser-go (and so Docker Model Runner) counts it: the file
    /// size less the header and its padding, where the padding is a whole alignment when the
    /// header already ends aligned.
    fn dmr_model_size(&self) -> u64 {
        let padding = self.alignment - self.header_end % self.alignment;
        self.file_size.saturating_sub(self.header_end + padding)
    }
}

/// Reads the header of the GGUF file at `path`.
pub fn read_header(path: &Path) -> Result<Header, GgufError> {
    let read_error = |source| GgufError::Read {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(read_error)?;
    let size = file.metadata().map_err(read_error)?.len();
    parse(BufReader::with_capacity(256 << 10, file), size, path)
}

/// Parses a GGUF header from `reader`, a file of `file_size` bytes; `path` names it in errors.
pub fn parse(reader: impl BufRead, file_size: u64, path: &Path) -> Result<Header, GgufError> {
    let mut r = Reader {
        inner: reader,
        pos: 0,
        size: file_size,
        path,
        kept: 0,
    };
    let mut magic = [0u8; 4];
    let have = r.read_prefix(&mut magic)?;
    if have == 0 || magic[..have] != MAGIC[..have] {
        return Err(GgufError::NotGguf {
            path: path.to_owned(),
            found: describe_bytes(&magic[..have]),
        });
    }
    if have < 4 {
        return Err(r.truncated());
    }
    let version = r.u32()?;
    if version != 2 && version != 3 {
        let swapped = version.swap_bytes();
        if swapped == 2 || swapped == 3 {
            return Err(GgufError::BigEndian {
                path: path.to_owned(),
            });
        }
        return Err(GgufError::UnsupportedVersion {
            path: path.to_owned(),
            version,
        });
    }
    let tensor_count = r.u64()?;
    // A tensor info takes at least 24 bytes: name length, dims count, type, offset.
    r.check_count(tensor_count, 24, MAX_TENSORS, "tensors")?;
    let kv_count = r.u64()?;
    // A key/value takes at least 13 bytes: key length, value type, a one-byte value.
    r.check_count(kv_count, 13, MAX_KVS, "metadata entries")?;

    let mut metadata = Vec::with_capacity(kv_count.min(4096) as usize);
    for _ in 0..kv_count {
        let key = r.string(MAX_NAME, "metadata key")?;
        let at = r.pos;
        r.charge(VALUE_COST, at)?;
        let tag = r.u32()?;
        let value_type = ValueType::from_tag(tag)
            .ok_or_else(|| r.corrupt(at, format!("unknown value type {tag} for `{key}`")))?;
        let value = r.value(value_type, 0)?;
        metadata.push((key, value));
    }

    let mut tensors = Vec::with_capacity(tensor_count.min(4096) as usize);
    for _ in 0..tensor_count {
        let name = r.string(MAX_NAME, "tensor name")?;
        let at = r.pos;
        r.charge(TENSOR_COST, at)?;
        let n_dims = r.u32()?;
        if n_dims > MAX_DIMS {
            return Err(r.corrupt(at, format!("tensor `{name}` has {n_dims} dimensions")));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(r.u64()?);
        }
        if dims
            .iter()
            .try_fold(1u64, |p, &d| p.checked_mul(d))
            .is_none()
        {
            return Err(r.corrupt(at, format!("tensor `{name}` has too many elements")));
        }
        let ggml_type = r.u32()?;
        let offset = r.u64()?;
        tensors.push(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
        });
    }
    let header_end = r.pos;

    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, v)) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 30 => a,
            _ => {
                return Err(r.corrupt(
                    header_end,
                    "`general.alignment` is not a power of two".to_owned(),
                ));
            }
        },
    };
    let data_offset = header_end.div_ceil(alignment) * alignment;

    // The file must hold every tensor's data.
    let mut data_end = data_offset;
    for t in &tensors {
        let bytes = tensor_bytes(t).ok_or_else(|| {
            r.corrupt(
                header_end,
                format!(
                    "tensor `{}` has a first dimension that does not fit its type",
                    t.name
                ),
            )
        })?;
        let end = data_offset
            .checked_add(t.offset)
            .and_then(|e| e.checked_add(bytes))
            .ok_or_else(|| {
                r.corrupt(
                    header_end,
                    format!("tensor `{}` has an impossible offset", t.name),
                )
            })?;
        data_end = data_end.max(end);
    }
    if data_end > file_size {
        return Err(GgufError::TruncatedData {
            path: path.to_owned(),
            expected: data_end,
            actual: file_size,
        });
    }

    Ok(Header {
        version,
        metadata,
        tensors,
        alignment,
        header_end,
        data_offset,
        file_size,
    })
}

/// Bytes of tensor data of `t`, `None` when its first dimension is not a whole number of
/// blocks. Unknown types count zero bytes (a newer ggml type is not a reason to refuse a file).
fn tensor_bytes(t: &TensorInfo) -> Option<u64> {
    let Some((block, type_size)) = ggml_type_layout(t.ggml_type) else {
        return Some(0);
    };
    let Some(&first) = t.dims.first() else {
        return Some(type_size);
    };
    if first % block != 0 {
        return None;
    }
    (t.elements() / block).checked_mul(type_size)
}

/// Block size and bytes per block of ggml type `id`.
fn ggml_type_layout(id: u32) -> Option<(u64, u64)> {
    Some(match id {
        0 => (1, 4),                   // F32
        1 => (1, 2),                   // F16
        2 => (32, 18),                 // Q4_0
        3 => (32, 20),                 // Q4_1
        6 => (32, 22),                 // Q5_0
        7 => (32, 24),                 // Q5_1
        8 => (32, 34),                 // Q8_0
        9 => (32, 36),                 // Q8_1
        10 => (256, 84),               // Q2_K
        11 => (256, 110),              // Q3_K
        12 => (256, 144),              // Q4_K
        13 => (256, 176),              // Q5_K
        14 => (256, 210),              // Q6_K
        15 => (256, 292),              // Q8_K
        16 => (256, 66),               // IQ2_XXS
        17 => (256, 74),               // IQ2_XS
        18 => (256, 98),               // IQ3_XXS
        19 => (256, 50),               // IQ1_S
        20 => (32, 18),                // IQ4_NL
        21 => (256, 110),              // IQ3_S
        22 => (256, 82),               // IQ2_S
        23 => (256, 136),              // IQ4_XS
        24 => (1, 1),                  // I8
        25 => (1, 2),                  // I16
        26 => (1, 4),                  // I32
        27 | 28 => (1, 8),             // I64, F64
        29 => (256, 56),               // IQ1_M
        30 => (1, 2),                  // BF16
        31..=33 | 36..=38 => (32, 18), // the removed repacked Q4_0 / IQ4_NL types
        34 => (256, 54),               // TQ1_0
        35 => (256, 66),               // TQ2_0
        39 => (32, 17),                // MXFP4
        _ => return None,
    })
}

/// The name of ggml type `id`.
pub fn ggml_type_name(id: u32) -> Option<&'static str> {
    Some(match id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        30 => "BF16",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => return None,
    })
}

/// The name of llama.cpp file type `id` (`LLAMA_FTYPE_MOSTLY_*`, without the prefix).
pub fn file_type_name(id: u64) -> Option<&'static str> {
    Some(match id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4_MOE",
        _ => return None,
    })
}

/// What a model config says about a (possibly sharded) GGUF model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// `general.architecture` of the first shard.
    pub architecture: Option<String>,
    /// Tensor elements summed over all shards.
    pub parameters: u64,
    /// From `general.file_type`, else the most common type of the multi-dimensional tensors.
    pub quantization: Option<String>,
    /// `<architecture>.context_length`.
    pub context_length: Option<u64>,
    /// The tensor data size as Docker Model Runner counts it, summed over all shards.
    pub model_size: u64,
    /// The metadata of all shards (later shards override; `split.no` left out) as DMR
    /// writes it; arrays of more than 50 items are left out.
    pub metadata: BTreeMap<String, String>,
}

/// Summarises the headers of a model's shards, in order.
pub fn summarize(shards: &[Header]) -> Summary {
    let first = shards.first();
    let architecture = first
        .and_then(Header::architecture)
        .map(|a| a.trim().to_owned());
    let parameters = shards
        .iter()
        .fold(0u64, |sum, h| sum.saturating_add(h.parameters()));
    let model_size = shards
        .iter()
        .fold(0u64, |sum, h| sum.saturating_add(h.dmr_model_size()));
    let quantization = first
        .and_then(|h| h.get("general.file_type"))
        .and_then(Value::as_u64)
        .and_then(file_type_name)
        .map(str::to_owned)
        .or_else(|| most_common_type(shards));
    let context_length = architecture.as_ref().and_then(|arch| {
        first
            .and_then(|h| h.get(&format!("{arch}.context_length")))
            .and_then(Value::as_u64)
    });
    let mut metadata = BTreeMap::new();
    for (key, value) in shards.iter().flat_map(|h| &h.metadata) {
        if key == "split.no" {
            continue;
        }
        if let Some(text) = value.to_dmr_string() {
            metadata.insert(key.clone(), text);
        }
    }
    Summary {
        architecture,
        parameters,
        quantization,
        context_length,
        model_size,
        metadata,
    }
}

fn most_common_type(shards: &[Header]) -> Option<String> {
    let mut counts: BTreeMap<u32, u64> = BTreeMap::new();
    for t in shards.iter().flat_map(|h| &h.tensors) {
        if t.dims.iter().filter(|&&d| d > 1).count() >= 2 {
            *counts.entry(t.ggml_type).or_default() += 1;
        }
    }
    // The highest count wins; among equals, the lowest type id.
    let (&id, _) = counts
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))?;
    ggml_type_name(id).map(str::to_owned)
}

/// `bytes` for a message: printable ASCII as text, else hex.
fn describe_bytes(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "nothing (the file is empty)".to_owned();
    }
    if bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        format!("`{}`", String::from_utf8_lossy(bytes))
    } else {
        let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
        format!("the bytes `{}`", hex.join(" "))
    }
}

/// What one kept value costs against [`MAX_KEPT_BYTES`], besides its string bytes.
const VALUE_COST: u64 = std::mem::size_of::<Value>() as u64 + 24;
/// What one kept tensor info costs against [`MAX_KEPT_BYTES`], besides its name.
const TENSOR_COST: u64 = std::mem::size_of::<TensorInfo>() as u64 + 8 * MAX_DIMS as u64;

struct Reader<'p, R> {
    inner: R,
    pos: u64,
    size: u64,
    path: &'p Path,
    /// Bytes of memory the header kept so far, roughly.
    kept: u64,
}

impl<R: BufRead> Reader<'_, R> {
    fn truncated(&self) -> GgufError {
        GgufError::Truncated {
            path: self.path.to_owned(),
            offset: self.pos.min(self.size),
        }
    }

    /// Counts `bytes` more of kept memory, refusing a header over [`MAX_KEPT_BYTES`].
    fn charge(&mut self, bytes: u64, at: u64) -> Result<(), GgufError> {
        self.kept = self.kept.saturating_add(bytes);
        if self.kept > MAX_KEPT_BYTES {
            return Err(self.corrupt(at, format!("a header over {} MiB", MAX_KEPT_BYTES >> 20)));
        }
        Ok(())
    }

    fn corrupt(&self, offset: u64, what: String) -> GgufError {
        GgufError::Corrupt {
            path: self.path.to_owned(),
            offset,
            what,
        }
    }

    fn io(&self, source: std::io::Error) -> GgufError {
        if source.kind() == std::io::ErrorKind::UnexpectedEof {
            self.truncated()
        } else {
            GgufError::Read {
                path: self.path.to_owned(),
                source,
            }
        }
    }

    /// Reads as much of `buf` as the file has; returns how much that was.
    fn read_prefix(&mut self, buf: &mut [u8]) -> Result<usize, GgufError> {
        let mut have = 0;
        while have < buf.len() {
            match self.inner.read(&mut buf[have..]) {
                Ok(0) => break,
                Ok(n) => have += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io(e)),
            }
        }
        self.pos += have as u64;
        Ok(have)
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        let mut buf = [0u8; N];
        if let Err(e) = self.inner.read_exact(&mut buf) {
            // Report the end of the file, where the read stopped.
            self.pos = self.size;
            return Err(self.io(e));
        }
        self.pos += N as u64;
        Ok(buf)
    }

    fn u32(&mut self) -> Result<u32, GgufError> {
        self.bytes().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, GgufError> {
        self.bytes().map(u64::from_le_bytes)
    }

    fn remaining(&self) -> u64 {
        self.size.saturating_sub(self.pos)
    }

    /// Checks that `count` items of at least `min_size` bytes each fit in the rest of the
    /// file and under `cap`.
    fn check_count(
        &self,
        count: u64,
        min_size: u64,
        cap: u64,
        what: &str,
    ) -> Result<(), GgufError> {
        if count > cap {
            return Err(self.corrupt(self.pos - 8, format!("{count} {what}")));
        }
        if count.saturating_mul(min_size) > self.remaining() {
            return Err(GgufError::Truncated {
                path: self.path.to_owned(),
                offset: self.size,
            });
        }
        Ok(())
    }

    /// Reads a length-prefixed string of at most `cap` bytes.
    fn string(&mut self, cap: u64, what: &str) -> Result<String, GgufError> {
        let at = self.pos;
        let len = self.u64()?;
        if len > cap {
            return Err(self.corrupt(at, format!("a {what} of {len} bytes")));
        }
        self.check_count(len, 1, cap, what)?;
        self.charge(len, at)?;
        let mut buf = vec![0u8; len as usize];
        if let Err(e) = self.inner.read_exact(&mut buf) {
            self.pos = self.size;
            return Err(self.io(e));
        }
        self.pos += len;
        String::from_utf8(buf).map_err(|_| self.corrupt(at, format!("a {what} that is not UTF-8")))
    }

    /// Skips a length-prefixed string.
    fn skip_string(&mut self) -> Result<(), GgufError> {
        let at = self.pos;
        let len = self.u64()?;
        if len > MAX_STRING {
            return Err(self.corrupt(at, format!("a string of {len} bytes")));
        }
        self.check_count(len, 1, MAX_STRING, "string")?;
        self.skip(len)
    }

    fn skip(&mut self, mut len: u64) -> Result<(), GgufError> {
        while len > 0 {
            let available = match self.inner.fill_buf() {
                Ok(buf) => buf.len() as u64,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io(e)),
            };
            if available == 0 {
                self.pos = self.size;
                return Err(self.truncated());
            }
            let n = available.min(len);
            self.inner.consume(n as usize);
            self.pos += n;
            len -= n;
        }
        Ok(())
    }

    fn value(&mut self, value_type: ValueType, depth: u32) -> Result<Value, GgufError> {
        Ok(match value_type {
            ValueType::U8 => Value::U8(u8::from_le_bytes(self.bytes()?)),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.bytes()?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.bytes()?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.bytes()?)),
            ValueType::U32 => Value::U32(self.u32()?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.bytes()?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.bytes()?)),
            ValueType::U64 => Value::U64(self.u64()?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.bytes()?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.bytes()?)),
            ValueType::Bool => {
                let at = self.pos;
                match self.bytes::<1>()?[0] {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    b => return Err(self.corrupt(at, format!("a boolean of value {b}"))),
                }
            }
            ValueType::String => Value::String(self.string(MAX_STRING, "string")?),
            ValueType::Array => Value::Array(self.array(depth)?),
        })
    }

    fn array(&mut self, depth: u32) -> Result<Array, GgufError> {
        let at = self.pos;
        if depth >= MAX_DEPTH {
            return Err(self.corrupt(at, format!("arrays nested more than {MAX_DEPTH} deep")));
        }
        let tag = self.u32()?;
        let item_type = ValueType::from_tag(tag)
            .ok_or_else(|| self.corrupt(at, format!("an array of unknown value type {tag}")))?;
        let len = self.u64()?;
        self.check_count(len, item_type.min_size(), MAX_ARRAY, "array items")?;
        if len <= MAX_KEPT_ARRAY {
            let mut items = Vec::with_capacity(len as usize);
            for _ in 0..len {
                self.charge(VALUE_COST, self.pos)?;
                items.push(self.value(item_type, depth + 1)?);
            }
            return Ok(Array {
                item_type,
                len,
                items: Some(items),
            });
        }
        match item_type {
            ValueType::String => {
                for _ in 0..len {
                    self.skip_string()?;
                }
            }
            ValueType::Array => {
                for _ in 0..len {
                    self.array(depth + 1)?;
                }
            }
            // Fixed-size items; `check_count` showed they fit in the file.
            fixed => self.skip(len * fixed.min_size())?,
        }
        Ok(Array {
            item_type,
            len,
            items: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_float_formats_like_printf_f() {
        assert_eq!(go_float(f64::from(0.123_456_79_f32)), "0.123457");
        assert_eq!(go_float(1e-5), "0.000010");
        assert_eq!(go_float(f64::INFINITY), "+Inf");
        assert_eq!(go_float(-2.5), "-2.500000");
    }

    #[test]
    fn describes_first_bytes() {
        assert_eq!(describe_bytes(b"PK\x03\x04"), "the bytes `50 4b 03 04`");
        assert_eq!(describe_bytes(b"{\"a\""), "`{\"a\"`");
        assert_eq!(describe_bytes(b""), "nothing (the file is empty)");
    }

    #[test]
    fn file_type_names_follow_llama_cpp() {
        assert_eq!(file_type_name(3), Some("Q4_1"));
        assert_eq!(file_type_name(15), Some("Q4_K_M"));
        assert_eq!(file_type_name(4), None);
    }
}
