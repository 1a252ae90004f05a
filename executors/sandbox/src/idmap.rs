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

    /// The host id of the agent in template files, and of the agent of a sandbox that has
    /// no workspace owner to map it to.
    pub fn agent(self) -> u32 {
        self.base + AGENT_ID
    }

    /// The range for `user` from an `/etc/subuid` or `/etc/subgid` text, when it has one
    /// of at least [`SANDBOX_IDS`] ids.
    pub fn from_subid(text: &str, user: &str, id: u32) -> Option<IdRange> {
        text.lines().find_map(|line| {
            let mut fields = line.trim().split(':');
            let (name, start, count) = (fields.next()?, fields.next()?, fields.next()?);
            let (start, count) = (start.parse::<u32>().ok()?, count.parse::<u32>().ok()?);
            let owner = name == user || name.parse::<u32>() == Ok(id);
            (owner && count >= SANDBOX_IDS).then_some(IdRange { base: start })
        })
    }
}

/// A user namespace's uid or gid map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMap {
    /// `(inside, outside, count)` lines, as `/proc/PID/uid_map` takes them.
    pub lines: Vec<(u32, u32, u32)>,
}

/// The workspace owner's host id lies inside the sandbox's id range, where a sandbox user would
/// share it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("The workspace owner's id {owner} lies inside the sandbox id range {base}..{end}")]
pub struct OwnerInRange {
    /// The owner's host uid or gid.
    pub owner: u32,
    /// The host id of sandbox id 0.
    pub base: u32,
    /// The end of the range, exclusive.
    pub end: u64,
}

impl IdMap {
    /// The mapping for a sandbox whose agent is `owner` on the host. An owner of
    /// [`IdRange::agent`] (a sandbox with no workspace: a template's build) maps the whole
    /// range as it is, so what the agent writes is stored as a template stores the agent's.
    pub fn for_owner(range: IdRange, owner: u32) -> Result<IdMap, OwnerInRange> {
        if owner == range.agent() {
            return Ok(IdMap {
                lines: vec![(0, range.base, SANDBOX_IDS)],
            });
        }
        let end = u64::from(range.base) + u64::from(SANDBOX_IDS);
        if (u64::from(range.base)..end).contains(&u64::from(owner)) {
            return Err(OwnerInRange {
                owner,
                base: range.base,
                end,
            });
        }
        let after = AGENT_ID + 1;
        Ok(IdMap {
            lines: vec![
                (0, range.base, AGENT_ID),
                (AGENT_ID, owner, 1),
                (after, range.base + after, SANDBOX_IDS - after),
            ],
        })
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
    fn without_an_owner_the_agent_is_the_template_s_agent() {
        let range = IdRange { base: 100_000 };
        let map = IdMap::for_owner(range, range.agent()).unwrap();
        assert_eq!(map.proc_text(), "0 100000 65536\n");
    }

    #[test]
    fn the_agent_maps_to_the_owner_and_the_rest_to_the_range() {
        let map = IdMap::for_owner(IdRange { base: 100_000 }, 0).unwrap();
        assert_eq!(
            map.proc_text(),
            "0 100000 1000\n1000 0 1\n1001 101001 64535\n"
        );
    }

    #[test]
    fn an_owner_inside_the_range_is_refused() {
        let range = IdRange { base: 100_000 };
        assert!(IdMap::for_owner(range, 100_500).is_err());
        assert!(IdMap::for_owner(range, 165_536).is_ok());
    }

    #[test]
    fn subid_ranges_are_found_by_name_or_id_and_must_be_big_enough() {
        let text = "alice:100000:65536\nbob:200000:1000\n1001:300000:65536\n";
        assert_eq!(
            IdRange::from_subid(text, "alice", 1000),
            Some(IdRange { base: 100_000 })
        );
        assert_eq!(IdRange::from_subid(text, "bob", 1002), None);
        assert_eq!(
            IdRange::from_subid(text, "carol", 1001),
            Some(IdRange { base: 300_000 })
        );
    }
}
