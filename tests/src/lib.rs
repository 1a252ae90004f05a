//! Helpers for the end-to-end tests: the `aistack` binary, a throwaway `AISTACK_HOME`, the
//! real test model, and process control.

#![warn(missing_docs)]

pub mod bench;
pub mod registry;
pub mod sandbox;
pub mod upstream;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Runs `command` and asserts it succeeded, naming it `what` and showing its stderr
/// when it did not; its output.
pub fn succeed(command: &mut Command, what: &str) -> Output {
    let out = (command.output()).unwrap_or_else(|e| panic!("{what} does not run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The path that `scripts/SCRIPT ARGS` (a fetch or a build) prints, once it succeeded.
pub fn script_path(script: &str, args: &[&str]) -> PathBuf {
    let what = format!("scripts/{script} {}", args.join(" "));
    let out = succeed(
        Command::new(repo_root().join("scripts").join(script)).args(args),
        what.trim_end(),
    );
    PathBuf::from(String::from_utf8(out.stdout).expect("a path").trim())
}

/// The repository root: the workspace above the package cargo runs the test of (read at
/// run time: a build shared by two checkouts must not drive the other one), else this
/// crate's parent.
pub fn repo_root() -> PathBuf {
    let running = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from);
    let workspace = running.and_then(|dir| {
        dir.ancestors()
            .find(|d| {
                fs::read_to_string(d.join("Cargo.toml")).is_ok_and(|t| t.contains("[workspace]"))
            })
            .map(Path::to_path_buf)
    });
    workspace.unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("tests/ has a parent")
            .to_owned()
    })
}

/// `target/<profile>/`: tests and benches run from its `deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_owned()
}

/// Whether the running test or bench is a release build (binaries it builds match it).
pub fn is_release() -> bool {
    profile_dir().file_name().is_some_and(|n| n == "release")
}

/// The `aistack` binary of this workspace in the profile of the running test or bench
/// (`AISTACK_BIN` overrides), built once per process so that a run never exercises a stale
/// binary.
pub fn aistack_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("AISTACK_BIN") {
            return PathBuf::from(bin);
        }
        let profile_dir = profile_dir();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .args(["build", "--quiet", "-p", "aistack", "--bin", "aistack"])
            .current_dir(repo_root());
        if is_release() {
            build.arg("--release");
        }
        assert!(
            build.status().expect("cargo runs").success(),
            "building the aistack binary failed"
        );
        profile_dir.join("aistack")
    })
}

/// The SmolLM2-135M-Instruct GGUF that `scripts/fetch-model` fetches.
pub fn test_model() -> PathBuf {
    match std::env::var_os("AISTACK_TEST_MODEL") {
        Some(path) if Path::new(&path).is_file() => PathBuf::from(path),
        _ => panic!(
            "AISTACK_TEST_MODEL must name the SmolLM2 GGUF: run `export AISTACK_TEST_MODEL=$(scripts/fetch-model)` \
             (scripts/test does this)"
        ),
    }
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A temporary `AISTACK_HOME` and project directory; stops the daemon it started on drop.
pub struct TestEnv {
    dir: tempfile::TempDir,
    vars: Vec<(String, std::ffi::OsString)>,
    gateway_port: u16,
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl TestEnv {
    /// A fresh home and an empty project directory `project/`.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::create_dir_all(dir.path().join("project")).expect("project dir");
        TestEnv {
            dir,
            vars: Vec::new(),
            gateway_port: free_port(),
        }
    }

    /// `AISTACK_HOME`.
    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// The project directory, where commands run.
    pub fn project(&self) -> PathBuf {
        self.dir.path().join("project")
    }

    /// The loopback port this environment's gateway listens on (tests run in parallel, so
    /// none may take the default 12434).
    pub fn gateway_port(&self) -> u16 {
        self.gateway_port
    }

    /// `spec` with `gateway.listen` on [`TestEnv::gateway_port`] after its first line, unless
    /// it has a `gateway:` section.
    pub fn spec(&self, spec: &str) -> String {
        if spec.contains("\ngateway:") {
            return spec.to_owned();
        }
        let (first, rest) = spec.split_once('\n').unwrap_or((spec, ""));
        format!(
            "{first}\ngateway: {{ listen: 127.0.0.1:{} }}\n{rest}",
            self.gateway_port
        )
    }

    /// Writes `aistack.yaml` (or another file) into the project directory.
    pub fn write(&self, name: &str, text: &str) -> &Self {
        let path = self.project().join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("parent dir");
        }
        fs::write(path, text).expect("write file");
        self
    }

    /// Links the test model into the project as `models/<name>`.
    pub fn link_model(&self, name: &str) -> PathBuf {
        let path = self.project().join("models").join(name);
        fs::create_dir_all(path.parent().expect("models/")).expect("models dir");
        std::os::unix::fs::symlink(test_model(), &path).expect("symlink the model");
        path
    }

    /// Sets an environment variable for every command of this environment.
    pub fn set_var(&mut self, name: &str, value: impl Into<std::ffi::OsString>) {
        self.vars.push((name.to_owned(), value.into()));
    }

    /// An `aistack` command in the project directory with this home, no colours.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(aistack_bin());
        cmd.args(args)
            .current_dir(self.project())
            .env("AISTACK_HOME", self.home())
            .env("NO_COLOR", "1")
            .env_remove("AISTACK_LOG")
            .envs(self.vars.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Runs `aistack ARGS` to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("aistack runs")
    }

    /// Runs `aistack ARGS` and asserts it succeeded; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "`aistack {}` failed with {}\nstdout:\n{}\nstderr:\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `status --json` of the project.
    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["status", "--json"])).expect("status --json is JSON")
    }

    /// The pid of the daemon of this home, if one wrote its pid file.
    pub fn daemon_pid(&self) -> Option<i32> {
        fs::read_to_string(self.home().join("run/aistack.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Every blob under the store's `blobs/sha256/`: (file name, sha256 of its content).
    pub fn blobs(&self) -> Vec<(String, String)> {
        let dir = self.home().join("models/blobs/sha256");
        let Ok(entries) = fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut blobs: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    sha256_file(&e.path()),
                )
            })
            .collect();
        blobs.sort();
        blobs
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if let Some(pid) = self.daemon_pid() {
            terminate(pid, rustix::process::Signal::TERM);
            wait_gone(pid, Duration::from_secs(5));
        }
    }
}

/// A finished command as the snapshots show it: exit code, stdout, stderr.
pub fn rendered(out: &Output) -> String {
    format!(
        "exit: {}\n--- stdout\n{}--- stderr\n{}",
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// sha256 hex of a file.
pub fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    let mut file = fs::File::open(path).expect("open blob");
    std::io::copy(&mut file, &mut hasher).expect("read blob");
    hex::encode(hasher.finalize())
}

/// Sends `signal` to `pid`, ignoring a process that is gone.
pub fn terminate(pid: i32, signal: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// Waits until `pid` no longer exists (or is a zombie), at most `timeout`.
pub fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The state field follows the parenthesised command name.
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next());
        if matches!(state, None | Some("Z") | Some("X")) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Polls `condition` every millisecond until it holds or `timeout` passes.
pub fn wait_for(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}
