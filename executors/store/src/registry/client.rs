//! One repository of one registry over HTTP: base URL, credentials and the challenge flow.
//!
//! A request goes out anonymously first (or with what an earlier challenge taught); on a 401
//! the `WWW-Authenticate` challenge says how to authenticate: `Basic` sends the docker
//! config's credentials, `Bearer` gets a token from the realm (with those credentials if
//! any) for the repository's scope and caches it. A 401 or 403 that persists is
//! [`RegistryError::Unauthorized`].

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::header::{HeaderMap, WWW_AUTHENTICATE};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::Deserialize;

use super::auth::{self, Challenge, Credentials};
use super::error::RegistryError;

/// How long to wait for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a read may stall before the transfer counts as broken.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// What a client may do in its repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Pull,
    Push,
}

/// A client for one repository.
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    /// The registry as references name it: `docker.io`, `127.0.0.1:5000`.
    pub registry: String,
    pub repository: String,
    base: String,
    scope: String,
    credentials: Option<Credentials>,
    auth: Mutex<Auth>,
}

/// What the registry asked for so far.
#[derive(Default)]
enum Auth {
    #[default]
    Anonymous,
    Basic,
    Bearer(String),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Auth::Anonymous => "Anonymous",
            Auth::Basic => "Basic",
            Auth::Bearer(_) => "Bearer(<redacted>)",
        })
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    #[serde(default)]
    errors: Vec<ErrorItem>,
}

#[derive(Deserialize)]
struct ErrorItem {
    #[serde(default)]
    code: String,
}

impl Client {
    /// A client for `registry/repository`, with the docker config's credentials.
    pub async fn new(
        registry: &str,
        repository: &str,
        access: Access,
    ) -> Result<Client, RegistryError> {
        let credentials = auth::credentials(registry).await?;
        let plain = is_loopback(registry);
        let host = if registry == "docker.io" {
            "registry-1.docker.io"
        } else {
            registry
        };
        let base = format!("{}://{host}", if plain { "http" } else { "https" });
        // reqwest is built without a default crypto provider (ring instead of aws-lc, so no
        // C build of aws-lc); the first client installs ring for the process.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("aistack/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT);
        if plain {
            builder = builder.no_proxy();
        }
        let http = builder
            .build()
            .map_err(|source| RegistryError::Client { source })?;
        let actions = match access {
            Access::Pull => "pull",
            Access::Push => "pull,push",
        };
        Ok(Client {
            http,
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            base,
            scope: format!("repository:{repository}:{actions}"),
            credentials,
            auth: Mutex::new(Auth::Anonymous),
        })
    }

    /// The URL of `/v2/<repository>/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("{}/v2/{}/{path}", self.base, self.repository)
    }

    /// An absolute URL for a `Location` header, which may be relative to the registry.
    pub fn absolute(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_owned()
        } else {
            format!("{}{location}", self.base)
        }
    }

    /// Sends the request `build` makes, authenticating as the registry asks; a request is
    /// built again for each attempt. Any status but a persisting 401/403 is returned.
    pub async fn send(
        &self,
        build: &(dyn Fn(&reqwest::Client) -> Result<RequestBuilder, RegistryError> + Sync),
    ) -> Result<Response, RegistryError> {
        let mut challenged = false;
        loop {
            let request = self.authorise(build(&self.http)?);
            let response = request.send().await.map_err(|e| self.transport(e))?;
            let status = response.status();
            if status == StatusCode::FORBIDDEN || (status == StatusCode::UNAUTHORIZED && challenged)
            {
                return Err(self.unauthorized());
            }
            if status != StatusCode::UNAUTHORIZED {
                return Ok(response);
            }
            challenged = true;
            let challenge = response
                .headers()
                .get_all(WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .filter_map(auth::parse_challenge)
                .min_by_key(|c| matches!(c, Challenge::Basic));
            let next = match challenge {
                Some(Challenge::Basic) if self.credentials.is_some() => Auth::Basic,
                Some(Challenge::Bearer { realm, service, .. }) => {
                    Auth::Bearer(self.token(&realm, service.as_deref()).await?)
                }
                _ => return Err(self.unauthorized()),
            };
            *self.auth.lock().unwrap_or_else(|e| e.into_inner()) = next;
        }
    }

    /// A transport error: unreachable when the connection failed, else broken.
    pub fn transport(&self, source: reqwest::Error) -> RegistryError {
        if source.is_connect() {
            RegistryError::Unreachable {
                registry: self.registry.clone(),
                source,
            }
        } else {
            RegistryError::Connection {
                registry: self.registry.clone(),
                source,
            }
        }
    }

    pub fn unauthorized(&self) -> RegistryError {
        RegistryError::Unauthorized {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            with_credentials: self.credentials.is_some(),
        }
    }

    /// An error for a status the caller did not expect, with the registry's error code.
    pub async fn unexpected(&self, response: Response, action: String) -> RegistryError {
        let status = response.status().as_u16();
        let code = error_code(response).await;
        RegistryError::UnexpectedStatus {
            registry: self.registry.clone(),
            status,
            code,
            action,
        }
    }

    fn authorise(&self, request: RequestBuilder) -> RequestBuilder {
        let auth = self.auth.lock().unwrap_or_else(|e| e.into_inner());
        match (&*auth, &self.credentials) {
            (Auth::Bearer(token), _) => request.bearer_auth(token),
            (Auth::Basic, Some(Credentials::Basic { username, password })) => {
                request.basic_auth(username, Some(password))
            }
            _ => request,
        }
    }

    /// A bearer token for this client's scope from `realm`.
    async fn token(&self, realm: &str, service: Option<&str>) -> Result<String, RegistryError> {
        let query = auth::token_params(service, &self.scope, None);
        let request = match &self.credentials {
            Some(Credentials::IdentityToken { token, .. }) => self
                .http
                .post(realm)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(auth::token_params(service, &self.scope, Some(token))),
            Some(Credentials::Basic { username, password }) => {
                let sep = if realm.contains('?') { '&' } else { '?' };
                self.http
                    .get(format!("{realm}{sep}{query}"))
                    .basic_auth(username, Some(password))
            }
            None => {
                let sep = if realm.contains('?') { '&' } else { '?' };
                self.http.get(format!("{realm}{sep}{query}"))
            }
        };
        let response = request.send().await.map_err(|e| self.transport(e))?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(self.unauthorized());
        }
        if !status.is_success() {
            return Err(self
                .unexpected(response, "a token request".to_owned())
                .await);
        }
        let bytes = response.bytes().await.map_err(|e| self.transport(e))?;
        let answer: TokenAnswer =
            serde_json::from_slice(&bytes).map_err(|e| RegistryError::BadResponse {
                registry: self.registry.clone(),
                what: "token",
                source: Some(e),
            })?;
        answer
            .token
            .or(answer.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| RegistryError::BadResponse {
                registry: self.registry.clone(),
                what: "token",
                source: None,
            })
    }
}

/// The first error code of a registry's JSON error answer.
pub async fn error_code(response: Response) -> Option<String> {
    let bytes = response.bytes().await.ok()?;
    let answer: ErrorAnswer = serde_json::from_slice(&bytes).ok()?;
    answer
        .errors
        .into_iter()
        .map(|e| e.code)
        .find(|c| !c.is_empty())
}

/// A header's value as text.
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Whether `registry` (`host[:port]`) is a loopback address, reached over plain HTTP as
/// Docker does.
pub fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        registry.rsplit_once(':').map_or(registry, |(h, _)| h)
    };
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_plain_http() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("127.1.2.3"));
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("docker.io"));
        assert!(!is_loopback("ghcr.io"));
        assert!(!is_loopback("10.0.0.1:5000"));
    }
}
