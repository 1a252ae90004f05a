//! The content-addressed model store.
//!
//! Models live in an OCI image layout shared by all projects ([`Store`]), as Docker Model
//! Runner artifacts ([`artifact`]): one GGUF layer per shard, a model config describing the
//! weights, an OCI manifest tying them together. Local `.gguf` files are imported by
//! [`Store::import_local`] after their header is read by our own [`gguf`] reader, and their
//! digests are cached by [`DigestCache`] so that planning costs one `stat` per file.

#![warn(missing_docs)]

pub mod artifact;
pub mod digest_cache;
mod error;
pub mod gguf;
mod refs;
pub mod registry;
pub mod store;

pub use artifact::{ConfigFile, ModelConfig};
pub use digest_cache::DigestCache;
pub use error::StoreError;
pub use gguf::GgufError;
pub use store::{Entry, Imported, LocalFile, Store, local_shards};
