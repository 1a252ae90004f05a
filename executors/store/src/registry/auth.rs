//! Registry credentials from the docker config, as the docker CLI finds them:
//! `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`; `credHelpers` for the host,
//! else `credsStore`, else the `auths` entry. Helpers are run as `docker-credential-NAME get`
//! with the server on stdin. Secrets never reach `Debug` output, logs or errors.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use url::form_urlencoded;

use super::error::RegistryError;

/// How long a credential helper may take.
const HELPER_TIMEOUT: Duration = Duration::from_secs(30);

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A user name and password (or personal access token).
    Basic {
        /// The account name, sent with the password as HTTP Basic credentials.
        username: String,
        /// The password or token, sent only to the registry or its token realm.
        password: String,
    },
    /// An OAuth2 refresh token (`identitytoken`), exchanged at the token realm.
    IdentityToken {
        /// The user name the docker config lists with the token; empty when a credential helper
        /// gave it (`<token>`).
        username: String,
        /// The refresh token, sent only to the token realm.
        token: String,
    },
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Basic { .. } => f.write_str("Credentials::Basic(<redacted>)"),
            Credentials::IdentityToken { .. } => {
                f.write_str("Credentials::IdentityToken(<redacted>)")
            }
        }
    }
}

#[derive(Default, Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

#[derive(Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// The docker config file: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
fn config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|home| PathBuf::from(home).join(".docker").join("config.json"))
}

/// The server name the docker CLI uses for `registry` in its config and helpers.
fn server_name(registry: &str) -> &str {
    if registry == "docker.io" {
        "https://index.docker.io/v1/"
    } else {
        registry
    }
}

/// The host of a config key, which may be written `host`, `https://host` or
/// `https://host/v1/`.
fn key_host(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key);
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io",
        host => host,
    }
}

/// The credentials the docker config holds for `registry` (as written in references:
/// `docker.io`, `127.0.0.1:5000`), if any.
pub async fn credentials(registry: &str) -> Result<Option<Credentials>, RegistryError> {
    let Some(path) = config_path() else {
        return Ok(None);
    };
    let bytes = match tokio::fs::read(&path).await {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(RegistryError::DockerConfig {
                path,
                source: Box::new(e),
            });
        }
    };
    let config: DockerConfig =
        serde_json::from_slice(&bytes).map_err(|e| RegistryError::DockerConfig {
            path: path.clone(),
            source: Box::new(e),
        })?;
    let helper = config
        .cred_helpers
        .iter()
        .find(|(key, _)| key_host(key) == registry)
        .map(|(_, helper)| helper.clone())
        .or(config.creds_store.clone())
        .filter(|h| !h.is_empty());
    if let Some(helper) = helper
        && let Some(credentials) = run_helper(&helper, registry).await?
    {
        return Ok(Some(credentials));
    }
    let Some(entry) = config
        .auths
        .iter()
        .find(|(key, _)| key_host(key) == registry)
        .map(|(_, entry)| entry)
    else {
        return Ok(None);
    };
    let (mut username, mut password) = (entry.username.clone(), entry.password.clone());
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
            .ok_or_else(|| RegistryError::DockerConfig {
                path: path.clone(),
                source: format!(
                    "the `auth` entry for `{registry}` is not base64 of `user:password`"
                )
                .into(),
            })?;
        if let Some((user, pass)) = decoded.split_once(':') {
            username = Some(user.to_owned());
            password = Some(pass.to_owned());
        }
    }
    if let Some(token) = entry.identitytoken.clone().filter(|t| !t.is_empty()) {
        return Ok(Some(Credentials::IdentityToken {
            username: username.unwrap_or_default(),
            token,
        }));
    }
    Ok(match (username, password) {
        (Some(username), Some(password)) if !username.is_empty() => {
            Some(Credentials::Basic { username, password })
        }
        _ => None,
    })
}

/// Asks `docker-credential-HELPER get` for `registry`'s credentials; `None` when it has none.
async fn run_helper(helper: &str, registry: &str) -> Result<Option<Credentials>, RegistryError> {
    let failed = |source| RegistryError::CredentialHelper {
        helper: helper.to_owned(),
        registry: registry.to_owned(),
        source,
    };
    let child = tokio::process::Command::new(format!("docker-credential-{helper}"))
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        // A config naming a helper that is not installed (Docker Desktop's `desktop` on a
        // machine without it): carry on without, so public models still pull.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(failed(Some(e))),
    };
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(server_name(registry).as_bytes())
            .await
            .map_err(|e| failed(Some(e)))?;
    }
    let output = tokio::time::timeout(HELPER_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| failed(Some(std::io::ErrorKind::TimedOut.into())))?
        .map_err(|e| failed(Some(e)))?;
    if !output.status.success() {
        // Helpers say "credentials not found in native keychain" on stdout when they have
        // nothing for this server.
        let text = String::from_utf8_lossy(&output.stdout).to_lowercase()
            + &String::from_utf8_lossy(&output.stderr).to_lowercase();
        if text.contains("not found") {
            return Ok(None);
        }
        return Err(failed(None));
    }
    let answer: HelperAnswer = serde_json::from_slice(&output.stdout).map_err(|_| failed(None))?;
    if answer.secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(if answer.username == "<token>" {
        Credentials::IdentityToken {
            username: String::new(),
            token: answer.secret,
        }
    } else {
        Credentials::Basic {
            username: answer.username,
            password: answer.secret,
        }
    }))
}

/// A `WWW-Authenticate` challenge.
#[derive(Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses `Basic realm="x"` or `Bearer realm="https://auth",service="s",scope="a,b"`.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(rest);
    Some(Challenge::Bearer {
        realm: params.get("realm")?.clone(),
        service: params.get("service").cloned(),
        scope: params.get("scope").cloned(),
    })
}

/// `key="value", key=value` pairs; quoted values may hold commas.
fn parse_params(text: &str) -> BTreeMap<String, String> {
    let mut params = BTreeMap::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, next)) = chars.next() {
                            value.push(next);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        params.insert(key, value);
        rest = after.trim_start().trim_start_matches(',').trim_start();
    }
    params
}

/// The parameters of a token request (Docker's token authentication), form-encoded:
/// `service` when the challenge names one, and `scope`. With a refresh token they are the
/// body of an OAuth2 refresh-token grant, which always carries `service`, if empty.
pub fn token_params(service: Option<&str>, scope: &str, refresh_token: Option<&str>) -> String {
    let mut params = form_urlencoded::Serializer::new(String::new());
    if let Some(token) = refresh_token {
        params
            .append_pair("grant_type", "refresh_token")
            .append_pair("client_id", "aistack")
            .append_pair("refresh_token", token);
    }
    if service.is_some() || refresh_token.is_some() {
        params.append_pair("service", service.unwrap_or_default());
    }
    params.append_pair("scope", scope).finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        assert_eq!(
            parse_challenge(r#"Basic realm="registry""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:ai/smollm2:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:ai/smollm2:pull,push".into()),
            })
        );
        assert_eq!(parse_challenge("Negotiate"), None);
    }

    #[test]
    fn config_keys_match_hosts() {
        assert_eq!(key_host("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(key_host("127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(key_host("http://127.0.0.1:5000/v2/"), "127.0.0.1:5000");
    }

    #[test]
    fn debug_redacts() {
        let c = Credentials::Basic {
            username: "alice".into(),
            password: "hunter2".into(),
        };
        let text = format!("{c:?}");
        assert!(
            !text.contains("hunter2") && !text.contains("alice"),
            "{text}"
        );
    }

    #[test]
    fn token_params_are_form_encoded() {
        assert_eq!(
            token_params(Some("registry.docker.io"), "repository:a/b:pull,push", None),
            "service=registry.docker.io&scope=repository%3Aa%2Fb%3Apull%2Cpush"
        );
        assert_eq!(
            token_params(None, "repository:a/b:pull", None),
            "scope=repository%3Aa%2Fb%3Apull"
        );
        assert_eq!(
            token_params(None, "repository:a/b:pull", Some("r+t/s=")),
            "grant_type=refresh_token&client_id=aistack&refresh_token=r%2Bt%2Fs%3D&service=&scope=repository%3Aa%2Fb%3Apull"
        );
    }
}
