//! The model store: an OCI image layout under `models/`.
//!
//! ```text
//! models/
//!   oci-layout            {"imageLayoutVersion":"1.0.0"}
//!   index.json            one manifest descriptor per model
//!   blobs/sha256/<hex>    layers, configs, manifests
//!   ingest/               temporary files, renamed into blobs/ once verified
//!   partial/<hex>         blobs being downloaded, kept across runs so a pull resumes
//!   .lock                 exclusive flock while index.json is rewritten
//!   .ingest.lock          shared flock while an import runs, exclusive while blobs are deleted
//! ```
//!
//! Nothing partial ever sits under `blobs/` or in `index.json`: a blob is written to
//! `ingest/`, fsynced, checked against its digest and only then renamed into place, and the
//! index is replaced the same way. A killed process leaves only files in `ingest/`, which
//! [`Store::open`] removes when no import is running. A download in progress lives in
//! `partial/` instead, which `open` keeps: the next pull hashes what is there and asks the
//! registry for the rest.
//!
//! Blob deletion waits for running imports (an import may be about to reference a blob it
//! found already present), and an import waits for a deletion to finish.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;
use sha2::{Digest as _, Sha256};

use crate::artifact::{
    self, ANNOTATION_FILE_METADATA, ANNOTATION_FILEPATH, ANNOTATION_MEDIATYPE_UNTESTED,
    ANNOTATION_SOURCE, CONFIG_MEDIA_TYPE, ConfigFile, Descriptor, FileMetadata, GGUF_MEDIA_TYPE,
    Index, MANIFEST_MEDIA_TYPE, Manifest, ModelConfig, Provenance, RootFs,
};
use crate::error::StoreError;
use crate::gguf::{self, Header};

/// Buffer size for copying and hashing model files.
pub(crate) const COPY_BUFFER: usize = 4 << 20;

/// A local model file as observed before planning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalFile {
    /// The file, as the caller found it (the spec's `source:` or a `package` argument).
    pub path: PathBuf,
    /// Its size in bytes when observed; an import refuses a file whose size changed.
    pub size: u64,
    /// `sha256:<hex>`.
    pub digest: String,
}

/// The result of an import.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Imported {
    /// The `sha256:<hex>` digest of the model's manifest, which names it in the store.
    pub manifest_digest: String,
    /// The total size of the layers.
    pub size: u64,
    /// What the model is, from the GGUF header.
    pub config: ModelConfig,
}

/// A model in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The `sha256:<hex>` digest of its manifest.
    pub manifest_digest: String,
    /// The annotations of its `index.json` entry.
    pub annotations: BTreeMap<String, String>,
    /// The total size of the layers.
    pub size: u64,
    /// What it is, from its config blob.
    pub config: ModelConfig,
    /// `descriptor.created` of its config.
    pub created: Option<String>,
}

/// The content-addressed model store.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens the store at `dir`, creating the layout if absent and removing what a killed
    /// import left in `ingest/` (only when no import is running).
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let store = Store {
            root: dir.to_owned(),
        };
        let create = |path: &Path, source| StoreError::Create {
            path: path.to_owned(),
            source,
        };
        fs::create_dir_all(store.blobs_dir()).map_err(|e| create(dir, e))?;
        fs::create_dir_all(store.ingest_dir()).map_err(|e| create(dir, e))?;
        fs::create_dir_all(store.partial_dir()).map_err(|e| create(dir, e))?;
        let layout = dir.join("oci-layout");
        if !layout.exists() {
            store
                .write_atomic(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)
                .map_err(|e| create(&layout, e))?;
        }
        if !store.index_path().exists() {
            let _lock = store.lock(".lock", FlockOperation::LockExclusive)?;
            if !store.index_path().exists() {
                store.write_index(&Index::default())?;
            }
        }
        if let Some(_lock) = store.try_lock(".ingest.lock")? {
            store
                .clear_ingest()
                .map_err(|e| create(&store.ingest_dir(), e))?;
        }
        Ok(store)
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob `digest` lives.
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, StoreError> {
        Ok(self.blobs_dir().join(digest_hex(digest)?))
    }

    /// Where a download of the blob `digest` is kept until it is complete, so that an
    /// interrupted pull resumes from there.
    pub fn partial_path(&self, digest: &str) -> Result<PathBuf, StoreError> {
        Ok(self.partial_dir().join(digest_hex(digest)?))
    }

    /// Imports a model from local files (its shards, in order) as a DMR artifact; returns
    /// the manifest digest. Each file is checked to be GGUF before anything is copied and
    /// to have `digest` once copied. Importing the same files again changes nothing.
    pub fn import_local(
        &self,
        files: &[LocalFile],
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Imported, StoreError> {
        let Some(first) = files.first() else {
            return Err(StoreError::NoFiles);
        };
        let _ingest = self.lock(".ingest.lock", FlockOperation::LockShared)?;

        // Read every header first: a file that is not a model is refused before any copy.
        let mut headers = Vec::with_capacity(files.len());
        let mut stats = Vec::with_capacity(files.len());
        for file in files {
            let blob = self.blob_path(&file.digest)?;
            let stat = fs::metadata(&file.path).map_err(|source| StoreError::ReadSource {
                path: file.path.clone(),
                source,
            })?;
            let header = if blob.exists() {
                // The blob is what the plan saw; the file may have changed since.
                gguf::read_header(&blob)?
            } else {
                if stat.len() != file.size {
                    return Err(StoreError::SourceChanged {
                        path: file.path.clone(),
                        expected: format!("{} bytes", file.size),
                        found: format!("{} bytes", stat.len()),
                    });
                }
                gguf::read_header(&file.path)?
            };
            headers.push(header);
            stats.push(stat);
        }

        let total: u64 = files.iter().map(|f| f.size).sum();
        let mut done = 0;
        progress(done, total);
        for file in files {
            self.ingest_file(file, &mut done, total, progress)?;
        }

        let (config_file, layers) = self.describe(files, &headers, &stats)?;
        let descriptor = self.put_artifact(&config_file, layers)?;
        let manifest_digest = descriptor.digest.clone();
        let source = std::path::absolute(&first.path).unwrap_or_else(|_| first.path.clone());
        let entry = Descriptor {
            annotations: BTreeMap::from([(
                ANNOTATION_SOURCE.to_owned(),
                source.to_string_lossy().into_owned(),
            )]),
            ..descriptor
        };
        {
            let _index = self.lock(".lock", FlockOperation::LockExclusive)?;
            let mut index = self.read_index()?;
            if !index.manifests.iter().any(|m| m.digest == manifest_digest) {
                index.manifests.push(entry);
                self.write_index(&index)?;
            }
        }
        Ok(Imported {
            manifest_digest,
            size: total,
            config: config_file.config,
        })
    }

    /// Whether the manifest `manifest_digest` is in the index and all its blobs are present.
    pub fn contains(&self, manifest_digest: &str) -> bool {
        let Ok(index) = self.read_index() else {
            return false;
        };
        if !index.manifests.iter().any(|m| m.digest == manifest_digest) {
            return false;
        }
        let Ok(manifest) = self.manifest(manifest_digest) else {
            return false;
        };
        std::iter::once(&manifest.config)
            .chain(&manifest.layers)
            .all(|d| self.blob_path(&d.digest).is_ok_and(|p| p.is_file()))
    }

    /// The models in the store, in index order (template images left out).
    pub fn list(&self) -> Result<Vec<Entry>, StoreError> {
        let index = self.read_index()?;
        let mut entries = Vec::with_capacity(index.manifests.len());
        for descriptor in index.manifests {
            let manifest = self.manifest(&descriptor.digest)?;
            // Template images share the store; they are not models.
            if manifest.config.media_type != crate::artifact::CONFIG_MEDIA_TYPE {
                continue;
            }
            let config = self.config(&manifest)?;
            entries.push(Entry {
                manifest_digest: descriptor.digest,
                annotations: descriptor.annotations,
                size: manifest.layers.iter().map(|l| l.size).sum(),
                config: config.config,
                created: config.descriptor.created,
            });
        }
        Ok(entries)
    }

    /// The manifest `digest`.
    pub fn manifest(&self, digest: &str) -> Result<Manifest, StoreError> {
        let bytes = self.read_blob(digest)?;
        serde_json::from_slice(&bytes).map_err(|source| StoreError::CorruptBlob {
            digest: digest.to_owned(),
            what: "OCI image manifest",
            source,
        })
    }

    /// The paths of the GGUF layers of the manifest `manifest_digest`, in shard order.
    pub fn gguf_paths(&self, manifest_digest: &str) -> Result<Vec<PathBuf>, StoreError> {
        self.manifest(manifest_digest)?
            .layers
            .iter()
            .filter(|l| l.media_type == GGUF_MEDIA_TYPE)
            .map(|l| self.blob_path(&l.digest))
            .collect()
    }

    /// The model config of `manifest`.
    pub fn config(&self, manifest: &Manifest) -> Result<ConfigFile, StoreError> {
        let digest = &manifest.config.digest;
        let bytes = self.read_blob(digest)?;
        serde_json::from_slice(&bytes).map_err(|source| StoreError::CorruptBlob {
            digest: digest.clone(),
            what: "model config",
            source,
        })
    }

    /// Removes the manifest `manifest_digest` from the index, then deletes its blobs that no
    /// remaining manifest references. Removing a manifest that is not there succeeds.
    pub fn remove(&self, manifest_digest: &str) -> Result<(), StoreError> {
        digest_hex(manifest_digest)?;
        let _ingest = self.lock(".ingest.lock", FlockOperation::LockExclusive)?;
        let _index = self.lock(".lock", FlockOperation::LockExclusive)?;
        let mut index = self.read_index()?;
        let before = index.manifests.len();
        index.manifests.retain(|m| m.digest != manifest_digest);
        if index.manifests.len() != before {
            self.write_index(&index)?;
        }

        self.collect_garbage(&index, manifest_digest)
    }

    /// Deletes the manifest `manifest_digest` and those of its blobs that no manifest of
    /// `index` references; the caller holds both locks and has written `index`.
    pub(crate) fn collect_garbage(
        &self,
        index: &Index,
        manifest_digest: &str,
    ) -> Result<(), StoreError> {
        let mut candidates = BTreeSet::from([manifest_digest.to_owned()]);
        match self.manifest(manifest_digest) {
            Ok(manifest) => {
                candidates.insert(manifest.config.digest);
                candidates.extend(manifest.layers.into_iter().map(|l| l.digest));
            }
            Err(StoreError::BlobMissing { .. }) => {}
            Err(e) => return Err(e),
        }
        for remaining in &index.manifests {
            candidates.remove(&remaining.digest);
            let manifest = self.manifest(&remaining.digest)?;
            candidates.remove(&manifest.config.digest);
            for layer in &manifest.layers {
                candidates.remove(&layer.digest);
            }
        }
        for digest in candidates {
            let Ok(path) = self.blob_path(&digest) else {
                continue;
            };
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(StoreError::RemoveBlob { digest, source }),
            }
        }
        Ok(())
    }

    /// Re-hashes the blob `digest` and checks it matches.
    pub fn verify(&self, digest: &str) -> Result<(), StoreError> {
        let path = self.blob_path(digest)?;
        let (_, actual) =
            hash_file(&path).map_err(|source| self.blob_read_error(digest, source))?;
        if actual != digest {
            return Err(StoreError::BlobCorrupt {
                digest: digest.to_owned(),
                actual,
            });
        }
        Ok(())
    }

    fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    pub(crate) fn partial_dir(&self) -> PathBuf {
        self.root.join("partial")
    }

    pub(crate) fn ingest_dir(&self) -> PathBuf {
        self.root.join("ingest")
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    fn blob_read_error(&self, digest: &str, source: std::io::Error) -> StoreError {
        if source.kind() == std::io::ErrorKind::NotFound {
            StoreError::BlobMissing {
                digest: digest.to_owned(),
            }
        } else {
            StoreError::ReadBlob {
                digest: digest.to_owned(),
                source,
            }
        }
    }

    pub(crate) fn read_blob(&self, digest: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(digest)?;
        fs::read(&path).map_err(|source| self.blob_read_error(digest, source))
    }

    pub(crate) fn read_index(&self) -> Result<Index, StoreError> {
        let path = self.index_path();
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Index::default()),
            Err(source) => return Err(StoreError::ReadIndex { path, source }),
        };
        serde_json::from_slice(&bytes).map_err(|source| StoreError::CorruptIndex { path, source })
    }

    /// Replaces `index.json`; the caller holds the index lock.
    pub(crate) fn write_index(&self, index: &Index) -> Result<(), StoreError> {
        let path = self.index_path();
        let bytes = artifact::to_go_json(index).map_err(|source| StoreError::Encode {
            what: "index",
            source,
        })?;
        self.write_atomic(&path, &bytes)
            .map_err(|source| StoreError::WriteIndex { path, source })
    }

    /// Writes `bytes` to `target` through a fsynced temporary file in `ingest/`.
    pub(crate) fn write_atomic(&self, target: &Path, bytes: &[u8]) -> std::io::Result<()> {
        let mut tmp = tempfile::NamedTempFile::new_in(self.ingest_dir())?;
        tmp.write_all(bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(target).map_err(|e| e.error)?;
        sync_dir(target)
    }

    /// A directory on the store's filesystem for files that [`Store::put_image`] moves in.
    pub fn staging_dir(&self) -> std::io::Result<PathBuf> {
        let dir = self.ingest_dir();
        fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// Stores a container image made on this machine (`sandbox save`) and names it
    /// `reference`: its gzip layers, bottom first (files in [`Store::staging_dir`], moved
    /// in, with the digests of their uncompressed tars), an OCI config and a manifest.
    /// Returns the manifest digest.
    pub fn put_image(
        &self,
        layers: &[(PathBuf, String)],
        reference: &str,
    ) -> Result<String, StoreError> {
        let _ingest = self.lock(".ingest.lock", FlockOperation::LockShared)?;
        let mut descriptors = Vec::new();
        for (file, _) in layers {
            let (size, digest) = hash_file(file).map_err(|source| StoreError::ReadSource {
                path: file.clone(),
                source,
            })?;
            let path = self.blob_path(&digest)?;
            fs::rename(file, &path).map_err(|source| StoreError::WriteBlob {
                path: path.clone(),
                source,
            })?;
            sync_dir(&path).map_err(|source| StoreError::WriteBlob { path, source })?;
            descriptors.push(Descriptor {
                media_type: crate::artifact::IMAGE_LAYER_GZIP[0].to_owned(),
                size,
                digest,
                annotations: BTreeMap::new(),
            });
        }
        let diff_ids: Vec<&str> = layers.iter().map(|(_, id)| id.as_str()).collect();
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let config = serde_json::to_vec(&config).expect("JSON");
        let manifest = Manifest {
            schema_version: 2,
            media_type: MANIFEST_MEDIA_TYPE.to_owned(),
            config: Descriptor {
                media_type: crate::artifact::IMAGE_CONFIG_MEDIA_TYPES[0].to_owned(),
                size: config.len() as u64,
                digest: self.put_bytes(&config)?,
                annotations: BTreeMap::new(),
            },
            layers: descriptors,
        };
        let bytes = serde_json::to_vec(&manifest).expect("JSON");
        let digest = self.put_bytes(&bytes)?;
        let descriptor = Descriptor {
            media_type: MANIFEST_MEDIA_TYPE.to_owned(),
            size: bytes.len() as u64,
            digest: digest.clone(),
            annotations: BTreeMap::new(),
        };
        self.add_reference(descriptor, reference)?;
        Ok(digest)
    }

    /// Stores `bytes` as a blob; returns its digest.
    pub(crate) fn put_bytes(&self, bytes: &[u8]) -> Result<String, StoreError> {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
        let path = self.blob_path(&digest)?;
        if !path.exists() {
            self.write_atomic(&path, bytes)
                .map_err(|source| StoreError::WriteBlob { path, source })?;
        }
        Ok(digest)
    }

    /// Copies `file` into `blobs/` unless its blob is there, hashing as it copies.
    pub(crate) fn ingest_file(
        &self,
        file: &LocalFile,
        done: &mut u64,
        total: u64,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(), StoreError> {
        let target = self.blob_path(&file.digest)?;
        if target.exists() {
            *done += file.size;
            progress(*done, total);
            return Ok(());
        }
        let read_error = |source| StoreError::ReadSource {
            path: file.path.clone(),
            source,
        };
        let write_error = |source| StoreError::WriteBlob {
            path: file.path.clone(),
            source,
        };
        let mut source = File::open(&file.path).map_err(read_error)?;
        let mut tmp = tempfile::NamedTempFile::new_in(self.ingest_dir()).map_err(write_error)?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; COPY_BUFFER];
        let mut copied = 0u64;
        loop {
            let n = match source.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_error(e)),
            };
            hasher.update(&buffer[..n]);
            tmp.write_all(&buffer[..n]).map_err(write_error)?;
            copied += n as u64;
            progress((*done + copied).min(total), total);
        }
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != file.digest || copied != file.size {
            return Err(StoreError::SourceChanged {
                path: file.path.clone(),
                expected: file.digest.clone(),
                found: actual,
            });
        }
        tmp.as_file().sync_all().map_err(write_error)?;
        tmp.persist(&target).map_err(|e| write_error(e.error))?;
        sync_dir(&target).map_err(write_error)?;
        *done += file.size;
        Ok(())
    }

    /// The config (less nothing) and manifest (less its config descriptor) of a model.
    fn describe(
        &self,
        files: &[LocalFile],
        headers: &[Header],
        stats: &[fs::Metadata],
    ) -> Result<(ConfigFile, Vec<Descriptor>), StoreError> {
        let summary = gguf::summarize(headers);
        let created = stats
            .first()
            .and_then(|s| s.modified().ok())
            .map(artifact::rfc3339);
        let config = ConfigFile {
            config: ModelConfig::from_gguf(&summary),
            descriptor: Provenance { created },
            rootfs: RootFs {
                kind: "rootfs".to_owned(),
                diff_ids: files.iter().map(|f| f.digest.clone()).collect(),
            },
        };
        let layers = files
            .iter()
            .zip(stats)
            .map(|(file, stat)| {
                layer_descriptor(&file.path, stat, &file.digest, file.size, GGUF_MEDIA_TYPE)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((config, layers))
    }

    /// Writes `config_file` and a manifest of `layers` pointing at it as blobs, and returns
    /// the manifest's descriptor, ready for the index.
    pub(crate) fn put_artifact(
        &self,
        config_file: &ConfigFile,
        layers: Vec<Descriptor>,
    ) -> Result<Descriptor, StoreError> {
        let config_bytes =
            artifact::to_go_json(config_file).map_err(|source| StoreError::Encode {
                what: "config",
                source,
            })?;
        let config_digest = self.put_bytes(&config_bytes)?;
        let manifest = Manifest {
            schema_version: 2,
            media_type: MANIFEST_MEDIA_TYPE.to_owned(),
            config: Descriptor {
                media_type: CONFIG_MEDIA_TYPE.to_owned(),
                size: config_bytes.len() as u64,
                digest: config_digest,
                annotations: BTreeMap::new(),
            },
            layers,
        };
        let manifest_bytes =
            artifact::to_go_json(&manifest).map_err(|source| StoreError::Encode {
                what: "manifest",
                source,
            })?;
        Ok(Descriptor {
            media_type: MANIFEST_MEDIA_TYPE.to_owned(),
            size: manifest_bytes.len() as u64,
            digest: self.put_bytes(&manifest_bytes)?,
            annotations: BTreeMap::new(),
        })
    }

    fn lock_file(&self, name: &str) -> Result<(PathBuf, File), StoreError> {
        let path = self.root.join(name);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| StoreError::Lock {
                path: path.clone(),
                source,
            })?;
        Ok((path, file))
    }

    /// Takes flock `operation` on `name`; released when the returned file is dropped.
    pub(crate) fn lock(&self, name: &str, operation: FlockOperation) -> Result<File, StoreError> {
        let (path, file) = self.lock_file(name)?;
        rustix::fs::flock(&file, operation).map_err(|e| StoreError::Lock {
            path,
            source: e.into(),
        })?;
        Ok(file)
    }

    /// Takes an exclusive flock on `name` if nobody holds it.
    fn try_lock(&self, name: &str) -> Result<Option<File>, StoreError> {
        let (path, file) = self.lock_file(name)?;
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(file)),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(StoreError::Lock {
                path,
                source: e.into(),
            }),
        }
    }

    fn clear_ingest(&self) -> std::io::Result<()> {
        for entry in fs::read_dir(self.ingest_dir())? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                fs::remove_dir_all(entry.path())?;
            } else {
                fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }
}

/// The descriptor of a layer made from the file at `path`, with the annotations DMR puts on
/// every layer (`internal/partial/layer.go`): the file's name, its metadata, and whether
/// the media type was guessed.
pub(crate) fn layer_descriptor(
    path: &Path,
    stat: &fs::Metadata,
    digest: &str,
    size: u64,
    media_type: &str,
) -> Result<Descriptor, StoreError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let metadata = FileMetadata {
        name: &name,
        mode: stat.permissions().mode() & 0o777,
        uid: 0,
        gid: 0,
        size,
        mtime: stat
            .modified()
            .map(artifact::rfc3339)
            .unwrap_or_else(|_| artifact::rfc3339(std::time::UNIX_EPOCH)),
        typeflag: 0,
    };
    let metadata = artifact::to_go_json(&metadata).map_err(|source| StoreError::Encode {
        what: "layer metadata",
        source,
    })?;
    Ok(Descriptor {
        media_type: media_type.to_owned(),
        size,
        digest: digest.to_owned(),
        annotations: BTreeMap::from([
            (ANNOTATION_FILEPATH.to_owned(), name),
            (
                ANNOTATION_FILE_METADATA.to_owned(),
                String::from_utf8_lossy(&metadata).into_owned(),
            ),
            (ANNOTATION_MEDIATYPE_UNTESTED.to_owned(), "false".to_owned()),
        ]),
    })
}

/// The hex part of `digest`, which must be `sha256:` and 64 lowercase hex digits.
pub(crate) fn digest_hex(digest: &str) -> Result<&str, StoreError> {
    digest
        .strip_prefix("sha256:")
        .filter(|hex| {
            hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
        .ok_or_else(|| StoreError::InvalidDigest {
            digest: digest.to_owned(),
        })
}

/// Fsyncs the directory holding `path`, so a rename into it survives a crash.
pub(crate) fn sync_dir(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// The size and `sha256:<hex>` digest of the file at `path`.
pub(crate) fn hash_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut reader = BufReader::with_capacity(COPY_BUFFER, File::open(path)?);
    let mut hasher = Sha256::new();
    let size = std::io::copy(&mut reader, &mut hasher)?;
    Ok((size, format!("sha256:{}", hex::encode(hasher.finalize()))))
}

/// All shards of the model whose first file is `first`: for `name-00001-of-00003.gguf` the
/// three shards in order (an error names a missing one), else just `first`.
pub fn local_shards(first: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let Some((prefix, total, width)) = first
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(shard_name)
    else {
        return Ok(vec![first.to_owned()]);
    };
    let dir = first.parent().unwrap_or(Path::new(""));
    let mut shards = Vec::with_capacity(total as usize);
    for i in 1..=total {
        let path = dir.join(format!("{prefix}-{i:0width$}-of-{total:0width$}.gguf"));
        if !path.exists() {
            return Err(StoreError::ShardMissing {
                first: first.to_owned(),
                missing: path,
            });
        }
        shards.push(path);
    }
    Ok(shards)
}

/// `(prefix, total, digits)` of a shard name `prefix-00001-of-00003.gguf`.
fn shard_name(name: &str) -> Option<(&str, u32, usize)> {
    let stem = name.strip_suffix(".gguf")?;
    let (left, total) = stem.rsplit_once("-of-")?;
    let (prefix, number) = left.rsplit_once('-')?;
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if prefix.is_empty() || !all_digits(number) || !all_digits(total) {
        return None;
    }
    let n: u32 = number.parse().ok()?;
    let total_n: u32 = total.parse().ok()?;
    if n == 0 || total_n == 0 || n > total_n || total_n > 100_000 {
        return None;
    }
    Some((prefix, total_n, total.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names() {
        assert_eq!(shard_name("m-00001-of-00003.gguf"), Some(("m", 3, 5)));
        assert_eq!(shard_name("a-b-00002-of-00002.gguf"), Some(("a-b", 2, 5)));
        assert_eq!(shard_name("m.gguf"), None);
        assert_eq!(shard_name("m-00004-of-00003.gguf"), None);
        assert_eq!(shard_name("-00001-of-00003.gguf"), None);
    }

    #[test]
    fn digests_are_checked() {
        assert!(digest_hex(&format!("sha256:{}", "a".repeat(64))).is_ok());
        assert!(digest_hex("sha256:../../etc/passwd").is_err());
        assert!(digest_hex(&format!("sha256:{}", "A".repeat(64))).is_err());
    }
}
