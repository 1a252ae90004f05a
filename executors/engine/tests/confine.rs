//! What a confined engine can still do, tried from inside: this binary runs itself again as
//! a child that calls `aistack_engine::confine::confine` as `aistack engine` does (on its
//! one thread, with a file opened before, as another user when the test runs as root) and
//! then tries what a compromised engine would, reporting each outcome on stdout.
//!
//! Its own `main` (`harness = false`): the test harness runs each test on a thread of its
//! own, and a process confines itself only while it has one thread.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use aistack_engine::confine::{User, confine};

/// Names the directory the child works in.
const CHILD: &str = "AISTACK_CONFINE_CHILD";
/// A user nothing on this machine has.
const USER: User = User {
    uid: 2_000_065_536,
    gid: 2_000_065_536,
};

fn main() -> ExitCode {
    match std::env::var_os(CHILD) {
        Some(dir) => child(Path::new(&dir)),
        None => parent(),
    }
}

fn root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Tries each thing a compromised engine might; prints `name=ok` or `name=error` lines.
fn child(dir: &Path) -> ExitCode {
    let model = File::open(dir.join("model.gguf")).expect("the model opens before");
    // Opened before too: what the process's status says is read after.
    let mut status = File::open("/proc/self/status").expect("its status opens");
    let confined = match confine(root().then_some(USER), &[model.as_fd()]) {
        Ok(confined) => confined,
        Err(e) => {
            println!("confine=error {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("landlock={}", confined.landlock.is_some());
    let outcome = |name: &str, result: std::io::Result<()>| match result {
        Ok(()) => println!("{name}=ok"),
        Err(e) => println!("{name}=error {}", e.raw_os_error().unwrap_or(0)),
    };
    let read = |path: &Path| {
        let mut text = String::new();
        File::open(path)?.read_to_string(&mut text).map(drop)
    };
    let model_path = PathBuf::from(format!("/proc/self/fd/{}", model.as_raw_fd()));
    outcome("read_model_by_fd", read(&model_path));
    outcome("read_cpuinfo", read(Path::new("/proc/cpuinfo")));
    outcome("read_proc", read(Path::new("/proc/self/environ")));
    outcome("read_etc", read(Path::new("/etc/passwd")));
    outcome("write_open_dir", fs::write(dir.join("written"), "x"));
    outcome(
        "write_tmp",
        fs::write(std::env::temp_dir().join("aistack-confine-probe"), "x"),
    );
    outcome("remove", fs::remove_file(dir.join("model.gguf")));
    outcome("exec", Command::new("/bin/true").status().map(drop));
    outcome(
        "tcp",
        std::net::TcpStream::connect(("127.0.0.1", 9)).map(drop),
    );
    outcome(
        "unix",
        std::os::unix::net::UnixStream::connect(dir.join("socket")).map(drop),
    );
    outcome(
        "thread",
        std::thread::spawn(|| ())
            .join()
            .map_err(|_| std::io::Error::other("panicked")),
    );
    let mut text = String::new();
    let _ = status.read_to_string(&mut text);
    let status = text;
    for key in ["Uid", "Gid", "Groups", "NoNewPrivs", "Seccomp"] {
        let value = status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}:")))
            .unwrap_or_default();
        println!(
            "{key}={}",
            value.split_whitespace().collect::<Vec<_>>().join(" ")
        );
    }
    ExitCode::SUCCESS
}

fn parent() -> ExitCode {
    let dir = tempfile::tempdir().expect("a temporary directory");
    // Open to every user, as a directory where only Landlock stops a write.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let model = dir.path().join("model.gguf");
    fs::write(&model, "GGUF").unwrap();
    fs::set_permissions(&model, fs::Permissions::from_mode(0o644)).unwrap();
    let _listener = std::os::unix::net::UnixListener::bind(dir.path().join("socket")).unwrap();
    fs::set_permissions(dir.path().join("socket"), fs::Permissions::from_mode(0o777)).unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .env(CHILD, dir.path())
        .output()
        .expect("the child runs");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the child failed: {text}");
    let seen: BTreeMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    let eperm = format!("error {}", libc::EPERM);
    let eacces = format!("error {}", libc::EACCES);

    assert_eq!(seen["read_model_by_fd"], "ok");
    assert_eq!(seen["read_cpuinfo"], "ok");
    assert_eq!(seen["thread"], "ok");
    assert_eq!(seen["NoNewPrivs"], "1");
    assert_eq!(seen["Seccomp"], "2");
    assert_eq!(seen["exec"], eperm, "seccomp refuses exec");
    assert_eq!(seen["tcp"], eperm, "seccomp refuses new sockets");
    assert_eq!(seen["unix"], eperm);
    if root() {
        assert_eq!(seen["Uid"], "2000065536 2000065536 2000065536 2000065536");
        assert_eq!(seen["Gid"], "2000065536 2000065536 2000065536 2000065536");
        assert_eq!(seen["Groups"], "");
    }
    let mut summary = "seccomp and the user checked";
    if seen["landlock"] == "true" {
        // Each of these is allowed by the files' modes (0644, a 0777 directory, /tmp):
        // only Landlock refuses them.
        for name in [
            "read_etc",
            "read_proc",
            "write_open_dir",
            "write_tmp",
            "remove",
        ] {
            assert_eq!(seen[name], eacces, "{name}");
        }
        summary = "seccomp, the user and Landlock checked";
    } else {
        println!("warning: this kernel has no Landlock; its checks are skipped");
    }
    assert!(!dir.path().join("written").exists());
    let _ = fs::remove_file(std::env::temp_dir().join("aistack-confine-probe"));
    println!("1 passed, 0 failed ({summary})");
    ExitCode::SUCCESS
}
