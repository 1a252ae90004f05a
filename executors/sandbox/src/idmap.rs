//! User and group id mappings of a sandbox's user namespace (pure).
//!
//! Sandbox ids `0..65536` map to a range of host ids that belong to no host user (the
//! daemon user's `/etc/subuid` and `/etc/subgid` range, else [`DEFAULT_BASE`]), except
//! the `agent` user, id 1000, which maps to the workspace's owner: files the agent writes
//! in the workspace belong to the host user, and nothing else of the sandbox does.

use std::fmt::Write as _;

/// How many ids a sandbox has.
pub const SANDBOX_IDS: u32 = 65536;
/// The `agent` user's uid and gid inside every sandbox.
pub const AGENT_ID: u32 = 1000;
/// The host id of sandbox root when the system names no subordinate range for the daemon
/// user: high enough to be clear of real users and of systemd's container ranges'
/// common start.
pub const DEFAULT_BASE: u32 = 2_000_000_000;
/// The first host id of an ordinary user; below it are the system's.
pub const FIRST_USER_ID: u32 = 1000;

/// Where a sandbox's ids lie on the host: sandbox id `n` is host id `base + n`, for [`SANDBOX_IDS`]
/// ids, except the agent's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    /// The host id of sandbox id 0.
    pub base: u32,
}

impl IdRange {
    /// The host id that stands for sandbox id `id` in template files (every id but the
    /// agent's, which is the workspace owner's and so differs from sandbox to sandbox).
    pub fn host_id(self, id: u32) -> Option<u32> {
        (id < SANDBOX_IDS).then(|| self.base + id)
    }

    /// The host id of the `agent` user of every sandbox, and of the agent's files in
    /// templates.
    pub fn agent(self) -> u32 {
        self.base + AGENT_ID
    }

    /// The range for `user` (whose id is `id`) from an `/etc/subuid` or `/etc/subgid`
    /// text, when it has one of at least [`SANDBOX_IDS`] ids that holds no system id
    /// (below 1000) and not `id` itself: no sandbox process may hold a privileged host id.
    pub fn from_subid(text: &str, user: &str, id: u32) -> Option<IdRange> {
        text.lines().find_map(|line| {
            let mut fields = line.trim().split(':');
            let (name, start, count) = (fields.next()?, fields.next()?, fields.next()?);
            let (start, count) = (start.parse::<u32>().ok()?, count.parse::<u32>().ok()?);
            let owner = name == user || name.parse::<u32>() == Ok(id);
            let ids = u64::from(start)..u64::from(start) + u64::from(SANDBOX_IDS);
            let unprivileged = start >= FIRST_USER_ID && !ids.contains(&u64::from(id));
            (owner && count >= SANDBOX_IDS && unprivileged).then_some(IdRange { base: start })
        })
    }
}

/// A user namespace's uid or gid map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMap {
    /// `(inside, outside, count)` lines, as `/proc/PID/uid_map` takes them.
    pub lines: Vec<(u32, u32, u32)>,
}

impl IdMap {
    /// The mapping of every sandbox: its ids onto the range, as they are. No sandbox
    /// process holds a host id outside the range; the workspace's owner is reached through
    /// an idmapped mount instead (`setup::Workspace`).
    pub fn of(range: IdRange) -> IdMap {
        IdMap {
            lines: vec![(0, range.base, SANDBOX_IDS)],
        }
    }

    /// The text written to `uid_map` or `gid_map`.
    pub fn proc_text(&self) -> String {
        let mut text = String::new();
        for (inside, outside, count) in &self.lines {
            let _ = writeln!(text, "{inside} {outside} {count}");
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sandbox_maps_its_ids_onto_the_range_as_they_are() {
        let map = IdMap::of(IdRange { base: 100_000 });
        assert_eq!(map.proc_text(), "0 100000 65536\n");
    }

    #[test]
    fn subid_ranges_are_found_by_name_or_id_and_must_be_big_enough() {
        let text = "alice:100000:65536\nbob:200000:1000\n1001:300000:65536\n\
                    carol:0:65536\ndave:5000:65536\n";
        assert_eq!(
            IdRange::from_subid(text, "alice", 1000),
            Some(IdRange { base: 100_000 })
        );
        assert_eq!(IdRange::from_subid(text, "bob", 1002), None);
        assert_eq!(
            IdRange::from_subid(text, "carol", 1001),
            Some(IdRange { base: 300_000 })
        );
        // Ranges holding system ids, or the daemon user's own id, are never used.
        assert_eq!(IdRange::from_subid("carol:0:65536\n", "carol", 1002), None);
        assert_eq!(IdRange::from_subid("dave:5000:65536\n", "dave", 5001), None);
    }
}
