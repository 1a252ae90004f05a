//! A small GGUF writer for tests, and helpers around the store.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use aistack_store::LocalFile;
use sha2::{Digest, Sha256};

/// A metadata value to write.
#[derive(Clone, Debug)]
pub enum V {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    /// Item type tag and items.
    Arr(u32, Vec<V>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl V {
    fn tag(&self) -> u32 {
        match self {
            V::U8(_) => 0,
            V::I8(_) => 1,
            V::U16(_) => 2,
            V::I16(_) => 3,
            V::U32(_) => 4,
            V::I32(_) => 5,
            V::F32(_) => 6,
            V::Bool(_) => 7,
            V::Str(_) => 8,
            V::Arr(..) => 9,
            V::U64(_) => 10,
            V::I64(_) => 11,
            V::F64(_) => 12,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            V::U8(v) => out.extend(v.to_le_bytes()),
            V::I8(v) => out.extend(v.to_le_bytes()),
            V::U16(v) => out.extend(v.to_le_bytes()),
            V::I16(v) => out.extend(v.to_le_bytes()),
            V::U32(v) => out.extend(v.to_le_bytes()),
            V::I32(v) => out.extend(v.to_le_bytes()),
            V::F32(v) => out.extend(v.to_le_bytes()),
            V::Bool(v) => out.push(u8::from(*v)),
            V::Str(s) => string(out, s),
            V::Arr(tag, items) => {
                out.extend(tag.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                for item in items {
                    item.write(out);
                }
            }
            V::U64(v) => out.extend(v.to_le_bytes()),
            V::I64(v) => out.extend(v.to_le_bytes()),
            V::F64(v) => out.extend(v.to_le_bytes()),
        }
    }
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// A GGUF file to write.
#[derive(Clone, Debug)]
pub struct Gguf {
    pub version: u32,
    pub metadata: Vec<(String, V)>,
    /// Name, dims, ggml type.
    pub tensors: Vec<(String, Vec<u64>, u32)>,
    pub alignment: u64,
}

/// Bytes of a tensor of ggml type `ty` (the few types tests use).
pub fn tensor_bytes(dims: &[u64], ty: u32) -> u64 {
    let n: u64 = dims.iter().product();
    match ty {
        0 => n * 4,
        1 | 30 => n * 2,
        3 => n / 32 * 20,
        8 => n / 32 * 34,
        _ => panic!("test writer does not know type {ty}"),
    }
}

impl Gguf {
    /// A small llama-like model.
    pub fn llama(name: &str) -> Gguf {
        Gguf {
            version: 3,
            metadata: vec![
                ("general.architecture".into(), V::Str("llama".into())),
                ("general.name".into(), V::Str(name.into())),
                ("general.file_type".into(), V::U32(3)),
                ("llama.context_length".into(), V::U32(4096)),
                (
                    "tokenizer.ggml.tokens".into(),
                    V::Arr(8, (0..100).map(|i| V::Str(format!("tok{i}"))).collect()),
                ),
                (
                    "tokenizer.chat_template".into(),
                    V::Str("<|im_start|>{{ m }}&".into()),
                ),
            ],
            tensors: vec![
                ("token_embd.weight".into(), vec![64, 8], 3),
                ("blk.0.attn_norm.weight".into(), vec![64], 0),
                ("blk.0.attn_q.weight".into(), vec![64, 64], 3),
            ],
            alignment: 32,
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            string(&mut out, key);
            out.extend(value.tag().to_le_bytes());
            value.write(&mut out);
        }
        let mut offset = 0u64;
        let mut sizes = Vec::new();
        for (name, dims, ty) in &self.tensors {
            string(&mut out, name);
            out.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(ty.to_le_bytes());
            out.extend(offset.to_le_bytes());
            let size = tensor_bytes(dims, *ty);
            sizes.push(size);
            offset = (offset + size).div_ceil(self.alignment) * self.alignment;
        }
        let data_start = (out.len() as u64).div_ceil(self.alignment) * self.alignment;
        out.resize(data_start as usize, 0);
        for (i, size) in sizes.iter().enumerate() {
            // Recognisable, distinct content per tensor.
            out.extend((0..*size).map(|b| (b as u8) ^ (i as u8)));
            let aligned = (out.len() as u64).div_ceil(self.alignment) * self.alignment;
            if i + 1 < sizes.len() {
                out.resize(aligned as usize, 0);
            }
        }
        out
    }

    pub fn write(&self, path: &Path) -> LocalFile {
        write_file(path, &self.bytes())
    }
}

pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Writes `bytes` to `path` with a fixed old mtime; returns it as a planned local file.
pub fn write_file(path: &Path, bytes: &[u8]) -> LocalFile {
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        .unwrap();
    LocalFile {
        path: path.to_owned(),
        size: bytes.len() as u64,
        digest: digest(bytes),
    }
}

/// Every file under `dir`, relative, sorted.
pub fn tree(dir: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().to_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The blobs under a store at `dir`.
pub fn blobs(dir: &Path) -> Vec<PathBuf> {
    tree(&dir.join("blobs"))
}

/// The files under `ingest/`.
pub fn ingest(dir: &Path) -> Vec<PathBuf> {
    tree(&dir.join("ingest"))
}

pub fn no_progress() -> impl FnMut(u64, u64) {
    |_, _| {}
}
