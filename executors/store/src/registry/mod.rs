//! Pulling models from and pushing them to OCI registries (the distribution API).
//!
//! This is our own small client rather than `oci-client`: a pull must resume with HTTP Range
//! requests from a partial file the store keeps, report progress per layer as bytes arrive,
//! and fail with messages that name the registry, the reference and the digest.
//!
//! A pull reads the manifest (an index picks linux/amd64 or its first entry), refuses what is
//! not a Docker Model Runner artifact, then downloads the layers the store lacks, at most
//! [`PullOptions::concurrency`] at once, each into `partial/<hex>` of the store, hashed as it
//! arrives and renamed into `blobs/` once its digest matches. The config and manifest
//! follow, then the `index.json` entry named after the reference. A push uploads the blobs
//! the registry lacks, then the manifest.

mod auth;
mod client;
mod error;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aistack_spec::values::OciRef;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, RANGE};
use rustix::fs::FlockOperation;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use url::form_urlencoded;

pub use auth::Credentials;
pub use error::RegistryError;

use crate::Store;
use crate::artifact::{
    CONFIG_MEDIA_TYPE, ConfigFile, DOCKER_MANIFEST_LIST_MEDIA_TYPE, DOCKER_MANIFEST_MEDIA_TYPE,
    Descriptor, IMAGE_CONFIG_MEDIA_TYPES, INDEX_MEDIA_TYPE, MANIFEST_MEDIA_TYPE, Manifest,
    ModelConfig, is_image_layer, is_model_layer,
};
use crate::store::{COPY_BUFFER, digest_hex, sync_dir};
use client::{Access, Client, header};

/// Progress events are sent at most every this many bytes …
const PROGRESS_BYTES: u64 = 256 << 10;
/// … or this often.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
/// The largest manifest we read.
const MAX_MANIFEST: usize = 4 << 20;

/// How to pull.
#[derive(Clone, Debug)]
pub struct PullOptions {
    /// Layers downloaded at once.
    pub concurrency: usize,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions { concurrency: 4 }
    }
}

/// Bytes of one blob moved so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullProgress {
    /// The blob's digest.
    pub layer: String,
    /// Bytes of it moved so far: downloaded or found in the store on a pull, uploaded on a push.
    pub done: u64,
    /// The blob's size in bytes.
    pub total: u64,
}

/// The result of a pull.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pulled {
    /// The `sha256:<hex>` digest of the model's manifest.
    pub manifest_digest: String,
    /// The total size of the layers.
    pub size: u64,
    /// Blob bytes received from the registry (0 when the store had every blob).
    pub transferred_bytes: u64,
    /// What the model is, from its config blob.
    pub config: ModelConfig,
}

/// The result of a push.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pushed {
    /// The `sha256:<hex>` digest of the model's manifest.
    pub manifest_digest: String,
    /// The total size of the layers.
    pub size: u64,
    /// Blob bytes uploaded (0 when the registry had every blob).
    pub transferred_bytes: u64,
}

/// What we accept for a manifest.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// An index as far as we read it.
#[derive(Deserialize)]
struct ManifestList {
    #[serde(default)]
    manifests: Vec<ListEntry>,
}

#[derive(Deserialize)]
struct ListEntry {
    digest: String,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

/// A manifest as fetched: its bytes, media type and digest.
struct Fetched {
    bytes: Vec<u8>,
    media_type: String,
    digest: String,
}

/// What a pull accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Artifact {
    /// A Docker Model Runner model.
    Model,
    /// A container image (a template's root filesystem).
    Image,
}

/// A container image pulled into the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PulledImage {
    /// The `sha256:<hex>` digest of the image's manifest.
    pub manifest_digest: String,
    /// Its filesystem layers, bottom first.
    pub layers: Vec<Descriptor>,
    /// Blob bytes received from the registry.
    pub transferred_bytes: u64,
}

/// Pulls the model `reference` into `store` and names it there with the normalised
/// reference; blobs the store has are not fetched.
pub async fn pull(
    store: &Store,
    reference: &OciRef,
    options: &PullOptions,
    progress: &mut (dyn FnMut(PullProgress) + Send),
) -> Result<Pulled, RegistryError> {
    let (fetched, manifest, transferred) =
        pull_artifact(store, reference, options, progress, Artifact::Model).await?;
    Ok(Pulled {
        manifest_digest: fetched.digest,
        size: manifest.layers.iter().map(|l| l.size).sum(),
        transferred_bytes: transferred,
        config: store.config(&manifest)?.config,
    })
}

/// Pulls the container image `reference` (for linux/amd64 when it is an index) into
/// `store`, as [`pull`] does a model.
pub async fn pull_image(
    store: &Store,
    reference: &OciRef,
    options: &PullOptions,
    progress: &mut (dyn FnMut(PullProgress) + Send),
) -> Result<PulledImage, RegistryError> {
    let (fetched, manifest, transferred) =
        pull_artifact(store, reference, options, progress, Artifact::Image).await?;
    Ok(PulledImage {
        manifest_digest: fetched.digest,
        layers: manifest.layers,
        transferred_bytes: transferred,
    })
}

async fn pull_artifact(
    store: &Store,
    reference: &OciRef,
    options: &PullOptions,
    progress: &mut (dyn FnMut(PullProgress) + Send),
    artifact: Artifact,
) -> Result<(Fetched, Manifest, u64), RegistryError> {
    let name = reference.to_string();
    let client =
        Arc::new(Client::new(&reference.registry, &reference.repository, Access::Pull).await?);
    let fetched = fetch_manifest(&client, reference).await?;
    let manifest = check_manifest(&client.registry, &name, &fetched, artifact)?;

    // The config first: it is small, and a corrupt one fails before any layer moves.
    let config_bytes = if store.blob_path(&manifest.config.digest)?.is_file() {
        None
    } else {
        Some(fetch_small(&client, &name, &manifest.config).await?)
    };
    if let Some(bytes) = &config_bytes {
        let what = match artifact {
            Artifact::Model => serde_json::from_slice::<ConfigFile>(bytes).err(),
            Artifact::Image => serde_json::from_slice::<serde_json::Value>(bytes).err(),
        };
        if let Some(e) = what {
            return Err(RegistryError::BadResponse {
                registry: client.registry.clone(),
                what: "config",
                source: Some(e),
            });
        }
    }

    // Blob deletion waits for this pull, which may reference blobs it found present.
    let _ingest = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.lock(".ingest.lock", FlockOperation::LockShared))
            .await
            .expect("lock task")?
    };

    let mut transferred = config_bytes.as_ref().map_or(0, |b| b.len() as u64);
    let mut tasks = tokio::task::JoinSet::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let limit = Arc::new(tokio::sync::Semaphore::new(options.concurrency.max(1)));
    for layer in &manifest.layers {
        if store.blob_path(&layer.digest)?.is_file() {
            progress(PullProgress {
                layer: layer.digest.clone(),
                done: layer.size,
                total: layer.size,
            });
            continue;
        }
        let (client, store, layer, name, tx, limit) = (
            client.clone(),
            store.clone(),
            layer.clone(),
            name.clone(),
            tx.clone(),
            limit.clone(),
        );
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await.expect("semaphore open");
            fetch_blob(&client, &store, &name, &layer, &tx).await
        });
    }
    drop(tx);
    let mut failure = None;
    loop {
        tokio::select! {
            Some(event) = rx.recv() => progress(event),
            joined = tasks.join_next() => match joined {
                None => break,
                Some(Ok(Ok(received))) => transferred += received,
                Some(Ok(Err(e))) => {
                    // The first failure wins; the others stop (partial files stay).
                    failure.get_or_insert(e);
                    tasks.abort_all();
                }
                Some(Err(e)) if e.is_cancelled() => {}
                Some(Err(e)) => std::panic::resume_unwind(e.into_panic()),
            },
        }
    }
    while let Ok(event) = rx.try_recv() {
        progress(event);
    }
    if let Some(e) = failure {
        return Err(e);
    }

    if let Some(bytes) = &config_bytes {
        store.put_bytes(bytes)?;
    }
    store.put_bytes(&fetched.bytes)?;
    store.add_reference(
        Descriptor {
            media_type: fetched.media_type.clone(),
            size: fetched.bytes.len() as u64,
            digest: fetched.digest.clone(),
            annotations: BTreeMap::new(),
        },
        &name,
    )?;
    Ok((fetched, manifest, transferred))
}

/// The digest of the manifest `reference` names in its registry (what [`pull`] would
/// store); a reference with a digest is that digest.
pub async fn resolve(reference: &OciRef) -> Result<String, RegistryError> {
    if let Some(digest) = &reference.digest {
        return Ok(digest.clone());
    }
    let client = Client::new(&reference.registry, &reference.repository, Access::Pull).await?;
    let tag = reference.tag.as_deref().unwrap_or("latest");
    let url = client.url(&format!("manifests/{tag}"));
    let response = client
        .send(&|http| Ok(http.head(&url).header(ACCEPT, MANIFEST_ACCEPT)))
        .await?;
    if response.status().is_success() {
        let media_type = header(response.headers(), "content-type").unwrap_or_default();
        let is_list = [INDEX_MEDIA_TYPE, DOCKER_MANIFEST_LIST_MEDIA_TYPE]
            .iter()
            .any(|t| media_type.starts_with(t));
        if let Some(digest) = header(response.headers(), "docker-content-digest")
            && !is_list
            && digest_hex(digest).is_ok()
        {
            return Ok(digest.to_owned());
        }
    }
    // No digest header, an index, or an error to explain: the GET path says it all.
    Ok(fetch_manifest(&client, reference).await?.digest)
}

/// Pushes the model `source` (a name or manifest digest in `store`) to `target`.
pub async fn push(
    store: &Store,
    source: &str,
    target: &OciRef,
    progress: &mut (dyn FnMut(PullProgress) + Send),
) -> Result<Pushed, RegistryError> {
    let digest = store
        .resolve(source)
        .ok_or_else(|| RegistryError::NotInStore {
            reference: source.to_owned(),
        })?;
    let manifest_bytes = store.read_blob(&digest)?;
    let manifest = store.manifest(&digest)?;
    let media_type = if manifest.media_type.is_empty() {
        MANIFEST_MEDIA_TYPE.to_owned()
    } else {
        manifest.media_type.clone()
    };
    let client = Client::new(&target.registry, &target.repository, Access::Push).await?;
    let mut transferred = 0;
    for blob in std::iter::once(&manifest.config).chain(&manifest.layers) {
        transferred += push_blob(&client, store, blob, progress).await?;
    }
    let tag = target.tag.clone().unwrap_or_else(|| digest.clone());
    let url = client.url(&format!("manifests/{tag}"));
    let response = client
        .send(&|http| {
            Ok(http
                .put(&url)
                .header(CONTENT_TYPE, &media_type)
                .body(manifest_bytes.clone()))
        })
        .await?;
    if response.status() != StatusCode::CREATED && !response.status().is_success() {
        return Err(client
            .unexpected(response, format!("the manifest of `{target}`"))
            .await);
    }
    Ok(Pushed {
        manifest_digest: digest,
        size: manifest.layers.iter().map(|l| l.size).sum(),
        transferred_bytes: transferred,
    })
}

/// Uploads `blob` unless the registry has it; returns the bytes sent.
async fn push_blob(
    client: &Client,
    store: &Store,
    blob: &Descriptor,
    progress: &mut (dyn FnMut(PullProgress) + Send),
) -> Result<u64, RegistryError> {
    let event = |done| PullProgress {
        layer: blob.digest.clone(),
        done,
        total: blob.size,
    };
    let url = client.url(&format!("blobs/{}", blob.digest));
    let response = client.send(&|http| Ok(http.head(&url))).await?;
    if response.status().is_success() {
        progress(event(blob.size));
        return Ok(0);
    }
    if response.status() != StatusCode::NOT_FOUND {
        return Err(client
            .unexpected(response, format!("a check for blob `{}`", blob.digest))
            .await);
    }
    let start = client.url("blobs/uploads/");
    let response = client
        .send(&|http| Ok(http.post(&start).header(CONTENT_LENGTH, 0)))
        .await?;
    if response.status() != StatusCode::ACCEPTED {
        return Err(client
            .unexpected(response, format!("the upload of blob `{}`", blob.digest))
            .await);
    }
    let Some(location) = header(response.headers(), "location") else {
        return Err(RegistryError::BadResponse {
            registry: client.registry.clone(),
            what: "upload location",
            source: None,
        });
    };
    let location = client.absolute(location);
    let sep = if location.contains('?') { '&' } else { '?' };
    let digest = form_urlencoded::Serializer::new(String::new())
        .append_pair("digest", &blob.digest)
        .finish();
    let put = format!("{location}{sep}{digest}");
    let path = store.blob_path(&blob.digest)?;
    let sent = Arc::new(AtomicU64::new(0));
    let open = |path: &Path| -> Result<reqwest::Body, RegistryError> {
        let file = File::open(path).map_err(|source| RegistryError::Read {
            path: path.to_owned(),
            source,
        })?;
        let counter = sent.clone();
        counter.store(0, Ordering::Relaxed);
        let stream = tokio_util::io::ReaderStream::with_capacity(
            tokio::fs::File::from_std(file),
            COPY_BUFFER.min(1 << 20),
        );
        let stream = CountingStream {
            inner: stream,
            counter,
        };
        Ok(reqwest::Body::wrap_stream(stream))
    };
    let build = |http: &reqwest::Client| {
        Ok(http
            .put(&put)
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, blob.size)
            .body(open(&path)?))
    };
    let request = client.send(&build);
    tokio::pin!(request);
    let mut tick = tokio::time::interval(PROGRESS_INTERVAL);
    let response = loop {
        tokio::select! {
            response = &mut request => break response?,
            _ = tick.tick() => progress(event(sent.load(Ordering::Relaxed).min(blob.size))),
        }
    };
    if response.status() != StatusCode::CREATED && !response.status().is_success() {
        return Err(client
            .unexpected(response, format!("the upload of blob `{}`", blob.digest))
            .await);
    }
    progress(event(blob.size));
    Ok(blob.size)
}

/// A byte stream that counts what passes.
struct CountingStream<S> {
    inner: S,
    counter: Arc<AtomicU64>,
}

impl<S> futures_core::Stream for CountingStream<S>
where
    S: futures_core::Stream<Item = std::io::Result<bytes::Bytes>> + Unpin,
{
    type Item = std::io::Result<bytes::Bytes>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_next(cx);
        if let std::task::Poll::Ready(Some(Ok(chunk))) = &polled {
            self.counter
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        polled
    }
}

/// GETs the manifest `reference` names, following an index to linux/amd64 (or its first
/// entry); checks the digest.
async fn fetch_manifest(client: &Client, reference: &OciRef) -> Result<Fetched, RegistryError> {
    let name = reference.to_string();
    let target = reference
        .digest
        .clone()
        .or_else(|| reference.tag.clone())
        .unwrap_or_else(|| "latest".to_owned());
    let fetched = get_manifest(client, &name, &target, reference.digest.as_deref()).await?;
    if ![INDEX_MEDIA_TYPE, DOCKER_MANIFEST_LIST_MEDIA_TYPE].contains(&fetched.media_type.as_str()) {
        return Ok(fetched);
    }
    let list: ManifestList =
        serde_json::from_slice(&fetched.bytes).map_err(|e| RegistryError::BadResponse {
            registry: client.registry.clone(),
            what: "image index",
            source: Some(e),
        })?;
    let chosen = list
        .manifests
        .iter()
        .find(|m| {
            m.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
        })
        .or(list.manifests.first())
        .ok_or_else(|| RegistryError::NotAModel {
            reference: name.clone(),
            what: "manifest",
            media_type: format!("{} with no manifests", fetched.media_type),
        })?;
    get_manifest(client, &name, &chosen.digest, Some(&chosen.digest)).await
}

/// GETs `/v2/<repo>/manifests/<target>`; `expected` is the digest it must have.
async fn get_manifest(
    client: &Client,
    name: &str,
    target: &str,
    expected: Option<&str>,
) -> Result<Fetched, RegistryError> {
    let url = client.url(&format!("manifests/{target}"));
    let response = client
        .send(&|http| Ok(http.get(&url).header(ACCEPT, MANIFEST_ACCEPT)))
        .await?;
    let status = response.status();
    if status == StatusCode::NOT_FOUND {
        let mut code = client::error_code(response).await;
        if code.as_deref() != Some("NAME_UNKNOWN") {
            // Distribution answers MANIFEST_UNKNOWN for a tag of a repository it does not
            // have; its tag list tells the two apart.
            let tags = client.url("tags/list");
            if let Ok(response) = client.send(&|http| Ok(http.get(&tags))).await
                && response.status() == StatusCode::NOT_FOUND
            {
                code = client::error_code(response).await;
            }
        }
        return Err(if code.as_deref() == Some("NAME_UNKNOWN") {
            RegistryError::UnknownRepository {
                registry: client.registry.clone(),
                repository: client.repository.clone(),
            }
        } else {
            RegistryError::UnknownManifest {
                reference: name.to_owned(),
                repository: format!("{}/{}", client.registry, client.repository),
            }
        });
    }
    if !status.is_success() {
        return Err(client
            .unexpected(response, format!("a request for the manifest of `{name}`"))
            .await);
    }
    let header_digest = header(response.headers(), "docker-content-digest").map(str::to_owned);
    let content_type = header(response.headers(), "content-type")
        .map(|t| t.split(';').next().unwrap_or(t).trim().to_owned());
    let bytes = response.bytes().await.map_err(|e| client.transport(e))?;
    if bytes.len() > MAX_MANIFEST {
        return Err(RegistryError::BadResponse {
            registry: client.registry.clone(),
            what: "manifest (over 4 MiB)",
            source: None,
        });
    }
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    let mismatch = expected.is_some_and(|e| e != digest)
        || header_digest
            .as_deref()
            .is_some_and(|h| h.starts_with("sha256:") && h != digest);
    if mismatch {
        return Err(RegistryError::DigestMismatch {
            reference: name.to_owned(),
            digest: expected
                .map(str::to_owned)
                .or(header_digest)
                .unwrap_or(digest),
        });
    }
    #[derive(Deserialize)]
    struct Kind {
        #[serde(rename = "mediaType", default)]
        media_type: String,
    }
    let kind: Kind = serde_json::from_slice(&bytes).map_err(|e| RegistryError::BadResponse {
        registry: client.registry.clone(),
        what: "manifest",
        source: Some(e),
    })?;
    let media_type = if kind.media_type.is_empty() {
        content_type.unwrap_or_else(|| MANIFEST_MEDIA_TYPE.to_owned())
    } else {
        kind.media_type
    };
    Ok(Fetched {
        bytes: bytes.to_vec(),
        media_type,
        digest,
    })
}

/// The manifest of a Docker Model Runner artifact, or why `fetched` is not one.
fn check_manifest(
    registry: &str,
    name: &str,
    fetched: &Fetched,
    artifact: Artifact,
) -> Result<Manifest, RegistryError> {
    let wrong = |what, media_type: &str| match artifact {
        Artifact::Model => RegistryError::NotAModel {
            reference: name.to_owned(),
            what,
            media_type: media_type.to_owned(),
        },
        Artifact::Image => RegistryError::NotAnImage {
            reference: name.to_owned(),
            what,
            media_type: media_type.to_owned(),
        },
    };
    if ![MANIFEST_MEDIA_TYPE, DOCKER_MANIFEST_MEDIA_TYPE].contains(&fetched.media_type.as_str()) {
        return Err(wrong("manifest", &fetched.media_type));
    }
    let manifest: Manifest =
        serde_json::from_slice(&fetched.bytes).map_err(|e| RegistryError::BadResponse {
            registry: registry.to_owned(),
            what: "manifest",
            source: Some(e),
        })?;
    let (configs, is_layer): (&[&str], fn(&str) -> bool) = match artifact {
        Artifact::Model => (&[CONFIG_MEDIA_TYPE], is_model_layer),
        Artifact::Image => (&IMAGE_CONFIG_MEDIA_TYPES, is_image_layer),
    };
    if !configs.contains(&manifest.config.media_type.as_str()) {
        return Err(wrong("config", &manifest.config.media_type));
    }
    if let Some(layer) = manifest.layers.iter().find(|l| !is_layer(&l.media_type)) {
        return Err(wrong("layer", &layer.media_type));
    }
    for blob in std::iter::once(&manifest.config).chain(&manifest.layers) {
        if digest_hex(&blob.digest).is_err() {
            return Err(RegistryError::BadResponse {
                registry: registry.to_owned(),
                what: "manifest (a digest is not sha256)",
                source: None,
            });
        }
    }
    Ok(manifest)
}

/// GETs a small blob (a config) into memory and checks its digest.
async fn fetch_small(
    client: &Client,
    name: &str,
    blob: &Descriptor,
) -> Result<Vec<u8>, RegistryError> {
    let url = client.url(&format!("blobs/{}", blob.digest));
    let response = client.send(&|http| Ok(http.get(&url))).await?;
    if !response.status().is_success() {
        return Err(client
            .unexpected(response, format!("a request for blob `{}`", blob.digest))
            .await);
    }
    let bytes = response.bytes().await.map_err(|e| client.transport(e))?;
    if format!("sha256:{}", hex::encode(Sha256::digest(&bytes))) != blob.digest {
        return Err(RegistryError::DigestMismatch {
            reference: name.to_owned(),
            digest: blob.digest.clone(),
        });
    }
    Ok(bytes.to_vec())
}

/// Downloads the blob `blob` into the store through its partial file, resuming what an
/// earlier pull left; returns the bytes received.
async fn fetch_blob(
    client: &Client,
    store: &Store,
    name: &str,
    blob: &Descriptor,
    tx: &mpsc::UnboundedSender<PullProgress>,
) -> Result<u64, RegistryError> {
    let target = store.blob_path(&blob.digest)?;
    let partial = store.partial_path(&blob.digest)?;
    let write_error = |source| RegistryError::Write {
        path: partial.clone(),
        source,
    };

    // Another pull of the same blob holds the lock while it downloads; wait for it.
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&partial)
        .map_err(write_error)?;
    let file = match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => file,
        Err(rustix::io::Errno::WOULDBLOCK) => tokio::task::spawn_blocking(move || {
            rustix::fs::flock(&file, FlockOperation::LockExclusive).map(|()| file)
        })
        .await
        .expect("lock task")
        .map_err(|e| write_error(e.into()))?,
        Err(e) => return Err(write_error(e.into())),
    };
    if target.is_file() {
        return Ok(0);
    }

    // Hash what an earlier pull left.
    let (mut file, mut hasher, mut have) = tokio::task::spawn_blocking(move || {
        let mut file = file;
        let mut hasher = Sha256::new();
        file.seek(SeekFrom::Start(0))?;
        let have = std::io::copy(
            &mut std::io::BufReader::with_capacity(1 << 20, &file),
            &mut hasher,
        )?;
        Ok::<_, std::io::Error>((file, hasher, have))
    })
    .await
    .expect("hash task")
    .map_err(write_error)?;
    if have > blob.size {
        file.set_len(0).map_err(write_error)?;
        file.seek(SeekFrom::Start(0)).map_err(write_error)?;
        hasher = Sha256::new();
        have = 0;
    }

    let mut received = 0;
    if have < blob.size {
        let url = client.url(&format!("blobs/{}", blob.digest));
        let response = client
            .send(&|http| {
                let request = http.get(&url);
                Ok(if have > 0 {
                    request.header(RANGE, format!("bytes={have}-"))
                } else {
                    request
                })
            })
            .await?;
        let status = response.status();
        let resumed = status == StatusCode::PARTIAL_CONTENT
            && header(response.headers(), "content-range")
                .is_some_and(|r| r.starts_with(&format!("bytes {have}-")));
        if !resumed {
            if !status.is_success() || status == StatusCode::PARTIAL_CONTENT {
                return Err(client
                    .unexpected(response, format!("a request for blob `{}`", blob.digest))
                    .await);
            }
            // The registry sent the whole blob: start over.
            file.set_len(0).map_err(write_error)?;
            file.seek(SeekFrom::Start(0)).map_err(write_error)?;
            hasher = Sha256::new();
            have = 0;
        }
        let mut response = response;
        let mut out = BufWriter::with_capacity(1 << 20, &mut file);
        let mut last = (have, Instant::now());
        let _ = tx.send(PullProgress {
            layer: blob.digest.clone(),
            done: have,
            total: blob.size,
        });
        while let Some(chunk) = response.chunk().await.map_err(|e| client.transport(e))? {
            if have + chunk.len() as u64 > blob.size {
                drop(out);
                let _ = std::fs::remove_file(&partial);
                return Err(RegistryError::DigestMismatch {
                    reference: name.to_owned(),
                    digest: blob.digest.clone(),
                });
            }
            hasher.update(&chunk);
            out.write_all(&chunk).map_err(write_error)?;
            have += chunk.len() as u64;
            received += chunk.len() as u64;
            if have - last.0 >= PROGRESS_BYTES || last.1.elapsed() >= PROGRESS_INTERVAL {
                last = (have, Instant::now());
                let _ = tx.send(PullProgress {
                    layer: blob.digest.clone(),
                    done: have,
                    total: blob.size,
                });
            }
        }
        out.flush().map_err(write_error)?;
        drop(out);
        if have < blob.size {
            return Err(RegistryError::Incomplete {
                registry: client.registry.clone(),
                digest: blob.digest.clone(),
            });
        }
    }

    let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
    if actual != blob.digest {
        drop(file);
        let _ = std::fs::remove_file(&partial);
        return Err(RegistryError::DigestMismatch {
            reference: name.to_owned(),
            digest: blob.digest.clone(),
        });
    }
    let target_clone = target.clone();
    let partial_clone = partial.clone();
    tokio::task::spawn_blocking(move || {
        file.sync_all()?;
        std::fs::rename(&partial_clone, &target_clone)?;
        sync_dir(&target_clone)
    })
    .await
    .expect("rename task")
    .map_err(|source| RegistryError::Write {
        path: target,
        source,
    })?;
    let _ = tx.send(PullProgress {
        layer: blob.digest.clone(),
        done: blob.size,
        total: blob.size,
    });
    Ok(received)
}
