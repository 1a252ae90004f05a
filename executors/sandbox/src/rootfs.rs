//! Template root filesystems on disk: a directory tree copied in with its owners moved
//! into the sandbox id range, so that sandbox root owns what image root owned.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown, symlink};
use std::path::Path;

use crate::idmap::IdRange;
use crate::setup::PATH;

/// Whether a root filesystem has `program` on the sandbox's `PATH`. A symbolic link counts
/// as it is (npm links its commands, often by absolute path, which means the sandbox's
/// root, not the host's).
#[must_use]
pub fn has_program(rootfs: &Path, program: &str) -> bool {
    PATH.split(':').any(|dir| {
        let path = rootfs.join(dir.trim_start_matches('/')).join(program);
        path.symlink_metadata().is_ok()
    })
}

/// Copies the tree at `source` to `dest` (which must not exist), shifting every owner by
/// `range` (an owner outside the sandbox's ids becomes sandbox root). Special files
/// (devices, sockets, fifos) are left out: every sandbox gets its own `/dev`. The copy
/// is made beside `dest` and renamed into place, so `dest` is whole or absent.
pub fn import(source: &Path, dest: &Path, range: IdRange) -> io::Result<()> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent)?;
    let staging = tempdir_in(parent)?;
    let tree = staging.join("rootfs");
    copy_tree(source, &tree, range)?;
    fs::rename(&tree, dest)?;
    fs::remove_dir(&staging)?;
    Ok(())
}

/// Gives the range's agent every uid and gid of `tree` outside `range` (the tree itself
/// included; links are not followed). Changing an owner clears set-uid and set-gid bits.
pub fn claim(tree: &Path, range: IdRange) -> io::Result<()> {
    let meta = match fs::symlink_metadata(tree) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let inside = |id: u32| {
        id.checked_sub(range.base)
            .and_then(|id| range.host_id(id))
            .is_some()
    };
    let uid = (!inside(meta.uid())).then(|| range.agent());
    let gid = (!inside(meta.gid())).then(|| range.agent());
    if uid.is_some() || gid.is_some() {
        lchown(tree, uid, gid)?;
    }
    if meta.is_dir() {
        for entry in fs::read_dir(tree)? {
            claim(&entry?.path(), range)?;
        }
    }
    Ok(())
}

fn tempdir_in(parent: &Path) -> io::Result<std::path::PathBuf> {
    for attempt in 0..100u32 {
        let dir = parent.join(format!(".import-{}-{attempt}", std::process::id()));
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // A killed import leaves its staging directory; the next import of the
                // same process id clears it.
                fs::remove_dir_all(&dir)?;
            }
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("no free staging directory"))
}

fn copy_tree(source: &Path, dest: &Path, range: IdRange) -> io::Result<()> {
    let owner = |id: u32| range.host_id(id).unwrap_or(range.base);
    let ids = |meta: &fs::Metadata| (owner(meta.uid()), owner(meta.gid()));
    if copy_entry(source, dest, ids)? && dest.symlink_metadata()?.is_dir() {
        for entry in fs::read_dir(source)? {
            let entry = entry?;
            copy_tree(&entry.path(), &dest.join(entry.file_name()), range)?;
        }
    }
    Ok(())
}

/// Copies one entry, a directory without its contents, owned by what `ids` makes of the
/// source's owners, its mode kept (the daemon is root: a directory's mode does not stop
/// it filling it). Special files are not copied; returns whether it was.
pub(crate) fn copy_entry(
    source: &Path,
    dest: &Path,
    ids: impl Fn(&fs::Metadata) -> (u32, u32),
) -> io::Result<bool> {
    let meta = fs::symlink_metadata(source)?;
    let kind = meta.file_type();
    if kind.is_symlink() {
        symlink(fs::read_link(source)?, dest)?;
    } else if kind.is_dir() {
        fs::create_dir(dest)?;
    } else if kind.is_file() {
        fs::copy(source, dest)?;
    } else {
        return Ok(false);
    }
    let (uid, gid) = ids(&meta);
    lchown(dest, Some(uid), Some(gid))?;
    if !kind.is_symlink() {
        // chown clears set-uid bits; the mode goes back after it.
        fs::set_permissions(dest, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claiming_gives_the_agent_what_lies_outside_the_range() {
        let tree = tempfile::tempdir().unwrap();
        let range = IdRange {
            base: 2_000_000_000,
        };
        let file = tree.path().join("home/agent/notes");
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        fs::write(&file, "x").unwrap();
        let kept = tree.path().join("etc");
        fs::create_dir(&kept).unwrap();
        lchown(&kept, Some(range.base), Some(range.base + 5)).unwrap();
        symlink("/etc/passwd", tree.path().join("link")).unwrap();
        lchown(tree.path().join("link"), Some(0), Some(0)).unwrap();
        lchown(tree.path(), Some(range.base), Some(range.base)).unwrap();
        claim(tree.path(), range).unwrap();
        let owner = |p: &Path| {
            let m = fs::symlink_metadata(p).unwrap();
            (m.uid(), m.gid())
        };
        assert_eq!(owner(&file), (range.agent(), range.agent()));
        assert_eq!(
            owner(&tree.path().join("link")),
            (range.agent(), range.agent())
        );
        assert_eq!(owner(&kept), (range.base, range.base + 5));
        // The link was not followed.
        assert_eq!(owner(Path::new("/etc/passwd")).0, 0);
    }

    #[test]
    fn a_program_is_found_on_the_path_of_the_root_and_a_link_counts() {
        let root = tempfile::tempdir().unwrap();
        assert!(!has_program(root.path(), "codex"));
        std::fs::create_dir_all(root.path().join("usr/local/bin")).unwrap();
        // npm's link points into the sandbox's root, which the host does not have.
        std::os::unix::fs::symlink(
            "/usr/local/lib/node_modules/@openai/codex/bin/codex.js",
            root.path().join("usr/local/bin/codex"),
        )
        .unwrap();
        assert!(has_program(root.path(), "codex"));
        assert!(!has_program(root.path(), "claude"));
    }

    #[test]
    fn a_tree_is_copied_whole_with_owners_shifted() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("src");
        fs::create_dir_all(source.join("bin")).unwrap();
        fs::write(source.join("bin/tool"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(source.join("bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
        symlink("tool", source.join("bin/alias")).unwrap();
        let dest = dir.path().join("templates/abc/rootfs");
        let range = IdRange { base: 3_000_000 };
        import(&source, &dest, range).unwrap();
        let tool = fs::metadata(dest.join("bin/tool")).unwrap();
        assert_eq!(tool.mode() & 0o777, 0o755);
        assert_eq!(
            fs::read_link(dest.join("bin/alias")).unwrap(),
            Path::new("tool")
        );
        if rustix_is_root() {
            assert_eq!(tool.uid(), 3_000_000 + fs::metadata(&source).unwrap().uid());
        }
        let leftovers: Vec<_> = fs::read_dir(dest.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "only the tree itself is left");
    }

    fn rustix_is_root() -> bool {
        fs::metadata("/proc/self")
            .map(|m| m.uid() == 0)
            .unwrap_or(false)
    }
}
