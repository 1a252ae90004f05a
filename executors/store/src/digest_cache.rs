//! A cache of local files' sha256 digests, so planning does not hash gigabytes each time.
//!
//! An entry is keyed by the file's absolute path and holds its device, inode, size, mtime and
//! ctime (nanoseconds) as one `stat` reports them: a hit costs that one `stat` and no
//! hashing. The path is made absolute lexically rather than canonicalised (which would cost a
//! `stat` per path component); the device and inode catch a symlink that now points
//! elsewhere, and the ctime catches a modification whose mtime was set back.
//!
//! A file modified within the same clock tick as its mtime could keep its size and times, so
//! an entry is only kept for files whose mtime is at least two seconds older than the moment
//! they were hashed (git's "racy" rule). The store checks every digest again when it copies
//! a file, so a stale entry could at worst fail an import, never corrupt the store.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::store::hash_file;

/// How old an mtime must be for its digest to be cached.
const RACY: Duration = Duration::from_secs(2);

/// File digests keyed by path and `stat` facts.
#[derive(Debug, Default)]
pub struct DigestCache {
    entries: BTreeMap<PathBuf, Fact>,
    changed: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Fact {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    digest: String,
}

#[derive(Serialize, Deserialize)]
struct CacheFile {
    version: u32,
    entries: BTreeMap<PathBuf, Fact>,
}

const VERSION: u32 = 1;

impl DigestCache {
    /// The cache saved at `path`; a missing or unreadable cache is an empty one.
    pub fn load(path: &Path) -> DigestCache {
        let entries = std::fs::read(path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<CacheFile>(&bytes).ok())
            .filter(|file| file.version == VERSION)
            .map(|file| file.entries)
            .unwrap_or_default();
        DigestCache {
            entries,
            changed: false,
        }
    }

    /// The size and `sha256:<hex>` digest of the file at `path`, hashing it only when the
    /// cache has no entry matching its `stat`.
    pub fn fact(&mut self, path: &Path) -> std::io::Result<(u64, String)> {
        let key = std::path::absolute(path)?;
        let meta = std::fs::metadata(&key)?;
        let observed = |digest: String| Fact {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
            digest,
        };
        if let Some(fact) = self.entries.get(&key)
            && *fact == observed(fact.digest.clone())
        {
            return Ok((fact.size, fact.digest.clone()));
        }
        let started = SystemTime::now();
        let (size, digest) = hash_file(&key)?;
        let fact = observed(digest.clone());
        let after = std::fs::metadata(&key)?;
        let stable = after.len() == size
            && size == fact.size
            && after.mtime() == meta.mtime()
            && after.mtime_nsec() == meta.mtime_nsec()
            && after.ino() == meta.ino();
        let old_enough = meta
            .modified()
            .ok()
            .and_then(|m| started.duration_since(m).ok())
            .is_some_and(|age| age >= RACY);
        if stable && old_enough {
            self.entries.insert(key, fact);
            self.changed = true;
        } else if self.entries.remove(&key).is_some() {
            self.changed = true;
        }
        Ok((size, digest))
    }

    /// Writes the cache to `path` (atomically), if anything changed since it was loaded.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        if !self.changed {
            return Ok(());
        }
        let file = CacheFile {
            version: VERSION,
            entries: self.entries.clone(),
        };
        let bytes = serde_json::to_vec(&file).map_err(std::io::Error::other)?;
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        tmp.write_all(&bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    }
}
