//! The agent's files in template layers.
//!
//! A template stores what the agent owns under the range's agent id
//! ([`IdRange::agent`]): a saved sandbox's home, a `run:` step's `chown agent`. A sandbox
//! with a workspace maps its agent to the workspace's owner instead, so inside, those
//! files would belong to nobody and the agent could not write its own home. Before such
//! a sandbox first starts, [`adopt`] copies them up into its own layer, owned by its
//! agent, as overlayfs would copy them up on a write. Each layer's list of such files is
//! found once and kept beside it (`LAYER.agent-files`): layers never change once built.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::idmap::IdRange;

/// Copies the agent's files of `lower` (top first) that the merged tree shows into
/// `upper`, owned by `owner`; returns how many. Directories above them come along with
/// their owners and modes, so the merged tree looks as it did.
pub fn adopt(
    lower: &[PathBuf],
    upper: &Path,
    range: IdRange,
    owner: (u32, u32),
) -> io::Result<usize> {
    let ids = Ids {
        agent: range.agent(),
        owner,
    };
    let mut adopted = 0;
    for (index, layer) in lower.iter().enumerate() {
        for path in listed(layer, range)? {
            if upper.join(&path).symlink_metadata().is_ok() || hidden(&lower[..index], &path) {
                continue;
            }
            make_parents(lower, upper, &path, &ids)?;
            copy(&layer.join(&path), &upper.join(&path), &ids)?;
            adopted += 1;
        }
    }
    Ok(adopted)
}

/// The agent's files of `layer`, relative to it, parents first. The list kept names the
/// directory it was made from (device, inode and change time, as the directory is never
/// changed once built): a layer built again in its place is listed again.
fn listed(layer: &Path, range: IdRange) -> io::Result<Vec<PathBuf>> {
    let mut name = layer.as_os_str().to_owned();
    name.push(".agent-files");
    let cache = PathBuf::from(name);
    let meta = fs::metadata(layer)?;
    let identity = format!(
        "{}:{}:{}.{}",
        meta.dev(),
        meta.ino(),
        meta.ctime(),
        meta.ctime_nsec()
    );
    if let Ok(bytes) = fs::read(&cache) {
        let mut fields = bytes.split(|b| *b == 0).filter(|p| !p.is_empty());
        if fields.next() == Some(identity.as_bytes()) {
            return Ok(fields
                .map(|p| PathBuf::from(OsStr::from_bytes(p)))
                .collect());
        }
    }
    let mut found = Vec::new();
    walk(layer, Path::new(""), range.agent(), &mut found)?;
    let mut bytes = identity.into_bytes();
    bytes.push(0);
    for path in &found {
        bytes.extend_from_slice(path.as_os_str().as_bytes());
        bytes.push(0);
    }
    // Written whole or not at all: a half list would hide files for ever.
    let staging = cache.with_extension(format!("tmp{}", std::process::id()));
    fs::write(&staging, bytes)?;
    fs::rename(&staging, &cache)?;
    Ok(found)
}

fn walk(dir: &Path, relative: &Path, agent: u32, found: &mut Vec<PathBuf>) -> io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(fs::DirEntry::file_name);
    for entry in entries {
        let meta = entry.metadata()?;
        let path = relative.join(entry.file_name());
        let kind = meta.file_type();
        let own = meta.uid() == agent || meta.gid() == agent;
        if own && (kind.is_dir() || kind.is_file() || kind.is_symlink()) {
            found.push(path.clone());
        }
        if kind.is_dir() {
            walk(&entry.path(), &path, agent, found)?;
        }
    }
    Ok(())
}

/// Whether a layer above hides `path`: it has an entry of that name (the upper one is
/// what the tree shows), or a whiteout, a file or an opaque directory on the way.
fn hidden(above: &[PathBuf], path: &Path) -> bool {
    above.iter().any(|layer| {
        layer.join(path).symlink_metadata().is_ok()
            || path.ancestors().skip(1).any(|dir| {
                if dir.as_os_str().is_empty() {
                    return false;
                }
                match layer.join(dir).symlink_metadata() {
                    Ok(meta) if meta.is_dir() => {
                        crate::sys::xattr(&layer.join(dir), "user.overlay.opaque").as_deref()
                            == Some(b"y")
                    }
                    Ok(_) => true,
                    Err(_) => false,
                }
            })
    })
}

/// Host ids as the sandbox's own layer stores them: the agent's become the owner's.
struct Ids {
    agent: u32,
    owner: (u32, u32),
}

impl Ids {
    fn of(&self, meta: &fs::Metadata) -> (u32, u32) {
        let map = |id: u32, owner: u32| if id == self.agent { owner } else { id };
        (map(meta.uid(), self.owner.0), map(meta.gid(), self.owner.1))
    }
}

/// Makes the directories above `path` in `upper` that it lacks, as the topmost layer
/// that has each one has it.
fn make_parents(lower: &[PathBuf], upper: &Path, path: &Path, ids: &Ids) -> io::Result<()> {
    let mut parents: Vec<&Path> = path.ancestors().skip(1).collect();
    parents.reverse();
    for dir in parents.into_iter().filter(|d| !d.as_os_str().is_empty()) {
        if upper.join(dir).symlink_metadata().is_ok() {
            continue;
        }
        let source = lower
            .iter()
            .map(|layer| layer.join(dir))
            .find(|candidate| candidate.symlink_metadata().is_ok_and(|m| m.is_dir()));
        match source {
            Some(source) => copy(&source, &upper.join(dir), ids)?,
            None => fs::create_dir(upper.join(dir))?,
        }
    }
    Ok(())
}

/// Copies one entry (not a directory's contents), the agent's ids made the owner's.
fn copy(source: &Path, target: &Path, ids: &Ids) -> io::Result<()> {
    crate::rootfs::copy_entry(source, target, |meta| ids.of(meta)).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, lchown, symlink};

    const RANGE: IdRange = IdRange { base: 2_000_000 };

    fn owned(path: &Path, id: u32) {
        lchown(path, Some(id), Some(id)).unwrap();
    }

    #[test]
    fn the_agent_s_visible_files_move_up_owned_by_the_owner() {
        let dir = tempfile::tempdir().unwrap();
        let (top, bottom, upper) = (
            dir.path().join("top"),
            dir.path().join("bottom"),
            dir.path().join("upper"),
        );
        let agent = RANGE.agent();
        for layer in [&top, &bottom, &upper] {
            fs::create_dir(layer).unwrap();
        }
        // The bottom layer: the agent's home with a file, a link and a set-uid script,
        // and a root file beside them.
        let home = bottom.join("home/agent");
        fs::create_dir_all(home.join(".config")).unwrap();
        fs::set_permissions(bottom.join("home"), fs::Permissions::from_mode(0o751)).unwrap();
        owned(&bottom.join("home"), RANGE.base);
        fs::write(home.join(".config/settings"), "bottom").unwrap();
        fs::write(home.join("tool"), "#!/bin/sh").unwrap();
        symlink(".config/settings", home.join("link")).unwrap();
        fs::write(home.join("root-file"), "root").unwrap();
        owned(&home.join("root-file"), RANGE.base);
        for path in [
            &home,
            &home.join(".config"),
            &home.join(".config/settings"),
            &home.join("tool"),
            &home.join("link"),
        ] {
            owned(path, agent);
        }
        fs::set_permissions(home.join("tool"), fs::Permissions::from_mode(0o4755)).unwrap();
        fs::write(bottom.join("hidden"), "x").unwrap();
        owned(&bottom.join("hidden"), agent);
        // The top layer replaces the settings with a root-owned file (its directories
        // copied up as overlayfs copies them) and removes `hidden` with a whiteout (a
        // plain file stands for it here: any entry hides).
        fs::create_dir_all(top.join("home/agent/.config")).unwrap();
        fs::set_permissions(top.join("home"), fs::Permissions::from_mode(0o751)).unwrap();
        owned(&top.join("home"), RANGE.base);
        owned(&top.join("home/agent"), agent);
        owned(&top.join("home/agent/.config"), agent);
        fs::write(top.join("home/agent/.config/settings"), "top").unwrap();
        fs::write(top.join("hidden"), "").unwrap();

        let owner = (4242, 4343);
        let adopted = adopt(&[top.clone(), bottom.clone()], &upper, RANGE, owner).unwrap();
        assert_eq!(adopted, 4, "home, .config, link, tool");
        let meta = |p: &str| upper.join(p).symlink_metadata().unwrap();
        for path in [
            "home/agent",
            "home/agent/.config",
            "home/agent/link",
            "home/agent/tool",
        ] {
            assert_eq!((meta(path).uid(), meta(path).gid()), owner, "{path}");
        }
        assert_eq!(meta("home/agent/tool").mode() & 0o7777, 0o4755);
        assert_eq!(
            fs::read_to_string(upper.join("home/agent/tool")).unwrap(),
            "#!/bin/sh"
        );
        assert!(meta("home/agent/link").is_symlink());
        // The directory above came as it was; what a layer above shows, or the agent
        // does not own, stays below.
        assert_eq!(
            (meta("home").uid(), meta("home").mode() & 0o777),
            (RANGE.base, 0o751)
        );
        for path in [
            "home/agent/.config/settings",
            "home/agent/root-file",
            "hidden",
        ] {
            assert!(upper.join(path).symlink_metadata().is_err(), "{path}");
        }
        // The lists are kept beside the layers, and a second adoption copies nothing.
        assert!(dir.path().join("bottom.agent-files").exists());
        assert_eq!(
            adopt(&[top.clone(), bottom.clone()], &upper, RANGE, owner).unwrap(),
            0
        );
        // A layer built again in the same place is listed again.
        fs::remove_dir_all(&bottom).unwrap();
        fs::create_dir_all(bottom.join("opt")).unwrap();
        fs::write(bottom.join("opt/new"), "new").unwrap();
        owned(&bottom.join("opt/new"), agent);
        assert_eq!(adopt(&[top, bottom], &upper, RANGE, owner).unwrap(), 1);
        assert_eq!(meta("opt/new").uid(), owner.0);
    }
}
