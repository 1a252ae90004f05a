//! The sandbox's boundary, tried from inside a real sandbox through the real binary (issue
//! 16): what host ids its processes hold and whose its files are, the system calls and
//! set-id bits it may not use, the kernel interfaces it may not write or see, the spec
//! files and secrets of its workspace, the environment it gets, where `AISTACK_HOME` may
//! be, the limits it runs under, and the links a template's build may plant.
//!
//! `aistack-guest check DIR` (the static guest agent, copied into the workspace) makes the
//! system calls busybox cannot.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use aistack_tests::on_both_backends;
use aistack_tests::sandbox::{Down, On, busybox_rootfs, guest_bin};
use aistack_tests::{TestEnv, aistack_bin, wait_for};

const SPEC: &str = "version: 1
name: hard
templates:
  base:
    from: ./rootfs
sandboxes:
  box:
    template: base
    agent: shell
    memory: 256MiB
";

on_both_backends!(
    system_calls_past_the_sandbox_and_set_id_bits_are_refused,
    the_spec_files_are_read_only_and_dotenv_is_hidden_inside,
    nothing_of_the_environment_of_up_reaches_a_sandbox_or_a_build,
);

fn env_with(spec: &str) -> TestEnv {
    env_on(On::Namespace, spec)
}

fn env_on(on: On, spec: &str) -> TestEnv {
    let mut env = TestEnv::new();
    env.set_var("AISTACK_GUEST", guest_bin());
    on.prepare(&mut env);
    let spec = &on.spec(spec);
    busybox_rootfs(&env.project().join("rootfs"));
    env.write("aistack.yaml", &env.spec(spec));
    env
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_owned()
}

/// `aistack exec [-u USER] box -- sh -c SCRIPT`, asserting success; its stdout.
fn sh(env: &TestEnv, user: Option<&str>, script: &str) -> String {
    let mut args = vec!["exec"];
    if let Some(user) = user {
        args.extend(["-u", user]);
    }
    args.extend(["box", "--", "sh", "-c", script]);
    env.ok(&args)
}

/// The host uid and gid of every process whose command line starts with `argv0` and has
/// `marker` as an argument.
fn host_ids(argv0: &str, marker: &str) -> Vec<(u32, u32)> {
    let mut ids = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let mine = args.first().is_some_and(|a| a.ends_with(argv0.as_bytes()))
            && args.contains(&marker.as_bytes());
        if !mine {
            continue;
        }
        let status = fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        let field = |name: &str| -> u32 {
            (status.lines())
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap()
        };
        ids.push((field("Uid:"), field("Gid:")));
    }
    ids
}

/// A sandbox process as the host sees it: started detached, found by a marker argument.
fn agent_host_ids(env: &TestEnv) -> (u32, u32) {
    env.ok(&["exec", "-d", "box", "--", "sleep", "3133"]);
    let mut found = Vec::new();
    assert!(wait_for(Duration::from_secs(5), || {
        found = host_ids("sleep", "3133");
        !found.is_empty()
    }));
    found[0]
}

#[test]
fn the_agent_holds_a_host_id_of_the_range_and_writes_as_the_workspace_owner() {
    let env = env_with(SPEC);
    let _down = Down(&env);
    // The project (the workspace) is root's: the agent writes as root on the host, yet
    // no process of the sandbox is root on the host.
    assert_eq!(fs::metadata(env.project()).unwrap().uid(), 0);
    env.ok(&["up"]);
    assert_eq!(sh(&env, None, "id -u; echo made > made"), "1000\n");
    let made = fs::metadata(env.project().join("made")).unwrap();
    assert_eq!((made.uid(), made.gid()), (0, 0));
    let (uid, gid) = agent_host_ids(&env);
    assert!(uid >= 100_000 && gid >= 100_000, "host ids {uid}:{gid}");
    // Inside, the owner's files are the agent's, and the agent's are the owner's outside.
    assert_eq!(
        sh(&env, None, "stat -c %u:%g aistack.yaml made"),
        "1000:1000\n1000:1000\n"
    );
    env.ok(&["down"]);

    // A workspace of an ordinary user: the same, with that user's ids on the host.
    Command::new("chown")
        .args(["-R", "1234:1235"])
        .arg(env.project())
        .status()
        .unwrap();
    env.ok(&["up"]);
    sh(&env, None, "echo again > again");
    let again = fs::metadata(env.project().join("again")).unwrap();
    assert_eq!((again.uid(), again.gid()), (1234, 1235));
    let (uid, _) = agent_host_ids(&env);
    assert!(uid >= 100_000, "host uid {uid}");
}

/// A filesystem that cannot be idmapped (ramfs): the sandbox is refused, saying why and
/// where its log is, rather than run with the owner's host ids.
#[test]
fn a_workspace_that_cannot_be_idmapped_is_refused_with_the_fix() {
    let env = env_with(&SPEC.replace(
        "    memory: 256MiB\n",
        "    memory: 256MiB\n    workspace: ./ws\n",
    ));
    let _down = Down(&env);
    let ws = env.project().join("ws");
    fs::create_dir(&ws).unwrap();
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    assert!(
        Command::new("mount")
            .args(["-t", "ramfs", "ramfs"])
            .arg(&ws)
            .status()
            .unwrap()
            .success()
    );
    let _unmount = Unmount(&ws);
    let out = env.run(&["up"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("cannot be mounted idmapped"), "{stderr}");
    assert!(
        stderr.contains("put the workspace on a local filesystem"),
        "{stderr}"
    );
    assert!(stderr.contains("`aistack sandbox logs box`"), "{stderr}");
}

fn system_calls_past_the_sandbox_and_set_id_bits_are_refused(on: On) {
    let env = env_on(on, SPEC);
    let _down = Down(&env);
    fs::copy(guest_bin(), env.project().join("aistack-guest")).unwrap();
    env.ok(&["up"]);
    // Root of the sandbox cannot write the workspace at all (its id has no owner there):
    // it tries in /tmp, under the same filter.
    for (user, dir) in [(None, "."), (Some("root"), "/tmp")] {
        let report = sh(&env, user, &format!("./aistack-guest check {dir}"));
        for probe in [
            "x32",
            "vsock",
            "io_uring",
            "pidfd_getfd",
            "process_madvise",
            "kcmp",
            "personality",
            "chmod-setuid",
            "chmod-setgid",
            "create-setuid",
        ] {
            let line = format!("{probe}: refused (Operation not permitted (os error 1))");
            assert!(
                report.lines().any(|l| l == line),
                "{probe} as {user:?}:\n{report}"
            );
        }
    }
    // The workspace holds no file with a set-id bit.
    let setid = fs::read_dir(env.project())
        .unwrap()
        .filter_map(Result::ok)
        .any(|e| e.metadata().is_ok_and(|m| m.mode() & 0o6000 != 0));
    assert!(!setid);
}

#[test]
fn kernel_interfaces_are_read_only_or_masked_and_mountinfo_names_no_host_path() {
    let env = env_with(SPEC);
    let _down = Down(&env);
    env.ok(&["up"]);
    let out = env.run(&[
        "exec",
        "-u",
        "root",
        "box",
        "--",
        "sh",
        "-c",
        // Root of the sandbox owns its network namespace, whose sysctls it could write.
        "echo '0 0' > /proc/sys/net/ipv4/ping_group_range",
    ]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("Read-only file system"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        sh(
            &env,
            Some("root"),
            "wc -c < /proc/keys; wc -c < /proc/timer_list; ls /proc/acpi | wc -l"
        ),
        "0\n0\n0\n"
    );
    let mountinfo = sh(&env, Some("root"), "cat /proc/self/mountinfo");
    let workspace = env.project().canonicalize().unwrap();
    assert!(
        mountinfo.contains(&workspace.display().to_string()),
        "{mountinfo}"
    );
    let home = env.home().canonicalize().unwrap();
    for host in [
        home.display().to_string(),
        "/projects/".to_owned(),
        "sandboxes".to_owned(),
    ] {
        assert!(!mountinfo.contains(&host), "`{host}` in:\n{mountinfo}");
    }
}

fn the_spec_files_are_read_only_and_dotenv_is_hidden_inside(on: On) {
    let env = env_on(on, SPEC);
    let _down = Down(&env);
    env.write(".env", "SECRET=dotenv-secret-7f3a\n");
    let spec = fs::read_to_string(env.project().join("aistack.yaml")).unwrap();
    env.ok(&["up"]);
    assert_eq!(sh(&env, None, "wc -c < .env"), "0\n");
    for (user, script) in [
        (None, "echo '  evil: {}' >> aistack.yaml"),
        (Some("root"), "echo '  evil: {}' >> aistack.yaml"),
        (Some("root"), "rm aistack.yaml"),
        (Some("root"), "mv aistack.yaml moved.yaml"),
        (None, "mv aistack.yaml moved.yaml"),
        (None, "echo X=1 > .env"),
    ] {
        let mut args = vec!["exec"];
        if let Some(user) = user {
            args.extend(["-u", user]);
        }
        args.extend(["box", "--", "sh", "-c", script]);
        let out = env.run(&args);
        assert_ne!(
            out.status.code(),
            Some(0),
            "`{script}` as {user:?} succeeded"
        );
    }
    assert_eq!(
        fs::read_to_string(env.project().join("aistack.yaml")).unwrap(),
        spec
    );
    assert_eq!(
        fs::read_to_string(env.project().join(".env")).unwrap(),
        "SECRET=dotenv-secret-7f3a\n"
    );
}

/// Whoever runs `up` hands the daemon its environment; none of it reaches the sandbox's
/// PID 1, its commands, or a template's build steps.
fn nothing_of_the_environment_of_up_reaches_a_sandbox_or_a_build(on: On) {
    let spec = "version: 1
name: hard
network_policies:
  build: { default: deny }
templates:
  base:
    from: ./rootfs
  built:
    from: base
    network_policy: build
    run: [env]
sandboxes:
  box:
    template: built
    agent: shell
";
    let mut env = env_on(on, spec);
    env.set_var("LEAK_MARKER", "leaked-9c1d");
    let _down = Down(&env);
    env.ok(&["up"]);
    let inside = sh(&env, Some("root"), "env");
    assert!(!inside.contains("leaked-9c1d"), "{inside}");
    // The sandbox's host processes: the guest agent (namespace), or the VMM and its
    // daemons, whose command lines name the sandbox's control directory (microvm).
    let guest = guest_bin().to_string_lossy().into_owned();
    let home = env.home().to_string_lossy().into_owned();
    let mut agents = 0;
    for entry in fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let names_home = String::from_utf8_lossy(&cmdline).contains(&home);
        if !cmdline.starts_with(guest.as_bytes()) && !names_home {
            continue;
        }
        let environ = fs::read(entry.path().join("environ")).unwrap_or_default();
        assert!(!String::from_utf8_lossy(&environ).contains("leaked-9c1d"));
        agents += 1;
    }
    assert!(agents > 0);
    let build = fs::read_to_string(env.home().join("logs/template-hard-built.log")).unwrap();
    assert!(build.contains("PATH="), "{build}");
    assert!(!build.contains("leaked-9c1d"), "{build}");
}

/// The default home of root, under `/root` (mode 0700), and any `mktemp -d` home work; a
/// home another user can write to is refused when the daemon starts, with the fix.
#[test]
fn a_home_of_mode_0700_works_and_an_unsafe_home_is_refused() {
    let env = env_with(SPEC);
    let user_home = tempfile::tempdir().unwrap();
    fs::set_permissions(user_home.path(), fs::Permissions::from_mode(0o700)).unwrap();
    let aistack = |args: &[&str]| {
        Command::new(aistack_bin())
            .args(args)
            .current_dir(env.project())
            .env_remove("AISTACK_HOME")
            .env_remove("XDG_DATA_HOME")
            .env("HOME", user_home.path())
            .env("AISTACK_GUEST", guest_bin())
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    };
    let home = user_home.path().join(".local/share/aistack");
    /// Takes the sandbox down and stops this home's daemon, also when an assertion fails.
    struct Stop<'a>(&'a dyn Fn(&[&str]) -> std::process::Output, &'a Path);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            (self.0)(&["down"]);
            if let Ok(pid) = fs::read_to_string(self.1.join("run/aistack.pid")) {
                aistack_tests::terminate(
                    pid.trim().parse().unwrap_or(0),
                    rustix::process::Signal::TERM,
                );
            }
        }
    }
    let _stop = Stop(&aistack, &home);
    let up = aistack(&["up"]);
    assert!(up.status.success(), "{}", text(&up.stderr));
    let out = aistack(&["exec", "box", "--", "sh", "-c", "echo inside"]);
    assert_eq!(text(&out.stdout), "inside", "{}", text(&out.stderr));
    assert!(home.join("projects/hard").exists());
    aistack(&["down"]);
    let pid = fs::read_to_string(home.join("run/aistack.pid")).unwrap();
    aistack_tests::terminate(pid.trim().parse().unwrap(), rustix::process::Signal::TERM);
    assert!(wait_for(Duration::from_secs(10), || {
        !home.join("run/aistack.pid").exists()
    }));

    fs::set_permissions(&home, fs::Permissions::from_mode(0o775)).unwrap();
    let out = aistack(&["up"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("is writable by its group"), "{stderr}");
    assert!(stderr.contains("chmod go-w"), "{stderr}");
}

#[test]
fn every_sandbox_runs_under_limits_and_bounded_tmp_and_shm() {
    let env = env_with(&SPEC.replace("    memory: 256MiB\n", ""));
    let _down = Down(&env);
    env.ok(&["up"]);
    // `df -k`: 1K blocks. No `memory:`: the default 4 GiB, half of it for /tmp.
    let sizes = sh(&env, None, "df -k /tmp /dev/shm | awk 'NR>1 {print $2}'");
    assert_eq!(sizes, "2097152\n65536\n");
    // The sandbox's cgroup (v2 or v1), on the host: its memory and CPU limits.
    let cgroups = [
        "/sys/fs/cgroup/aistack",
        "/sys/fs/cgroup/memory/aistack",
        "/sys/fs/cgroup/cpu/aistack",
    ];
    let mut limits = Vec::new();
    for root in cgroups {
        for entry in fs::read_dir(root)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
        {
            if !entry.file_name().to_string_lossy().starts_with("hard-box-") {
                continue;
            }
            for file in [
                "memory.max",
                "memory.limit_in_bytes",
                "cpu.max",
                "cpu.cfs_quota_us",
            ] {
                if let Ok(value) = fs::read_to_string(entry.path().join(file)) {
                    limits.push(format!("{file}={}", value.trim()));
                }
            }
        }
    }
    let memory = limits
        .iter()
        .any(|l| l == "memory.max=4294967296" || l == "memory.limit_in_bytes=4294967296");
    let cpus = limits
        .iter()
        .any(|l| l == "cpu.max=200000 100000" || l == "cpu.cfs_quota_us=200000");
    assert!(memory && cpus, "{limits:?}");
}

/// A build step may make a directory of the layer a link to a host path; the daemon,
/// scrubbing the build's CA from the layer as root, must not follow it.
#[test]
fn cleaning_a_template_layer_does_not_follow_links_its_build_planted() {
    let victim = tempfile::tempdir().unwrap();
    fs::write(victim.path().join("aistack.crt"), "host file").unwrap();
    let spec = format!(
        "version: 1
name: hard
network_policies:
  build: {{ default: deny }}
templates:
  base:
    from: ./rootfs
  built:
    from: base
    network_policy: build
    run: ['rm -rf /usr/local/share/ca-certificates && ln -s {} /usr/local/share/ca-certificates']
sandboxes:
  box:
    template: built
    agent: shell
",
        victim.path().display()
    );
    let env = env_with(&spec);
    let _down = Down(&env);
    env.ok(&["up"]);
    assert_eq!(
        fs::read_to_string(victim.path().join("aistack.crt")).unwrap(),
        "host file"
    );
}
