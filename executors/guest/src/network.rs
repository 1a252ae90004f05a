//! The sandbox's one way out: a listener on `127.0.0.1:PROXY_PORT` inside whose every
//! connection is spliced to the host's policy proxy through the control directory's
//! `proxy.sock`, and the project CA installed where clients look for roots.

use std::fs;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aistack_sandbox::setup::{CA_BUNDLE, CA_FILE, Network, PROXY_PORT, SYSTEM_BUNDLE};
use aistack_sandbox::sys;

/// The host's end of the proxy channel.
#[derive(Debug)]
pub enum HostProxy {
    /// `proxy.sock` of the control directory (a namespace sandbox).
    Socket(PathBuf),
    /// A vsock port of the host (a microVM).
    Vsock(u32),
}

impl HostProxy {
    fn connect(&self) -> io::Result<UnixStream> {
        match self {
            HostProxy::Socket(path) => UnixStream::connect(path),
            HostProxy::Vsock(port) => sys::vsock_connect(sys::VSOCK_HOST_CID, *port),
        }
    }
}

/// Installs the CA and serves the proxy port, each connection spliced to the host's proxy.
pub fn start(network: &Network, host: HostProxy) -> io::Result<()> {
    install_ca(Path::new("/"), &network.ca_pem)?;
    let listener = TcpListener::bind(("127.0.0.1", PROXY_PORT))?;
    let host = Arc::new(host);
    crate::thread(move || {
        crate::accept_each(listener.incoming(), |client| {
            let host = Arc::clone(&host);
            if let Err(e) = crate::thread(move || forward(client, &host)) {
                eprintln!("aistack-guest: dropping a proxy connection: {e}");
            }
        });
    })?;
    Ok(())
}

fn forward(client: TcpStream, proxy: &HostProxy) {
    let host = match proxy.connect() {
        Ok(host) => host,
        Err(e) => {
            eprintln!("aistack-guest: the host proxy at {proxy:?}: {e}");
            return;
        }
    };
    let end = match proxy {
        HostProxy::Socket(_) => crate::HostEnd::Half,
        HostProxy::Vsock(_) => crate::HostEnd::Open,
    };
    if let Err(e) = crate::splice(host, client, end) {
        eprintln!("aistack-guest: a proxy connection: {e}");
    }
}

/// Writes the CA alone, a bundle of the template's roots plus it, and appends it to the
/// template's own bundle when there is one (all in the sandbox's layer).
fn install_ca(root: &Path, pem: &str) -> io::Result<()> {
    let inside = |path: &str| root.join(path.trim_start_matches('/'));
    let ca = inside(CA_FILE);
    fs::create_dir_all(ca.parent().expect("a parent"))?;
    fs::write(&ca, pem)?;
    let system = fs::read_to_string(inside(SYSTEM_BUNDLE)).unwrap_or_default();
    let has_ca = system.contains(pem.trim());
    let mut bundle = system.clone();
    if !has_ca {
        if !bundle.is_empty() && !bundle.ends_with('\n') {
            bundle.push('\n');
        }
        bundle.push_str(pem);
    }
    let bundle_path = inside(CA_BUNDLE);
    fs::create_dir_all(bundle_path.parent().expect("a parent"))?;
    fs::write(bundle_path, &bundle)?;
    if !system.is_empty() && !has_ca {
        fs::write(inside(SYSTEM_BUNDLE), bundle)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_joins_the_template_roots_once() {
        let dir = tempfile::tempdir().unwrap();
        let system = dir.path().join(SYSTEM_BUNDLE.trim_start_matches('/'));
        fs::create_dir_all(system.parent().unwrap()).unwrap();
        fs::write(&system, "ROOTS\n").unwrap();
        install_ca(dir.path(), "CA\n").unwrap();
        install_ca(dir.path(), "CA\n").unwrap();
        assert_eq!(fs::read_to_string(&system).unwrap(), "ROOTS\nCA\n");
        let bundle = dir.path().join(CA_BUNDLE.trim_start_matches('/'));
        assert_eq!(fs::read_to_string(bundle).unwrap(), "ROOTS\nCA\n");
        let alone = dir.path().join(CA_FILE.trim_start_matches('/'));
        assert_eq!(fs::read_to_string(alone).unwrap(), "CA\n");
    }
}
