//! Memory, CPU and process-count limits through the host's cgroup hierarchy: v2 where
//! `/sys/fs/cgroup` is the unified hierarchy, else the v1 `memory`, `cpu` and `pids`
//! controllers.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// What one sandbox may use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// The most memory, in bytes; the sandbox also gets no swap where the host accounts for it.
    /// Unlimited when `None`.
    pub memory: Option<u64>,
    /// The CPU time it may use, in CPUs (`1.5` is one and a half), enforced as a CFS quota per 100
    /// ms period. Unlimited when `None`.
    pub cpus: Option<f64>,
    /// The most processes and threads at once: a fork bomb stops here.
    pub pids: u64,
}

/// The default process cap: enough for builds and language servers, small enough that a
/// fork bomb leaves the host responsive.
pub const DEFAULT_PIDS: u64 = 2048;

impl Default for Limits {
    /// No memory or CPU limit; the default process cap.
    fn default() -> Self {
        Limits {
            memory: None,
            cpus: None,
            pids: DEFAULT_PIDS,
        }
    }
}

const CPU_PERIOD_US: u64 = 100_000;

/// A sandbox's cgroup: one directory (v2) or one per controller (v1).
#[derive(Debug, Clone)]
pub struct Cgroup {
    dirs: Vec<PathBuf>,
}

impl Cgroup {
    /// Creates (or reuses) the cgroup `aistack/<id>` and writes its limits.
    pub fn create(root: &Path, id: &str, limits: Limits) -> io::Result<Cgroup> {
        if root.join("cgroup.controllers").exists() {
            Self::create_v2(root, id, limits)
        } else {
            Self::create_v1(root, id, limits)
        }
    }

    /// The cgroup `aistack/<id>`, whether or not it exists; creates nothing (to end what a
    /// sandbox left when no handle of its start is at hand).
    pub fn existing(root: &Path, id: &str) -> Cgroup {
        let dirs = if root.join("cgroup.controllers").exists() {
            vec![root.join("aistack").join(id)]
        } else {
            ["memory", "cpu", "pids"]
                .map(|controller| root.join(controller).join("aistack").join(id))
                .to_vec()
        };
        Cgroup { dirs }
    }

    fn create_v2(root: &Path, id: &str, limits: Limits) -> io::Result<Cgroup> {
        let parent = root.join("aistack");
        fs::create_dir_all(&parent)?;
        for dir in [root, parent.as_path()] {
            // Controllers must be enabled on the way down; one the host lacks is skipped
            // and its limit is then not applied (the write below fails and says so).
            for controller in ["+memory", "+cpu", "+pids"] {
                let _ = fs::write(dir.join("cgroup.subtree_control"), controller);
            }
        }
        let dir = parent.join(id);
        fs::create_dir_all(&dir)?;
        if let Some(memory) = limits.memory {
            write(&dir, "memory.max", &memory.to_string())?;
            let _ = fs::write(dir.join("memory.swap.max"), "0");
        }
        if let Some(cpus) = limits.cpus {
            let quota = (cpus * CPU_PERIOD_US as f64).round() as u64;
            write(&dir, "cpu.max", &format!("{quota} {CPU_PERIOD_US}"))?;
        }
        write(&dir, "pids.max", &limits.pids.to_string())?;
        Ok(Cgroup { dirs: vec![dir] })
    }

    fn create_v1(root: &Path, id: &str, limits: Limits) -> io::Result<Cgroup> {
        let dir = |controller: &str| root.join(controller).join("aistack").join(id);
        let (memory, cpu, pids) = (dir("memory"), dir("cpu"), dir("pids"));
        for dir in [&memory, &cpu, &pids] {
            fs::create_dir_all(dir)?;
        }
        if let Some(limit) = limits.memory {
            write(&memory, "memory.limit_in_bytes", &limit.to_string())?;
            // Without swap accounting the file is absent and swap is not limited.
            let _ = fs::write(
                memory.join("memory.memsw.limit_in_bytes"),
                limit.to_string(),
            );
        }
        if let Some(cpus) = limits.cpus {
            let quota = (cpus * CPU_PERIOD_US as f64).round() as u64;
            write(&cpu, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
            write(&cpu, "cpu.cfs_quota_us", &quota.to_string())?;
        }
        write(&pids, "pids.max", &limits.pids.to_string())?;
        Ok(Cgroup {
            dirs: vec![memory, cpu, pids],
        })
    }

    /// The `cgroup.procs` files a process writes its pid to, to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Whether no process is in the cgroup (or it does not exist).
    pub fn is_empty(&self) -> bool {
        self.dirs.iter().all(|dir| {
            fs::read_to_string(dir.join("cgroup.procs")).map_or(true, |t| t.trim().is_empty())
        })
    }

    /// Kills every process in the cgroup and waits (a bounded while) until none is left,
    /// so that [`Cgroup::remove`] can follow. Idempotent.
    pub fn kill(&self) -> io::Result<()> {
        let pids = |dir: &Path| -> Vec<i32> {
            let text = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            text.lines().filter_map(|l| l.trim().parse().ok()).collect()
        };
        for _ in 0..200 {
            let mut left = false;
            for dir in &self.dirs {
                if !dir.exists() {
                    continue;
                }
                if fs::write(dir.join("cgroup.kill"), "1").is_err() {
                    // cgroup v1 has no `cgroup.kill`.
                    for pid in pids(dir) {
                        let _ = crate::sys::kill(pid as u32, libc::SIGKILL);
                    }
                }
                left |= !pids(dir).is_empty();
            }
            if !left {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "processes of the cgroup outlived SIGKILL for 2 s",
        ))
    }

    /// Removes the cgroup once its processes are gone. Idempotent.
    pub fn remove(&self) -> io::Result<()> {
        for dir in &self.dirs {
            match fs::remove_dir(dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }
}

fn write(dir: &Path, file: &str, value: &str) -> io::Result<()> {
    fs::write(dir.join(file), value).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot write {value} to {}: {e}", dir.join(file).display()),
        )
    })
}
