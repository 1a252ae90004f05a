//! The per-project certificate authority that lets the proxy intercept HTTPS (DESIGN §7), and
//! the TLS client configuration for dialling upstreams.
//!
//! Credentials are injected into requests, so the proxy must see them in the clear: for a
//! host that gets credentials it terminates the client's TLS with a leaf certificate it signs
//! itself, and opens its own TLS connection upstream. Sandboxes trust `ca.pem`; the key never
//! leaves the project's directory. The CA outlives restarts, since every sandbox already
//! trusts it; a damaged pair is reported, never silently replaced, because a new CA breaks
//! every sandbox that trusted the old one.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, Permissions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The public certificate's file name in the project directory.
const CERT_FILE: &str = "ca.pem";
/// The private key's file name in the project directory.
const KEY_FILE: &str = "ca-key.pem";
/// Past this many hosts the cache is dropped whole: simpler than LRU, and signing a leaf again
/// is cheap.
const CACHE_LIMIT: usize = 1024;
const DAY: Duration = Duration::from_secs(24 * 60 * 60);
/// How long a leaf is valid; short, since it is only ever held in memory.
const LEAF_VALIDITY: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// A cached leaf older than this is signed again, so a daemon that runs for months never
/// presents an expired one.
const LEAF_REUSE: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// A failure to load, create or use the certificate authority, or to trust upstreams.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    /// The project directory could not be created.
    #[error("Cannot create the directory `{}`", path.display())]
    CreateDir {
        /// The directory that holds, or is to hold, `ca.pem` and `ca-key.pem`.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// A certificate or key file could not be read.
    #[error("Cannot read `{}`", path.display())]
    Read {
        /// The file: `ca.pem`, `ca-key.pem` or the extra CA file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// A certificate or key file could not be written.
    #[error("Cannot write `{}`", path.display())]
    Write {
        /// The file being written: `ca.pem` or `ca-key.pem`.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// One of `ca.pem` and `ca-key.pem` exists without the other.
    #[error("`{}` is missing, but `{}` exists", missing.display(), present.display())]
    Missing {
        /// The file that exists.
        present: PathBuf,
        /// The file that does not.
        missing: PathBuf,
    },
    /// `ca.pem` holds no PEM certificate.
    #[error("`{}` holds no PEM certificate", path.display())]
    CertPem {
        /// The `ca.pem` file.
        path: PathBuf,
        /// What the PEM parser said.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// `ca.pem` is PEM but not a certificate rcgen can issue from.
    #[error("`{}` is not a valid CA certificate", path.display())]
    CertInvalid {
        /// The `ca.pem` file.
        path: PathBuf,
        /// What rcgen said.
        #[source]
        source: rcgen::Error,
    },
    /// `ca-key.pem` does not parse as a private key.
    #[error("`{}` is not a PEM private key", path.display())]
    KeyPem {
        /// The `ca-key.pem` file.
        path: PathBuf,
        /// What rcgen said.
        #[source]
        source: rcgen::Error,
    },
    /// `ca-key.pem` is not a private key we can sign with.
    #[error("`{}` is not a usable private key", path.display())]
    KeyInvalid {
        /// The `ca-key.pem` file.
        path: PathBuf,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
    /// `ca-key.pem` is a key, but not the one `ca.pem` certifies.
    #[error("`{}` is not the private key of `{}`", key.display(), cert.display())]
    KeyMismatch {
        /// The `ca.pem` file.
        cert: PathBuf,
        /// The `ca-key.pem` file.
        key: PathBuf,
    },
    /// A new CA could not be generated.
    #[error("Cannot generate the certificate authority in `{}`", dir.display())]
    GenerateCa {
        /// The directory the CA was to be written to.
        dir: PathBuf,
        /// What rcgen said.
        #[source]
        source: rcgen::Error,
    },
    /// A host to intercept is neither a DNS name nor an IP address.
    #[error("`{host}` is not a DNS name or an IP address")]
    InvalidHost {
        /// The host as given (an IPv6 address may keep its brackets).
        host: String,
        /// Why it is not a DNS name.
        #[source]
        source: rustls::pki_types::InvalidDnsNameError,
    },
    /// A leaf certificate for a host could not be generated.
    #[error("Cannot generate a certificate for `{host}`")]
    GenerateLeaf {
        /// The host as given.
        host: String,
        /// What rcgen said.
        #[source]
        source: rcgen::Error,
    },
    /// rustls refused a configuration we built.
    #[error("Cannot build the TLS configuration for `{what}`")]
    Tls {
        /// What the configuration was for: the host a leaf was signed for, or `upstreams`.
        what: String,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
    /// No root certificate to verify upstreams with.
    #[error("No trusted root certificates: none on the system and no extra CA file")]
    NoRoots,
    /// The extra CA file does not parse as PEM certificates.
    #[error("`{}` is not a PEM certificate file", path.display())]
    ExtraCaPem {
        /// The extra CA file (the daemon's `AISTACK_EXTRA_CA_CERTS`).
        path: PathBuf,
        /// What the PEM parser said.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The extra CA file holds no certificate at all.
    #[error("`{}` holds no PEM certificate", path.display())]
    ExtraCaEmpty {
        /// The extra CA file.
        path: PathBuf,
    },
    /// A certificate in the extra CA file cannot be a trust anchor.
    #[error("A certificate in `{}` cannot be trusted as a root", path.display())]
    ExtraCaCert {
        /// The extra CA file.
        path: PathBuf,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
}

impl AuthorityError {
    /// The fix for this error, for a `help:` line.
    pub fn help(&self) -> Option<String> {
        Some(match self {
            AuthorityError::CreateDir { path, .. } | AuthorityError::Write { path, .. } => {
                format!("Check that `{}` is writable", parent(path).display())
            }
            AuthorityError::Read { path, .. } => {
                format!("Check that `{}` is readable", path.display())
            }
            AuthorityError::Missing { present, missing } => format!(
                "Restore `{}`, or {}",
                missing.display(),
                start_over(parent(present))
            ),
            AuthorityError::CertPem { path, .. }
            | AuthorityError::CertInvalid { path, .. }
            | AuthorityError::KeyPem { path, .. }
            | AuthorityError::KeyInvalid { path, .. } => capitalise(&start_over(parent(path))),
            AuthorityError::KeyMismatch { cert, .. } => capitalise(&start_over(parent(cert))),
            AuthorityError::GenerateCa { .. }
            | AuthorityError::GenerateLeaf { .. }
            | AuthorityError::Tls { .. } => return None,
            AuthorityError::InvalidHost { .. } => {
                "Name the host by a DNS name (letters, digits, `-` and `.`) or an IP address"
                    .to_owned()
            }
            AuthorityError::NoRoots => "Install the system's CA certificates (`ca-certificates`), \
                 or name a PEM file of roots in `AISTACK_EXTRA_CA_CERTS`"
                .to_owned(),
            AuthorityError::ExtraCaPem { path, .. }
            | AuthorityError::ExtraCaEmpty { path }
            | AuthorityError::ExtraCaCert { path, .. } => format!(
                "Give `AISTACK_EXTRA_CA_CERTS` a file of PEM `CERTIFICATE` blocks instead of `{}`",
                path.display()
            ),
        })
    }
}

/// The way out of a damaged pair. Only a person may choose it: sandboxes trust the old CA.
fn start_over(dir: &Path) -> String {
    format!(
        "remove `{}` and `{}` to create a new authority; sandboxes must then trust the new `{CERT_FILE}`",
        dir.join(CERT_FILE).display(),
        dir.join(KEY_FILE).display()
    )
}

fn capitalise(s: &str) -> String {
    let mut chars = s.chars();
    chars.next().map_or_else(String::new, |c| {
        c.to_uppercase().chain(chars).collect::<String>()
    })
}

fn parent(path: &Path) -> &Path {
    path.parent().unwrap_or(path)
}

/// A project's certificate authority: signs a leaf for each intercepted host, on demand.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    cert_pem: String,
    cert_path: PathBuf,
    provider: Arc<CryptoProvider>,
    cache: Mutex<HashMap<String, (Instant, Arc<ServerConfig>)>>,
}

impl fmt::Debug for Authority {
    // The issuer's key must never reach a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authority")
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// Loads the CA kept in `dir` (`ca.pem` and `ca-key.pem`), or creates one when neither file
    /// exists. Anything else (one file alone, a file that does not parse, a key that is not
    /// the certificate's) is an error and nothing is overwritten.
    pub fn load_or_create(dir: &Path) -> Result<Authority, AuthorityError> {
        fs::create_dir_all(dir).map_err(|source| AuthorityError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        let exists = |path: &Path| {
            path.try_exists().map_err(|source| AuthorityError::Read {
                path: path.to_owned(),
                source,
            })
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (cert_pem, ca_der, issuer) = match (exists(&cert_path)?, exists(&key_path)?) {
            (true, true) => load(&cert_path, &key_path, &provider)?,
            (false, false) => create(dir, &cert_path, &key_path)?,
            (true, false) => {
                return Err(AuthorityError::Missing {
                    present: cert_path,
                    missing: key_path,
                });
            }
            (false, true) => {
                return Err(AuthorityError::Missing {
                    present: key_path,
                    missing: cert_path,
                });
            }
        };
        Ok(Authority {
            issuer,
            ca_der,
            cert_pem,
            cert_path,
            provider,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The CA certificate in PEM, for sandboxes and host processes to trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Where the CA certificate is (`ca.pem`), for `SSL_CERT_FILE`-style variables.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// A TLS server configuration that presents a leaf for `host` (a DNS name or an IP
    /// address, bracketed or not) signed by this CA, speaking only HTTP/1.1.
    pub fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, AuthorityError> {
        if let Some((signed, config)) = self.cache().get(host)
            && signed.elapsed() < LEAF_REUSE
        {
            return Ok(config.clone());
        }
        // Signed outside the lock so one slow host does not stall every other connection;
        // two racing for the same host both sign, and the last one is kept: either is fine.
        let config = self.sign_leaf(host)?;
        let mut cache = self.cache();
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(host.to_owned(), (Instant::now(), config.clone()));
        Ok(config)
    }

    fn cache(&self) -> MutexGuard<'_, HashMap<String, (Instant, Arc<ServerConfig>)>> {
        // A panic elsewhere while holding the lock cannot leave the map half-updated.
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn sign_leaf(&self, host: &str) -> Result<Arc<ServerConfig>, AuthorityError> {
        let leaf_error = |source| AuthorityError::GenerateLeaf {
            host: host.to_owned(),
            source,
        };
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let san = match bare.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => {
                // rcgen takes any IA5 string; a name no client would match is better refused
                // here, with the host in the message, than failing every handshake.
                rustls::pki_types::DnsName::try_from(bare).map_err(|source| {
                    AuthorityError::InvalidHost {
                        host: host.to_owned(),
                        source,
                    }
                })?;
                SanType::DnsName(bare.try_into().map_err(leaf_error)?)
            }
        };
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![san];
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, bare);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, DAY, LEAF_VALIDITY);
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(leaf_error)?;
        let leaf = params.signed_by(&key, &self.issuer).map_err(leaf_error)?;
        let tls_error = |source| AuthorityError::Tls {
            what: host.to_owned(),
            source,
        };
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(tls_error)?
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone(), self.ca_der.clone()],
                PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .map_err(tls_error)?;
        // The proxy relays one HTTP/1.1 exchange at a time to inject headers; h2 would need
        // its own framing on both sides.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// A TLS client configuration for dialling upstreams: the system's roots, plus every
/// certificate in `extra_ca` (a PEM file, the daemon's `AISTACK_EXTRA_CA_CERTS`), HTTP/1.1.
pub fn upstream_config(extra_ca: Option<&Path>) -> Result<Arc<ClientConfig>, AuthorityError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        // One unreadable bundle or bad certificate should not cut off every upstream.
        tracing::debug!(%error, "skipping system root certificates");
    }
    let (_, ignored) = roots.add_parsable_certificates(native.certs);
    if ignored > 0 {
        tracing::debug!(ignored, "skipped unparsable system root certificates");
    }
    if let Some(path) = extra_ca {
        let bytes = fs::read(path).map_err(|source| AuthorityError::Read {
            path: path.to_owned(),
            source,
        })?;
        let certs = CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| AuthorityError::ExtraCaPem {
                path: path.to_owned(),
                source,
            })?;
        if certs.is_empty() {
            return Err(AuthorityError::ExtraCaEmpty {
                path: path.to_owned(),
            });
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|source| AuthorityError::ExtraCaCert {
                    path: path.to_owned(),
                    source,
                })?;
        }
    }
    if roots.is_empty() {
        return Err(AuthorityError::NoRoots);
    }
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|source| AuthorityError::Tls {
                what: "upstreams".to_owned(),
                source,
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Sets `params` valid from `before` ago to `after` from now. Done in place because rcgen's
/// calendar type comes from `time`, which this crate does not name.
fn set_validity(params: &mut CertificateParams, before: Duration, after: Duration) {
    // A clock before 1970 only yields certificates that fail to verify; nothing to panic on.
    let since_epoch = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let now = rcgen::date_time_ymd(1970, 1, 1) + since_epoch;
    params.not_before = now - before;
    params.not_after = now + after;
}

/// Reads an existing pair and checks that it is one CA: the key must be the certificate's, so
/// leaves it signs verify against the `ca.pem` sandboxes already trust.
fn load(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<(String, CertificateDer<'static>, Issuer<'static, KeyPair>), AuthorityError> {
    let read = |path: &Path| {
        fs::read_to_string(path).map_err(|source| AuthorityError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let cert_pem = read(cert_path)?;
    let key_pem = read(key_path)?;
    let ca_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|source| AuthorityError::CertPem {
            path: cert_path.to_owned(),
            source,
        })?
        .into_owned();
    let key = KeyPair::from_pem(&key_pem).map_err(|source| AuthorityError::KeyPem {
        path: key_path.to_owned(),
        source,
    })?;
    let signing_key = provider
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .map_err(|source| AuthorityError::KeyInvalid {
            path: key_path.to_owned(),
            source,
        })?;
    // Parse with rcgen first, so a certificate it cannot read is reported as such rather than
    // as a mismatch.
    let issuer =
        Issuer::from_ca_cert_der(&ca_der, key).map_err(|source| AuthorityError::CertInvalid {
            path: cert_path.to_owned(),
            source,
        })?;
    if CertifiedKey::new(vec![ca_der.clone()], signing_key)
        .keys_match()
        .is_err()
    {
        return Err(AuthorityError::KeyMismatch {
            cert: cert_path.to_owned(),
            key: key_path.to_owned(),
        });
    }
    Ok((cert_pem, ca_der, issuer))
}

/// Generates a new CA and writes it, key first: a crash between the two leaves a key with
/// no certificate, which the next start reports instead of guessing.
fn create(
    dir: &Path,
    cert_path: &Path,
    key_path: &Path,
) -> Result<(String, CertificateDer<'static>, Issuer<'static, KeyPair>), AuthorityError> {
    let generate_error = |source| AuthorityError::GenerateCa {
        dir: dir.to_owned(),
        source,
    };
    let name = dir
        .file_name()
        .map_or_else(|| "project".into(), |n| n.to_string_lossy());
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("aistack proxy CA ({name})"));
    params
        .distinguished_name
        .push(DnType::OrganizationName, "aistack");
    // Path length 0: the CA signs leaves only, so a leaked leaf key cannot mint certificates.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut params, DAY, 3650 * DAY);
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generate_error)?;
    let cert = params.self_signed(&key).map_err(generate_error)?;
    let cert_pem = cert.pem();
    write_atomic(dir, key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_atomic(dir, cert_path, cert_pem.as_bytes(), 0o644)?;
    Ok((cert_pem, cert.der().clone(), Issuer::new(params, key)))
}

/// Writes `path` whole or not at all, with `mode` from the moment the file exists.
fn write_atomic(dir: &Path, path: &Path, contents: &[u8], mode: u32) -> Result<(), AuthorityError> {
    let write_error = |source| AuthorityError::Write {
        path: path.to_owned(),
        source,
    };
    // tempfile creates with 0600, so the key is never readable by others, even briefly.
    let mut file = tempfile::Builder::new()
        .prefix(".aistack-ca-")
        .suffix(".tmp")
        .permissions(Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(write_error)?;
    // fchmod rather than the create mode: the umask must not make `ca.pem` unreadable to the
    // sandbox user.
    file.as_file()
        .set_permissions(Permissions::from_mode(mode))
        .map_err(write_error)?;
    file.write_all(contents).map_err(write_error)?;
    file.as_file().sync_all().map_err(write_error)?;
    // No clobbering: a file that appeared meanwhile belongs to someone else's CA.
    file.persist_noclobber(path)
        .map_err(|error| write_error(error.error))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(write_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    /// A client that trusts exactly the PEM certificates given.
    fn client_trusting(pem: &str) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let mut config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// Runs a handshake over an in-memory pipe and one byte each way; the client's result.
    async fn handshake(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
        name: &str,
    ) -> Result<Option<Vec<u8>>, io::Error> {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server_side = async move {
            let mut tls = TlsAcceptor::from(server).accept(server_io).await?;
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await?;
            tls.write_all(&byte).await?;
            tls.flush().await?;
            Ok::<_, io::Error>(())
        };
        let name = ServerName::try_from(name.to_owned()).unwrap();
        let client_side = async move {
            let mut tls = TlsConnector::from(client).connect(name, client_io).await?;
            tls.write_all(b"x").await?;
            tls.flush().await?;
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await?;
            assert_eq!(&byte, b"x");
            Ok::<_, io::Error>(tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec))
        };
        let (_, client_result) = tokio::join!(server_side, client_side);
        client_result
    }

    /// The rustls verdict inside a failed handshake, in `Debug` form.
    fn tls_failure(result: Result<Option<Vec<u8>>, io::Error>) -> String {
        let error = result.expect_err("the handshake should fail");
        let inner = error
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>());
        format!("{inner:?}")
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn creates_both_files_with_their_modes() {
        let dir = tempfile::tempdir().unwrap();
        let project = dir.path().join("projects").join("demo");
        let authority = Authority::load_or_create(&project).unwrap();
        assert_eq!(authority.cert_path(), project.join("ca.pem"));
        assert_eq!(mode(&project.join("ca.pem")), 0o644);
        assert_eq!(mode(&project.join("ca-key.pem")), 0o600);
        assert_eq!(
            fs::read_to_string(project.join("ca.pem")).unwrap(),
            authority.cert_pem()
        );
        assert!(
            authority
                .cert_pem()
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
        // Nothing but the pair is left behind.
        assert_eq!(fs::read_dir(&project).unwrap().count(), 2);
    }

    #[tokio::test]
    async fn a_reloaded_authority_is_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let first = Authority::load_or_create(dir.path()).unwrap();
        let pem = first.cert_pem().to_owned();
        drop(first);
        let second = Authority::load_or_create(dir.path()).unwrap();
        assert_eq!(second.cert_pem(), pem);
        // The reloaded key signs leaves the original certificate verifies.
        let alpn = handshake(
            second.server_config("example.test").unwrap(),
            client_trusting(&pem),
            "example.test",
        )
        .await
        .unwrap();
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    }

    #[tokio::test]
    async fn a_leaf_verifies_for_its_host_only() {
        let dir = tempfile::tempdir().unwrap();
        let authority = Authority::load_or_create(dir.path()).unwrap();
        let server = authority.server_config("example.test").unwrap();
        let client = client_trusting(authority.cert_pem());
        handshake(server.clone(), client.clone(), "example.test")
            .await
            .unwrap();
        let failure = tls_failure(handshake(server, client.clone(), "other.test").await);
        assert!(failure.contains("NotValidForName"), "{failure}");
        // A client that does not trust this CA refuses it.
        let stranger = Authority::load_or_create(&dir.path().join("other")).unwrap();
        let failure = tls_failure(
            handshake(
                authority.server_config("example.test").unwrap(),
                client_trusting(stranger.cert_pem()),
                "example.test",
            )
            .await,
        );
        assert!(failure.contains("UnknownIssuer"), "{failure}");
    }

    #[tokio::test]
    async fn an_ip_host_gets_an_ip_san() {
        let dir = tempfile::tempdir().unwrap();
        let authority = Authority::load_or_create(dir.path()).unwrap();
        let client = client_trusting(authority.cert_pem());
        for (host, name) in [("192.0.2.7", "192.0.2.7"), ("[2001:db8::1]", "2001:db8::1")] {
            let server = authority.server_config(host).unwrap();
            handshake(server, client.clone(), name).await.unwrap();
        }
    }

    #[test]
    fn server_configs_are_cached_per_host() {
        let dir = tempfile::tempdir().unwrap();
        let authority = Authority::load_or_create(dir.path()).unwrap();
        let a = authority.server_config("a.test").unwrap();
        assert!(Arc::ptr_eq(&a, &authority.server_config("a.test").unwrap()));
        assert!(!Arc::ptr_eq(
            &a,
            &authority.server_config("b.test").unwrap()
        ));
        assert!(matches!(
            authority.server_config("not a host"),
            Err(AuthorityError::InvalidHost { .. })
        ));
    }

    #[test]
    fn a_missing_key_is_an_error_and_keeps_the_cert() {
        let dir = tempfile::tempdir().unwrap();
        let pem = Authority::load_or_create(dir.path())
            .unwrap()
            .cert_pem()
            .to_owned();
        fs::remove_file(dir.path().join("ca-key.pem")).unwrap();
        let error = Authority::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(error, AuthorityError::Missing { .. }), "{error:?}");
        assert!(error.to_string().contains("ca-key.pem"), "{error}");
        let help = error.help().unwrap();
        assert!(help.contains("ca.pem") && help.contains("trust"), "{help}");
        assert_eq!(fs::read_to_string(dir.path().join("ca.pem")).unwrap(), pem);
        assert!(!dir.path().join("ca-key.pem").exists());
    }

    #[test]
    fn a_missing_cert_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        Authority::load_or_create(dir.path()).unwrap();
        fs::remove_file(dir.path().join("ca.pem")).unwrap();
        let error = Authority::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(error, AuthorityError::Missing { .. }), "{error:?}");
        assert!(!dir.path().join("ca.pem").exists());
    }

    #[test]
    fn a_garbage_key_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        Authority::load_or_create(dir.path()).unwrap();
        fs::write(dir.path().join("ca-key.pem"), "not a key\n").unwrap();
        let error = Authority::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(error, AuthorityError::KeyPem { .. }), "{error:?}");
        assert!(error.to_string().contains("ca-key.pem"), "{error}");
        assert!(error.help().unwrap().starts_with("Remove `"));
        assert_eq!(
            fs::read_to_string(dir.path().join("ca-key.pem")).unwrap(),
            "not a key\n"
        );
    }

    #[test]
    fn a_garbage_cert_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        Authority::load_or_create(dir.path()).unwrap();
        fs::write(dir.path().join("ca.pem"), "junk").unwrap();
        let error = Authority::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(error, AuthorityError::CertPem { .. }), "{error:?}");
    }

    #[test]
    fn a_key_from_another_ca_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        Authority::load_or_create(&a).unwrap();
        Authority::load_or_create(&b).unwrap();
        fs::copy(b.join("ca-key.pem"), a.join("ca-key.pem")).unwrap();
        let error = Authority::load_or_create(&a).unwrap_err();
        assert!(
            matches!(error, AuthorityError::KeyMismatch { .. }),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn upstream_config_trusts_the_extra_ca() {
        // A stand-in for a test upstream: its own CA, signing a leaf for `upstream.test`.
        let dir = tempfile::tempdir().unwrap();
        let upstream_ca = Authority::load_or_create(&dir.path().join("upstream")).unwrap();
        let server = upstream_ca.server_config("upstream.test").unwrap();
        let config = upstream_config(Some(upstream_ca.cert_path())).unwrap();
        let alpn = handshake(server.clone(), config, "upstream.test")
            .await
            .unwrap();
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));

        // Without the extra CA the same server is a stranger (or there are no roots at all).
        if let Ok(config) = upstream_config(None) {
            let failure = tls_failure(handshake(server, config, "upstream.test").await);
            assert!(failure.contains("UnknownIssuer"), "{failure}");
        }

        let empty = dir.path().join("empty.pem");
        fs::write(&empty, "").unwrap();
        assert!(matches!(
            upstream_config(Some(&empty)),
            Err(AuthorityError::ExtraCaEmpty { .. })
        ));
        assert!(matches!(
            upstream_config(Some(&dir.path().join("absent.pem"))),
            Err(AuthorityError::Read { .. })
        ));
    }

    #[test]
    fn authority_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Authority>();
    }
}
