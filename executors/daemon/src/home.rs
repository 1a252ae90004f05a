//! `AISTACK_HOME`: where everything aistack keeps lives.

use std::path::{Path, PathBuf};

/// The directory tree of one aistack installation (DESIGN §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// `AISTACK_HOME`, else `$XDG_DATA_HOME/aistack`, else `~/.local/share/aistack`, read
    /// from the given variables (the caller passes the environment in).
    pub fn resolve(var: impl Fn(&str) -> Option<String>) -> Option<Home> {
        let non_empty = |name: &str| var(name).filter(|v| !v.is_empty());
        let root = if let Some(home) = non_empty("AISTACK_HOME") {
            PathBuf::from(home)
        } else if let Some(xdg) = non_empty("XDG_DATA_HOME") {
            Path::new(&xdg).join("aistack")
        } else {
            Path::new(&non_empty("HOME")?).join(".local/share/aistack")
        };
        Some(Home { root })
    }

    /// A home at `root`.
    pub fn at(root: impl Into<PathBuf>) -> Home {
        Home { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Makes the root directory, if it is missing, this user's alone (mode 0700): what it
    /// holds decides what the daemon runs, and a umask of 002 must not open it to a group.
    /// Its parents are made as usual. An existing root is left as it is (the daemon checks it).
    pub fn create(&self) -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        if let Some(parent) = self.root.parent() {
            std::fs::create_dir_all(parent)?;
        }
        match std::fs::DirBuilder::new().mode(0o700).create(&self.root) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            other => other,
        }
    }

    /// The shared model store (an OCI image layout).
    pub fn models(&self) -> PathBuf {
        self.root.join("models")
    }

    /// What was applied for a project.
    pub fn project(&self, name: &str) -> PathBuf {
        self.root.join("projects").join(name)
    }

    /// All projects.
    pub fn projects(&self) -> PathBuf {
        self.root.join("projects")
    }

    /// Sockets, pid and lock files.
    pub fn run(&self) -> PathBuf {
        self.root.join("run")
    }

    /// The daemon's control socket.
    pub fn socket(&self) -> PathBuf {
        self.run().join("aistack.sock")
    }

    /// `kernel/`: the microVM sandboxes' guest kernel (`scripts/build-guest-kernel`).
    pub fn kernel(&self) -> PathBuf {
        self.root.join("kernel")
    }

    /// Logs.
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// The daemon's log file.
    pub fn daemon_log(&self) -> PathBuf {
        self.logs().join("daemon.log")
    }

    /// Caches that can be deleted at any time (the local file digest cache).
    pub fn cache(&self) -> PathBuf {
        self.root.join("cache")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution_order_follows_design() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let all = env(&[
            ("AISTACK_HOME", "/a"),
            ("XDG_DATA_HOME", "/x"),
            ("HOME", "/h"),
        ]);
        assert_eq!(Home::resolve(all).unwrap().root(), Path::new("/a"));
        let xdg = env(&[
            ("AISTACK_HOME", ""),
            ("XDG_DATA_HOME", "/x"),
            ("HOME", "/h"),
        ]);
        assert_eq!(Home::resolve(xdg).unwrap().root(), Path::new("/x/aistack"));
        let home = env(&[("HOME", "/h")]);
        assert_eq!(
            Home::resolve(home).unwrap().root(),
            Path::new("/h/.local/share/aistack")
        );
        assert_eq!(Home::resolve(env(&[])), None);
    }
}
