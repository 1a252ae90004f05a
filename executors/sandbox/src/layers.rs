//! Container image layers applied, bottom first, to one template tree: each layer's files
//! replace what the layers below left, and its whiteouts (`.wh.NAME` removes `NAME`,
//! `.wh..wh..opq` empties its directory) remove what they name, as the OCI image spec's
//! changesets say. Owners move into the sandbox id range, as [`crate::rootfs::import`]
//! moves them; device files are left out (every sandbox gets its own `/dev`). Paths
//! resolve as the tree itself would resolve them, never out of it.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::lchown;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::idmap::{AGENT_ID, IdRange, SANDBOX_IDS};

/// The prefix of a whiteout's name.
const WHITEOUT: &str = ".wh.";
/// The name of an opaque-directory whiteout.
const OPAQUE: &str = ".wh..wh..opq";

/// Applies the tar `layer` (gzip-compressed when `gzip`) to the tree at `dest`.
///
/// # Errors
///
/// A layer that is not a tar, an entry whose `..` climbs out of `dest`, a hard link to a
/// file outside it, or a loop of symbolic links, fails the whole layer. Symbolic links on
/// an entry's way are followed inside `dest`, never out of it.
pub fn apply(layer: impl Read, gzip: bool, dest: &Path, range: IdRange) -> io::Result<()> {
    let reader: Box<dyn Read> = if gzip {
        Box::new(flate2::read::GzDecoder::new(layer))
    } else {
        Box::new(layer)
    };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(true);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let Some(path) = relative(&entry.path()?) else {
            return Err(io::Error::other(format!(
                "the layer names `{}`, outside the tree",
                entry.path()?.display()
            )));
        };
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let parent = path.parent().map_or_else(PathBuf::new, Path::to_path_buf);
        match name.as_deref() {
            Some(OPAQUE) => {
                empty_dir(&dest.join(resolve(dest, &parent)?))?;
                continue;
            }
            Some(name) if name.starts_with(WHITEOUT) => {
                let target = inside(dest, &parent.join(&name[WHITEOUT.len()..]))?;
                remove(&target)?;
                continue;
            }
            _ => {}
        }
        let kind = entry.header().entry_type();
        if kind.is_block_special() || kind.is_character_special() || kind.is_fifo() {
            continue;
        }
        let target = inside(dest, &path)?;
        if target == dest {
            continue;
        }
        make_parents(dest, &target, range)?;
        // A file replaces a directory of a lower layer, and the reverse.
        if let Ok(existing) = fs::symlink_metadata(&target)
            && (existing.is_dir() != kind.is_dir())
        {
            remove(&target)?;
        }
        if kind.is_hard_link() {
            let source = (entry.link_name()?.as_deref())
                .and_then(relative)
                .ok_or_else(|| {
                    io::Error::other(format!(
                        "the layer links `{}` to a file outside the tree",
                        path.display()
                    ))
                })?;
            remove(&target)?;
            fs::hard_link(inside(dest, &source)?, &target)?;
        } else {
            entry.unpack(&target)?;
        }
        let owner = |id: u64| {
            u32::try_from(id)
                .ok()
                .and_then(|id| range.host_id(id))
                .unwrap_or(range.base)
        };
        let header = entry.header();
        let (uid, gid) = (owner(header.uid()?), owner(header.gid()?));
        lchown(&target, Some(uid), Some(gid))?;
        if kind.is_file() || kind.is_dir() {
            // chown clears set-uid bits; the mode goes back after it.
            let mode = header.mode()? & 0o7777;
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&target, fs::Permissions::from_mode(mode))?;
        }
    }
    Ok(())
}

/// Writes the tree at `dir` (a template layer or a sandbox's own) as a gzip tar layer to
/// `out`, the reverse of [`apply`]: overlayfs whiteouts (0/0 character devices) become
/// `.wh.NAME` entries and opaque directories (`user.overlay.opaque`) get `.wh..wh..opq`;
/// owners move back out of the id range, and `owner` (the workspace owner the agent maps
/// to) becomes the agent. Returns the digest of the uncompressed tar (the image config's
/// `diff_id`).
pub fn pack(dir: &Path, range: IdRange, owner: (u32, u32), out: impl Write) -> io::Result<String> {
    let hashing = Hashing {
        inner: flate2::write::GzEncoder::new(out, flate2::Compression::fast()),
        hasher: Sha256::new(),
    };
    let mut builder = tar::Builder::new(hashing);
    builder.follow_symlinks(false);
    let ids = Ids { range, owner };
    pack_dir(&mut builder, dir, Path::new(""), &ids)?;
    let hashing = builder.into_inner()?;
    hashing.inner.finish()?;
    Ok(format!("sha256:{}", hex::encode(hashing.hasher.finalize())))
}

struct Ids {
    range: IdRange,
    owner: (u32, u32),
}

impl Ids {
    /// The sandbox id of host id `id`, `owner` being the agent's.
    fn inside(&self, id: u32, owner: u32) -> u64 {
        let id = if id == owner {
            AGENT_ID
        } else if (self.range.base..self.range.base.saturating_add(SANDBOX_IDS)).contains(&id) {
            id - self.range.base
        } else {
            0
        };
        u64::from(id)
    }
}

fn pack_dir<W: Write>(
    builder: &mut tar::Builder<W>,
    dir: &Path,
    relative: &Path,
    ids: &Ids,
) -> io::Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(fs::DirEntry::file_name);
    for entry in entries {
        let path = entry.path();
        let name = relative.join(entry.file_name());
        let meta = fs::symlink_metadata(&path)?;
        let kind = meta.file_type();
        let mut header = tar::Header::new_gnu();
        header.set_mode(meta.mode() & 0o7777);
        header.set_uid(ids.inside(meta.uid(), ids.owner.0));
        header.set_gid(ids.inside(meta.gid(), ids.owner.1));
        header.set_mtime(u64::try_from(meta.mtime()).unwrap_or(0));
        if kind.is_char_device() && meta.rdev() == 0 {
            let whiteout =
                relative.join(format!("{WHITEOUT}{}", entry.file_name().to_string_lossy()));
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(0);
            builder.append_data(&mut header, whiteout, io::empty())?;
        } else if kind.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            builder.append_data(&mut header, &name, io::empty())?;
            if crate::sys::xattr(&path, "user.overlay.opaque").as_deref() == Some(b"y") {
                let mut opaque = header.clone();
                opaque.set_entry_type(tar::EntryType::Regular);
                builder.append_data(&mut opaque, name.join(OPAQUE), io::empty())?;
            }
            pack_dir(builder, &path, &name, ids)?;
        } else if kind.is_symlink() {
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            builder.append_link(&mut header, &name, fs::read_link(&path)?)?;
        } else if kind.is_file() {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(meta.len());
            builder.append_data(&mut header, &name, fs::File::open(&path)?)?;
        }
        // Devices, sockets and fifos are left out, as `apply` leaves them out.
    }
    Ok(())
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(bytes)?;
        self.hasher.update(&bytes[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// `path` with its root and `.` left out; `None` when it climbs with `..`.
fn relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// `dest/path` with each directory on the way resolved as the tree itself would resolve
/// it: a symbolic link among them (merged /usr's `lib -> usr/lib`) is followed inside
/// `dest`, an absolute target from `dest` and `..` stopping there, as container runtimes
/// resolve an image's paths. The last component is not followed: an entry replaces a
/// link of that name, and a whiteout removes the link.
fn inside(dest: &Path, path: &Path) -> io::Result<PathBuf> {
    let Some(name) = path.file_name() else {
        return Ok(dest.to_path_buf());
    };
    let parent = path.parent().unwrap_or(Path::new(""));
    Ok(dest.join(resolve(dest, parent)?).join(name))
}

/// The longest chain of links followed, as Linux's own `ELOOP` limit.
const MAX_LINKS: u32 = 40;

/// `dir`, relative to `dest`, with every symbolic link in it followed inside `dest`.
fn resolve(dest: &Path, dir: &Path) -> io::Result<PathBuf> {
    let mut resolved = PathBuf::new();
    let mut rest: VecDeque<OsString> = (dir.components())
        .filter_map(|c| match c {
            Component::Normal(part) => Some(part.to_owned()),
            _ => None,
        })
        .collect();
    let mut links = 0;
    while let Some(part) = rest.pop_front() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        if part == "." {
            continue;
        }
        let candidate = resolved.join(&part);
        let meta = fs::symlink_metadata(dest.join(&candidate));
        if !meta.is_ok_and(|m| m.file_type().is_symlink()) {
            resolved = candidate;
            continue;
        }
        links += 1;
        if links > MAX_LINKS {
            return Err(io::Error::other(format!(
                "the layer reaches `{}` through more than {MAX_LINKS} symbolic links",
                dir.display()
            )));
        }
        let target = fs::read_link(dest.join(&candidate))?;
        if target.is_absolute() {
            resolved.clear();
        }
        for component in target.components().rev() {
            match component {
                Component::Normal(part) => rest.push_front(part.to_owned()),
                Component::ParentDir => rest.push_front("..".into()),
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            }
        }
    }
    Ok(resolved)
}

/// Makes the directories above `target` that no entry made, owned by sandbox root.
fn make_parents(dest: &Path, target: &Path, range: IdRange) -> io::Result<()> {
    let Some(parent) = target.parent() else {
        return Ok(());
    };
    if parent == dest || parent.is_dir() {
        return Ok(());
    }
    make_parents(dest, parent, range)?;
    fs::create_dir(parent)?;
    lchown(parent, Some(range.base), Some(range.base))
}

fn remove(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn empty_dir(dir: &Path) -> io::Result<()> {
    match fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                remove(&entry?.path())?;
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(entries: &[(&str, Option<&str>)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, content) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_uid(0);
            header.set_gid(0);
            match content {
                Some(text) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(text.len() as u64);
                    header.set_mode(0o644);
                    builder
                        .append_data(&mut header, path, text.as_bytes())
                        .unwrap();
                }
                None => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    header.set_mode(0o755);
                    builder.append_data(&mut header, path, &[][..]).unwrap();
                }
            }
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn upper_layers_replace_and_whiteouts_remove() {
        let dir = tempfile::tempdir().unwrap();
        let range = IdRange { base: 2_000_000 };
        let base = layer(&[
            ("etc/", None),
            ("etc/keep", Some("1")),
            ("etc/gone", Some("2")),
            ("var/", None),
            ("var/cache/", None),
            ("var/cache/a", Some("3")),
        ]);
        let upper = layer(&[
            ("etc/keep", Some("new")),
            ("etc/.wh.gone", Some("")),
            ("var/cache/.wh..wh..opq", Some("")),
            ("var/cache/b", Some("4")),
        ]);
        apply(&base[..], false, dir.path(), range).unwrap();
        apply(&upper[..], false, dir.path(), range).unwrap();
        let read = |p: &str| fs::read_to_string(dir.path().join(p)).ok();
        assert_eq!(read("etc/keep").as_deref(), Some("new"));
        assert_eq!(read("etc/gone"), None);
        assert_eq!(read("var/cache/a"), None);
        assert_eq!(read("var/cache/b").as_deref(), Some("4"));
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            fs::metadata(dir.path().join("etc/keep")).unwrap().uid(),
            range.base
        );
    }

    #[test]
    fn a_packed_tree_applies_back_with_its_files_links_and_owners() {
        let dir = tempfile::tempdir().unwrap();
        let range = IdRange { base: 2_000_000 };
        let tree = dir.path().join("tree");
        fs::create_dir_all(tree.join("home/agent")).unwrap();
        fs::write(tree.join("home/agent/notes"), "mine").unwrap();
        std::os::unix::fs::symlink("notes", tree.join("home/agent/link")).unwrap();
        lchown(tree.join("home/agent/notes"), Some(4242), Some(4242)).unwrap();
        let mut packed = Vec::new();
        let diff_id = pack(&tree, range, (4242, 4242), &mut packed).unwrap();
        assert!(
            diff_id.starts_with("sha256:") && diff_id.len() == 71,
            "{diff_id}"
        );
        let back = dir.path().join("back");
        fs::create_dir(&back).unwrap();
        apply(&packed[..], true, &back, range).unwrap();
        assert_eq!(
            fs::read_to_string(back.join("home/agent/notes")).unwrap(),
            "mine"
        );
        assert_eq!(
            fs::read_link(back.join("home/agent/link")).unwrap(),
            Path::new("notes")
        );
        use std::os::unix::fs::MetadataExt;
        let owner = fs::metadata(back.join("home/agent/notes")).unwrap().uid();
        assert_eq!(
            owner,
            range.base + AGENT_ID,
            "the workspace owner's file is the agent's"
        );
    }

    #[test]
    fn nothing_lands_outside_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        fs::create_dir(&tree).unwrap();
        let outside = dir.path().join("outside");
        fs::write(&outside, "host").unwrap();
        // Links of an earlier layer that would leave the tree, were they followed on the
        // host: an absolute one, and one that climbs.
        std::os::unix::fs::symlink(dir.path(), tree.join("up")).unwrap();
        std::os::unix::fs::symlink("../../../..", tree.join("climb")).unwrap();
        let range = IdRange { base: 2_000_000 };
        let raw = |entry: &str, kind: tar::EntryType, link: Option<&str>| {
            let mut builder = tar::Builder::new(Vec::new());
            let mut header = tar::Header::new_gnu();
            header.set_uid(0);
            header.set_gid(0);
            header.set_size(if kind.is_file() { 1 } else { 0 });
            header.set_mode(0o644);
            header.set_entry_type(kind);
            // `append_data` refuses `..`; the raw names are what a hostile layer holds.
            let gnu = header.as_gnu_mut().unwrap();
            gnu.name[..entry.len()].copy_from_slice(entry.as_bytes());
            if let Some(link) = link {
                gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            header.set_cksum();
            let data: &[u8] = if kind.is_file() { b"x" } else { b"" };
            builder.append(&header, data).unwrap();
            builder.into_inner().unwrap()
        };
        let regular = tar::EntryType::Regular;
        for entry in ["../outside", "a/../../outside"] {
            let bytes = raw(entry, regular, None);
            assert!(apply(&bytes[..], false, &tree, range).is_err(), "{entry}");
        }
        let link = raw("stolen", tar::EntryType::Link, Some("../outside"));
        assert!(apply(&link[..], false, &tree, range).is_err());
        // Through the links, entries land where the tree itself resolves them.
        for entry in [
            "up/outside",
            "up/.wh.outside",
            "climb/outside",
            "climb/.wh.outside",
        ] {
            let bytes = raw(entry, regular, None);
            apply(&bytes[..], false, &tree, range).unwrap();
        }
        assert_eq!(fs::read_to_string(&outside).unwrap(), "host");
        assert!(
            !tree.join("outside").exists(),
            "the whiteout removed it again"
        );
        let under_up = tree.join(dir.path().strip_prefix("/").unwrap());
        assert!(under_up.is_dir() && !under_up.join("outside").exists());
        assert!(fs::symlink_metadata(tree.join("up")).unwrap().is_symlink());
    }

    #[test]
    fn paths_through_a_merged_usr_link_land_in_usr() {
        let dir = tempfile::tempdir().unwrap();
        let range = IdRange { base: 2_000_000 };
        let mut base = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_size(0);
        header.set_uid(0);
        header.set_gid(0);
        base.append_data(&mut header.clone(), "usr/lib", &[][..])
            .unwrap();
        header.set_entry_type(tar::EntryType::Symlink);
        base.append_link(&mut header.clone(), "lib", "usr/lib")
            .unwrap();
        base.append_link(&mut header, "lib64", "/usr/lib").unwrap();
        apply(&base.into_inner().unwrap()[..], false, dir.path(), range).unwrap();
        let top = layer(&[
            ("lib/x86_64-linux-gnu/libfoo.so", Some("foo")),
            ("lib64/ld.so", Some("ld")),
        ]);
        apply(&top[..], false, dir.path(), range).unwrap();
        let usr_lib = dir.path().join("usr/lib");
        assert_eq!(
            fs::read_to_string(usr_lib.join("x86_64-linux-gnu/libfoo.so")).unwrap(),
            "foo"
        );
        assert_eq!(fs::read_to_string(usr_lib.join("ld.so")).unwrap(), "ld");
        assert!(
            fs::symlink_metadata(dir.path().join("lib"))
                .unwrap()
                .is_symlink()
        );
        // The directory no entry named belongs to sandbox root, as every other does.
        use std::os::unix::fs::MetadataExt;
        let made = fs::metadata(usr_lib.join("x86_64-linux-gnu")).unwrap();
        assert_eq!((made.uid(), made.gid()), (range.base, range.base));
        let whiteout = layer(&[("lib/x86_64-linux-gnu/.wh.libfoo.so", Some(""))]);
        apply(&whiteout[..], false, dir.path(), range).unwrap();
        assert!(!usr_lib.join("x86_64-linux-gnu/libfoo.so").exists());
        // A link to itself is a loop, refused, not followed for ever.
        std::os::unix::fs::symlink("loop", dir.path().join("loop")).unwrap();
        let looping = layer(&[("loop/file", Some("x"))]);
        let error = apply(&looping[..], false, dir.path(), range).unwrap_err();
        assert!(error.to_string().contains("symbolic links"), "{error}");
    }
}
