//! What can go wrong in the store, each with its fix.

use std::path::PathBuf;

use crate::gguf::GgufError;

/// A failure of the model store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A model file is not a usable GGUF file.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The store's directories could not be created.
    #[error("Cannot create the model store at `{}`", path.display())]
    Create {
        /// The store's directory, or the file or directory in it that could not be made.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The store's lock file could not be opened or locked.
    #[error("Cannot lock the model store at `{}`", path.display())]
    Lock {
        /// The lock file: `.lock` or `.ingest.lock` in the store's directory.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// `index.json` could not be read.
    #[error("Cannot read the model store index `{}`", path.display())]
    ReadIndex {
        /// The store's `index.json`.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// `index.json` is not an OCI image index.
    #[error("The model store index `{}` is not a valid OCI image index", path.display())]
    CorruptIndex {
        /// The store's `index.json`.
        path: PathBuf,
        /// Where and how the JSON is wrong.
        #[source]
        source: serde_json::Error,
    },
    /// `index.json` could not be written.
    #[error("Cannot write the model store index `{}`", path.display())]
    WriteIndex {
        /// The store's `index.json`.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// An import was asked for with no files.
    #[error("Nothing to import: no model files were given")]
    NoFiles,
    /// A shard of a sharded model is missing.
    #[error("Shard `{}` of `{}` is missing", missing.display(), first.display())]
    ShardMissing {
        /// The first shard, as the spec names it.
        first: PathBuf,
        /// The shard that should sit next to it (`name-0000N-of-0000M.gguf`).
        missing: PathBuf,
    },
    /// A local model file could not be read.
    #[error("Cannot read `{}`", path.display())]
    ReadSource {
        /// The local file: a model shard, a license, a chat template or an image layer to store.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// A local model file is not what it was when the plan was made.
    #[error("`{}` changed since the plan was made: expected `{expected}`, found `{found}`", path.display())]
    SourceChanged {
        /// The local file.
        path: PathBuf,
        /// What the plan saw: its size (`N bytes`) or its `sha256:<hex>` digest.
        expected: String,
        /// What the file holds now, in the same form.
        found: String,
    },
    /// A blob could not be written into the store.
    #[error("Cannot write `{}` into the model store", path.display())]
    WriteBlob {
        /// The file being written in: the local file being copied, or the blob's path under
        /// `blobs/`.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// A blob could not be read.
    #[error("Cannot read blob `{digest}` of the model store")]
    ReadBlob {
        /// The blob's `sha256:<hex>` digest.
        digest: String,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// A blob a manifest names is not in the store.
    #[error("Blob `{digest}` is missing from the model store")]
    BlobMissing {
        /// The blob's `sha256:<hex>` digest.
        digest: String,
    },
    /// A blob's content does not match its digest.
    #[error("Blob `{digest}` of the model store is corrupt: its content hashes to `{actual}`")]
    BlobCorrupt {
        /// The digest the blob is stored under.
        digest: String,
        /// The `sha256:<hex>` digest of what the file holds.
        actual: String,
    },
    /// A blob could not be deleted.
    #[error("Cannot delete blob `{digest}` from the model store")]
    RemoveBlob {
        /// The blob's `sha256:<hex>` digest.
        digest: String,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// A string that should be a digest is not one.
    #[error("`{digest}` is not a sha256 digest")]
    InvalidDigest {
        /// The string as given.
        digest: String,
    },
    /// A manifest or config blob is not valid JSON of its kind.
    #[error("Blob `{digest}` of the model store is not a valid {what}")]
    CorruptBlob {
        /// The blob's `sha256:<hex>` digest.
        digest: String,
        /// What the blob should be: `OCI image manifest` or `model config`.
        what: &'static str,
        /// Where and how the JSON is wrong.
        #[source]
        source: serde_json::Error,
    },
    /// A reference name is not a valid OCI reference.
    #[error("Invalid reference `{reference}`: {reason}")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// What is wrong with it, as the reference parser says.
        reason: String,
        /// The fix, which [`StoreError::help`] returns.
        help: String,
    },
    /// No model in the store has this name or digest.
    #[error("No model `{reference}` in the store")]
    UnknownReference {
        /// The name or manifest digest as given.
        reference: String,
    },
    /// A context size does not fit the model config's 32-bit field.
    #[error("The context size {value} is too large")]
    ContextSizeTooLarge {
        /// The context size asked for, in tokens.
        value: u64,
    },
    /// A manifest or config could not be encoded.
    #[error("Cannot encode the {what} of the model")]
    Encode {
        /// What was being encoded: `index`, `config`, `manifest` or `layer metadata`.
        what: &'static str,
        /// What serde_json said.
        #[source]
        source: serde_json::Error,
    },
}

impl StoreError {
    /// The fix for this error, for a `help:` line.
    pub fn help(&self) -> Option<String> {
        Some(match self {
            StoreError::Gguf(e) => return e.help(),
            StoreError::Create { path, .. } => format!(
                "Check that `{}` is writable, or set `AISTACK_HOME` to a writable directory",
                path.display()
            ),
            StoreError::Lock { path, .. } | StoreError::WriteIndex { path, .. } => {
                format!("Check that `{}` is writable", path.display())
            }
            StoreError::ReadIndex { path, .. } => {
                format!("Check that `{}` is readable", path.display())
            }
            StoreError::CorruptIndex { path, .. } => format!(
                "Move `{}` aside; `aistack up` imports the models again",
                path.display()
            ),
            StoreError::NoFiles => "Name a `.gguf` file as the model's `source:`".to_owned(),
            StoreError::ShardMissing { first, .. } => {
                format!("Put every shard of the model next to `{}`", first.display())
            }
            StoreError::ReadSource { path, .. } => {
                format!("Check that `{}` exists and is readable", path.display())
            }
            StoreError::SourceChanged { .. } => {
                "Run the command again to plan with the file as it is now".to_owned()
            }
            StoreError::WriteBlob { .. } => {
                "Check that the disk holding the model store has free space".to_owned()
            }
            StoreError::ReadBlob { .. }
            | StoreError::BlobMissing { .. }
            | StoreError::BlobCorrupt { .. }
            | StoreError::CorruptBlob { .. } => {
                "Remove the model with `aistack model rm` and import or pull it again".to_owned()
            }
            StoreError::RemoveBlob { .. } => {
                "Check the permissions of the model store's `blobs/` directory".to_owned()
            }
            StoreError::InvalidDigest { .. } => {
                "A digest is `sha256:` followed by 64 lowercase hex digits".to_owned()
            }
            StoreError::InvalidReference { help, .. } => help.clone(),
            StoreError::UnknownReference { .. } => {
                "List the models with `aistack model ls`, or pull it with `aistack model pull`"
                    .to_owned()
            }
            StoreError::ContextSizeTooLarge { .. } => {
                format!("Give a context size of at most {}", u32::MAX)
            }
            StoreError::Encode { .. } => return None,
        })
    }
}
