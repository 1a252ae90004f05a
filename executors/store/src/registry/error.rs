//! What can go wrong talking to a registry, each with its fix.

use std::path::PathBuf;

use crate::error::StoreError;

/// A failure of a pull, push or resolve.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry did not accept a connection.
    #[error("Cannot reach the registry `{registry}`")]
    Unreachable {
        /// The registry, as references name it (`docker.io`, `127.0.0.1:5000`).
        registry: String,
        /// What the HTTP client said.
        #[source]
        source: reqwest::Error,
    },
    /// A connection broke or timed out mid-transfer.
    #[error("The connection to the registry `{registry}` failed")]
    Connection {
        /// The registry.
        registry: String,
        /// What the HTTP client said.
        #[source]
        source: reqwest::Error,
    },
    /// A blob's download ended before its size.
    #[error("The registry `{registry}` stopped sending blob `{digest}` before its end")]
    Incomplete {
        /// The registry.
        registry: String,
        /// The blob's `sha256:<hex>` digest.
        digest: String,
    },
    /// The registry has no such repository.
    #[error("The registry `{registry}` has no repository `{repository}`")]
    UnknownRepository {
        /// The registry.
        registry: String,
        /// The repository's path in the registry, e.g. `ai/smollm2`.
        repository: String,
    },
    /// The repository has no such tag or manifest.
    #[error("The registry has no `{reference}`")]
    UnknownManifest {
        /// The full reference, `registry/repository[:tag][@digest]`.
        reference: String,
        /// `registry/repository`, for the help line.
        repository: String,
    },
    /// The registry refused access, with or without credentials.
    #[error("{}", if *with_credentials {
        format!("The registry `{registry}` refused the credentials for `{repository}`")
    } else {
        format!("The registry `{registry}` requires credentials for `{repository}`")
    })]
    Unauthorized {
        /// The registry.
        registry: String,
        /// The repository's path in the registry.
        repository: String,
        /// Whether credentials were sent: they were refused, rather than missing.
        with_credentials: bool,
    },
    /// The artifact is not a Docker Model Runner model.
    #[error("`{reference}` is not a model artifact: its {what} is `{media_type}`")]
    NotAModel {
        /// The full reference, `registry/repository[:tag][@digest]`.
        reference: String,
        /// `config`, `layer` or `manifest`.
        what: &'static str,
        /// The media type found.
        media_type: String,
    },
    /// The artifact is not a container image.
    #[error("`{reference}` is not a container image: its {what} is `{media_type}`")]
    NotAnImage {
        /// The full reference, `registry/repository[:tag][@digest]`.
        reference: String,
        /// `config`, `layer` or `manifest`.
        what: &'static str,
        /// The media type found.
        media_type: String,
    },
    /// A blob or manifest does not hash to its digest.
    #[error("Blob `{digest}` of `{reference}` does not match its digest")]
    DigestMismatch {
        /// The full reference, `registry/repository[:tag][@digest]`.
        reference: String,
        /// The `sha256:<hex>` digest the blob or manifest should have.
        digest: String,
    },
    /// The registry answered with something that is not what the protocol says.
    #[error("The registry `{registry}` sent an invalid {what}")]
    BadResponse {
        /// The registry.
        registry: String,
        /// What was invalid, e.g. `manifest`, `token` or `upload location`.
        what: &'static str,
        /// Where and how the JSON is wrong, when the answer was JSON.
        #[source]
        source: Option<serde_json::Error>,
    },
    /// The registry answered with a status this client does not expect.
    #[error("The registry `{registry}` answered {status}{} to {action}", code.as_ref().map(|c| format!(" (`{c}`)")).unwrap_or_default())]
    UnexpectedStatus {
        /// The registry.
        registry: String,
        /// The HTTP status code.
        status: u16,
        /// The first error code of the registry's JSON answer.
        code: Option<String>,
        /// What was asked, e.g. ``GET `/v2/ai/smollm2/manifests/latest` ``.
        action: String,
    },
    /// A blob could not be written into the store (disk full, permissions).
    #[error("Cannot write `{}` into the model store", path.display())]
    Write {
        /// The file in the store's `partial/` or `blobs/` directory.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// A blob to push could not be read from the store.
    #[error("Cannot read `{}` from the model store", path.display())]
    Read {
        /// The blob's file in the store.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The docker config could not be read.
    #[error("Cannot read the docker config `{}`", path.display())]
    DockerConfig {
        /// The docker config file: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
        path: PathBuf,
        /// What went wrong: reading the file, parsing it, or decoding an `auth` entry.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A `docker-credential-*` helper failed.
    #[error("The credential helper `docker-credential-{helper}` failed for `{registry}`")]
    CredentialHelper {
        /// The helper's name, after `docker-credential-`.
        helper: String,
        /// The registry the credentials were asked for.
        registry: String,
        /// What the system said, when running the helper failed; `None` when it ran but failed or
        /// answered something that is not JSON.
        #[source]
        source: Option<std::io::Error>,
    },
    /// The model to push is not in the store.
    #[error("No model `{reference}` in the store")]
    NotInStore {
        /// The name or manifest digest as given.
        reference: String,
    },
    /// The HTTP client could not be built (TLS roots).
    #[error("Cannot set up HTTPS")]
    Client {
        /// What the HTTP client said.
        #[source]
        source: reqwest::Error,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RegistryError {
    /// The fix for this error, for a `help:` line.
    pub fn help(&self) -> Option<String> {
        Some(match self {
            RegistryError::Unreachable { registry, .. } => format!(
                "Check that the registry runs and that `{registry}` is its address"
            ),
            RegistryError::Connection { .. } | RegistryError::Incomplete { .. } => {
                "Run the command again; a pull resumes where it stopped".to_owned()
            }
            RegistryError::UnknownRepository { .. } => {
                "Check the reference, or push the model there first with `aistack model push`"
                    .to_owned()
            }
            RegistryError::UnknownManifest { repository, .. } => format!(
                "List the tags with `skopeo list-tags docker://{repository}`"
            ),
            RegistryError::Unauthorized { registry, .. } => {
                let login = if registry == "docker.io" {
                    "docker login".to_owned()
                } else {
                    format!("docker login {registry}")
                };
                format!(
                    "Log in with `{login}`, or add the registry to `~/.docker/config.json`; check the reference if the repository may not exist"
                )
            }
            RegistryError::NotAModel { .. } => {
                "Pull a model artifact such as `ai/smollm2`".to_owned()
            }
            RegistryError::NotAnImage { .. } => {
                "Point `from:` at a container image (tar or gzip layers), a directory or a template".to_owned()
            }
            RegistryError::DigestMismatch { .. } => {
                "The registry's copy is corrupt and nothing of it was kept: push the model again, then pull".to_owned()
            }
            RegistryError::BadResponse { registry, .. } => {
                format!("Check that `{registry}` is an OCI registry")
            }
            RegistryError::UnexpectedStatus { .. } => {
                "Check the registry's logs, then run the command again".to_owned()
            }
            RegistryError::Write { .. } => {
                "Free space on the disk holding the model store, then pull again; the store is unchanged and the download resumes".to_owned()
            }
            RegistryError::Read { .. } => {
                "Remove the model with `aistack model rm` and import or pull it again".to_owned()
            }
            RegistryError::DockerConfig { path, .. } => {
                format!("Fix or move aside `{}`", path.display())
            }
            RegistryError::CredentialHelper { helper, .. } => format!(
                "Check that `docker-credential-{helper}` is installed and works, or remove it from the docker config"
            ),
            RegistryError::NotInStore { .. } => {
                "List the models with `aistack model ls`".to_owned()
            }
            RegistryError::Client { .. } => {
                "Check the system's CA certificates (`ca-certificates`)".to_owned()
            }
            RegistryError::Store(e) => return e.help(),
        })
    }
}
