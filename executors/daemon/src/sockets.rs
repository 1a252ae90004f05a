//! Unix sockets the daemon serves in a directory a sandbox can write: its control
//! directory, which sandbox root owns and sees at `/run/aistack`.
//!
//! Binding there and then setting the socket's owner and mode by path is a race the
//! sandbox can win: between the two it can put a symbolic link at the path, and `chown`
//! and `chmod` follow it to any host file. So the socket is bound in a fresh directory
//! only the daemon can enter, given its owner and mode there, and renamed into place:
//! `rename` replaces whatever the sandbox left at the path (a link included) instead of
//! following it.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rustix::fs::{AtFlags, CWD, Gid, Uid};

/// Binds a unix socket at `path` owned by `uid`:`gid` with `mode`, race-free while others
/// write `path`'s directory. The parent of that directory must be the daemon's own (the
/// staging directory is made there, so that the rename stays on one file system).
///
/// # Errors
///
/// The staging directory, the socket or the rename fails (a directory planted at `path`,
/// for one).
pub fn bind_owned(
    path: &Path,
    uid: u32,
    gid: u32,
    mode: u32,
) -> io::Result<tokio::net::UnixListener> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("a socket path without a directory"))?;
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::other("a socket path without a name"))?;
    let private = dir.parent().unwrap_or(dir);
    // Made with mode 0700 by the daemon: nobody else can reach into it.
    let staging = tempfile::Builder::new()
        .prefix(".socket-")
        .tempdir_in(private)?;
    let staged = staging.path().join(file_name);
    let listener = std::os::unix::net::UnixListener::bind(&staged)?;
    // No link can be there, but nothing is lost by saying so.
    rustix::fs::chownat(
        CWD,
        &staged,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )?;
    fs::set_permissions(&staged, fs::Permissions::from_mode(mode))?;
    fs::rename(&staged, path)?;
    listener.set_nonblocking(true)?;
    tokio::net::UnixListener::from_std(listener)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, symlink};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    /// Root can give files away; elsewhere the test keeps the daemon's own ids.
    fn ids() -> (u32, u32) {
        if rustix::process::geteuid().is_root() {
            (2_000_000_000, 2_000_000_000)
        } else {
            let uid = rustix::process::geteuid().as_raw();
            (uid, rustix::process::getegid().as_raw())
        }
    }

    /// A control directory as a sandbox has it (writable by others), under a home.
    fn control() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
        let home = tempfile::tempdir().unwrap();
        let control = home.path().join("sandbox-p-box");
        fs::create_dir(&control).unwrap();
        fs::set_permissions(&control, fs::Permissions::from_mode(0o777)).unwrap();
        let target = home.path().join("host-file");
        fs::write(&target, "host\n").unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o644)).unwrap();
        (home, control, target)
    }

    #[tokio::test]
    async fn a_link_planted_at_the_path_is_replaced_not_followed() {
        let (_home, control, target) = control();
        let path = control.join("proxy.sock");
        symlink(&target, &path).unwrap();
        let before = fs::metadata(&target).unwrap();
        let (uid, gid) = ids();
        let _listener = bind_owned(&path, uid, gid, 0o600).unwrap();
        let socket = fs::symlink_metadata(&path).unwrap();
        assert!(socket.file_type().is_socket(), "the link was replaced");
        assert_eq!((socket.uid(), socket.gid()), (uid, gid));
        assert_eq!(socket.mode() & 0o777, 0o600);
        let after = fs::metadata(&target).unwrap();
        assert_eq!(
            (after.uid(), after.gid(), after.mode()),
            (before.uid(), before.gid(), before.mode()),
            "the host file is untouched"
        );
        assert_eq!(fs::read_to_string(&target).unwrap(), "host\n");
        assert_eq!(
            fs::read_dir(control.parent().unwrap()).unwrap().count(),
            2,
            "no staging left"
        );
        std::os::unix::net::UnixStream::connect(&path).expect("the socket serves at its path");
    }

    /// A sandbox that keeps replacing the socket with a link while the daemon binds it, as
    /// fast as it can, never gets a host file's owner or mode changed.
    #[tokio::test]
    async fn a_racing_link_never_redirects_the_owner_or_mode() {
        let (_home, control, target) = control();
        let path = control.join("proxy.sock");
        let before = fs::metadata(&target).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let racer = std::thread::spawn({
            let (path, target, stop) = (path.clone(), target.clone(), Arc::clone(&stop));
            move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = fs::remove_file(&path);
                    let _ = symlink(&target, &path);
                }
            }
        });
        let (uid, gid) = ids();
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut binds = 0;
        while Instant::now() < deadline && binds < 2000 {
            let _ = bind_owned(&path, uid, gid, 0o600);
            binds += 1;
        }
        stop.store(true, Ordering::Relaxed);
        racer.join().unwrap();
        let after = fs::metadata(&target).unwrap();
        assert_eq!(
            (after.uid(), after.gid(), after.mode()),
            (before.uid(), before.gid(), before.mode()),
            "after {binds} binds"
        );
    }
}
