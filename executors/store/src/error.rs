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
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The store's lock file could not be opened or locked.
    #[error("Cannot lock the model store at `{}`", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `index.json` could not be read.
    #[error("Cannot read the model store index `{}`", path.display())]
    ReadIndex {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `index.json` is not an OCI image index.
    #[error("The model store index `{}` is not a valid OCI image index", path.display())]
    CorruptIndex {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// `index.json` could not be written.
    #[error("Cannot write the model store index `{}`", path.display())]
    WriteIndex {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An import was asked for with no files.
    #[error("Nothing to import: no model files were given")]
    NoFiles,
    /// A shard of a sharded model is missing.
    #[error("Shard `{}` of `{}` is missing", missing.display(), first.display())]
    ShardMissing { first: PathBuf, missing: PathBuf },
    /// A local model file could not be read.
    #[error("Cannot read `{}`", path.display())]
    ReadSource {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A local model file is not what it was when the plan was made.
    #[error("`{}` changed since the plan was made: expected `{expected}`, found `{found}`", path.display())]
    SourceChanged {
        path: PathBuf,
        expected: String,
        found: String,
    },
    /// A blob could not be written into the store.
    #[error("Cannot write `{}` into the model store", path.display())]
    WriteBlob {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A blob could not be read.
    #[error("Cannot read blob `{digest}` of the model store")]
    ReadBlob {
        digest: String,
        #[source]
        source: std::io::Error,
    },
    /// A blob a manifest names is not in the store.
    #[error("Blob `{digest}` is missing from the model store")]
    BlobMissing { digest: String },
    /// A blob's content does not match its digest.
    #[error("Blob `{digest}` of the model store is corrupt: its content hashes to `{actual}`")]
    BlobCorrupt { digest: String, actual: String },
    /// A blob could not be deleted.
    #[error("Cannot delete blob `{digest}` from the model store")]
    RemoveBlob {
        digest: String,
        #[source]
        source: std::io::Error,
    },
    /// A string that should be a digest is not one.
    #[error("`{digest}` is not a sha256 digest")]
    InvalidDigest { digest: String },
    /// A manifest or config blob is not valid JSON of its kind.
    #[error("Blob `{digest}` of the model store is not a valid {what}")]
    CorruptBlob {
        digest: String,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// A reference name is not a valid OCI reference.
    #[error("Invalid reference `{reference}`: {reason}")]
    InvalidReference {
        reference: String,
        reason: String,
        help: String,
    },
    /// No model in the store has this name or digest.
    #[error("No model `{reference}` in the store")]
    UnknownReference { reference: String },
    /// A context size does not fit the model config's 32-bit field.
    #[error("The context size {value} is too large")]
    ContextSizeTooLarge { value: u64 },
    /// A manifest or config could not be encoded.
    #[error("Cannot encode the {what} of the model")]
    Encode {
        what: &'static str,
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
