//! A sandbox's network seen from inside a real one (issue 16): aistack's own listeners
//! are out of reach whatever its policy allows, while its models stay reachable; opening
//! more connections than its cap breaks nothing once they close; and a project brought
//! down and up again in one daemon gets its network back.

use std::fs;
use std::process::Command;
use std::time::Duration;

use aistack_tests::sandbox::{Down, busybox_rootfs, guest_bin};
use aistack_tests::upstream::upstream;
use aistack_tests::{TestEnv, free_port, wait_for};

/// A busybox sandbox `box`; `extra` is appended to its section, `rest` to the file.
fn spec(extra: &str, rest: &str) -> String {
    format!(
        "version: 1\nname: net\ntemplates:\n  base:\n    from: ./rootfs\nsandboxes:\n  box:\n    \
         template: base\n    agent: shell\n{extra}{rest}"
    )
}

fn env() -> TestEnv {
    let mut env = TestEnv::new();
    env.set_var("AISTACK_GUEST", guest_bin());
    busybox_rootfs(&env.project().join("rootfs"));
    env
}

/// A sandbox under a policy `local` that reaches only a loopback upstream of the test's,
/// and that upstream's port.
fn env_reaching_an_upstream() -> (TestEnv, u16) {
    let env = env();
    let port = upstream();
    let policy = format!(
        "network_policies:\n  local:\n    default: deny\n    allow: [\"127.0.0.1/32:{port}\"]\n"
    );
    env.write(
        "aistack.yaml",
        &env.spec(&spec("    network_policy: local\n", &policy)),
    );
    (env, port)
}

/// `aistack exec box -- sh -c SCRIPT`: exit code, stdout, stderr.
fn sh(env: &TestEnv, script: &str) -> (Option<i32>, String, String) {
    let out = env.run(&["exec", "box", "--", "sh", "-c", script]);
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// A GET of `url` written to the sandbox's proxy by hand (busybox's `nc`), so the whole
/// answer comes back, the proxy's refusals included.
fn through_proxy(env: &TestEnv, url: &str) -> String {
    let script = format!(
        "printf 'GET {url} HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n' | nc 127.0.0.1 3128"
    );
    sh(env, &script).1
}

/// The first line of an answer.
fn status_line(answer: &str) -> &str {
    answer.lines().next().unwrap_or_default().trim_end()
}

/// The endpoint port of the project's proxy for `policy`.
fn proxy_port(env: &TestEnv, policy: &str) -> u16 {
    let status = env.status();
    let endpoint = (status["resources"].as_array().unwrap().iter())
        .find(|r| r["kind"] == "proxy" && r["name"] == policy)
        .and_then(|r| r["endpoint"].as_str())
        .unwrap_or_else(|| panic!("no proxy `{policy}` in {status}"))
        .to_owned();
    endpoint.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// Neither a rule that lifts the whole block list nor one that names loopback reaches the
/// gateway's administration, another policy's listener or a published port; the
/// sandbox's models stay reachable at `models.aistack.internal`, and loopback servers that
/// are not aistack's stay reachable by the loopback rule.
#[test]
fn aistacks_own_listeners_are_out_of_reach_whatever_the_policy() {
    let env = env();
    env.link_model("smollm2.gguf");
    let published = free_port();
    let other = upstream();
    let write = |allow: &str| {
        let sandbox = format!(
            "    models: [chat]\n    network_policy: open\n    ports: [\"127.0.0.1:{published}:3000\"]\n"
        );
        let rest = format!(
            "models:\n  chat: {{ source: ./models/smollm2.gguf, context_size: 512 }}\n\
             network_policies:\n  open:\n    default: deny\n    allow: [{allow}]\n  \
             other:\n    default: allow\n"
        );
        env.write("aistack.yaml", &env.spec(&spec(&sandbox, &rest)));
    };
    write(r#""0.0.0.0/0", "::/0""#);
    let _down = Down(&env);
    env.ok(&["up"]);
    let gateway = env.gateway_port();
    let listener = proxy_port(&env, "other");
    let own = [
        format!("http://127.0.0.1:{gateway}/metrics"),
        format!("http://127.0.0.1:{gateway}/api/pull"),
        format!("http://127.0.0.1:{listener}/"),
        format!("http://127.0.0.1:{published}/"),
        format!("http://0.0.0.0:{gateway}/metrics"),
    ];
    let models = |env: &TestEnv| {
        let (code, listed, stderr) = sh(env, "wget -q -O - ${CHAT_URL}models");
        assert_eq!(code, Some(0), "{stderr}");
        assert!(listed.contains("\"id\":\"chat\""), "{listed}");
    };

    let refused = |env: &TestEnv| {
        for url in &own {
            let answer = through_proxy(env, url);
            let status = status_line(&answer);
            assert_eq!(status, "HTTP/1.1 403 Forbidden", "{url}: {answer}");
            assert!(answer.contains(": aistack listener "), "{url}: {answer}");
            assert!(
                answer.contains("help: Reach models at `http://models.aistack.internal/`"),
                "{url}: {answer}"
            );
        }
    };
    let not_ours = format!("http://127.0.0.1:{other}/not-ours");

    // `0.0.0.0/0` is the internet, not this machine: the block list stands for loopback,
    // and aistack's listeners are refused before it is even asked.
    refused(&env);
    let answer = through_proxy(&env, &not_ours);
    assert_eq!(status_line(&answer), "HTTP/1.1 403 Forbidden", "{answer}");
    assert!(
        answer.contains(": block list 127.0.0.0/8 (127.0.0.1)"),
        "{answer}"
    );
    models(&env);

    // `127.0.0.0/8` opens loopback, but not aistack's own listeners on it.
    write(r#""127.0.0.0/8", "0.0.0.0/8""#);
    let up = env.ok(&["up"]);
    assert!(up.contains("~ proxy open"), "{up}");
    refused(&env);
    let answer = through_proxy(&env, &not_ours);
    assert_eq!(status_line(&answer), "HTTP/1.1 200 OK", "{answer}");
    models(&env);
}

/// The daemon serves at most 256 of one sandbox's proxy connections at once and holds the
/// rest in the socket's queue, so a sandbox that opens 400 cannot run it out of
/// descriptors, even at the common soft limit of 1024 that the daemon raises to its hard
/// limit; once they close, the next connection works.
#[test]
fn more_connections_than_the_cap_break_nothing_once_they_close() {
    let (env, port) = env_reaching_an_upstream();
    let _down = Down(&env);
    // The daemon starts with a soft limit of 1024 under a hard one of 4096.
    let up = env.cmd(&["up"]);
    let mut limited = Command::new("prlimit");
    limited
        .arg("--nofile=1024:4096")
        .arg(up.get_program())
        .args(up.get_args())
        .current_dir(up.get_current_dir().unwrap());
    for (name, value) in up.get_envs() {
        match value {
            Some(value) => limited.env(name, value),
            None => limited.env_remove(name),
        };
    }
    let out = limited.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let daemon = env.daemon_pid().expect("the daemon runs");
    let limits = fs::read_to_string(format!("/proc/{daemon}/limits")).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert_eq!(
        open_files.split_whitespace().collect::<Vec<_>>()[3..5],
        ["4096", "4096"],
        "the daemon raised its soft limit: {open_files}"
    );
    let fetch = format!("wget -q -O - http://127.0.0.1:{port}/next");
    assert_eq!(sh(&env, &fetch).0, Some(0));

    // 400 idle connections to the proxy, held open by `sleep`.
    let open = "i=0; while [ $i -lt 400 ]; do \
                sleep 60 2>/dev/null | nc 127.0.0.1 3128 >/dev/null 2>&1 & echo $! >> /tmp/nc.pids; \
                i=$((i+1)); done";
    let (code, _, stderr) = sh(&env, open);
    assert_eq!(code, Some(0), "{stderr}");
    let log = env.home().join("logs/daemon.log");
    let capped = wait_for(Duration::from_secs(20), || {
        fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("`box` has 256 connections open to its proxy; more wait until one closes")
    });
    assert!(capped, "{}", fs::read_to_string(&log).unwrap_or_default());
    std::thread::sleep(Duration::from_millis(500));
    let descriptors = fs::read_dir(format!("/proc/{daemon}/fd")).unwrap().count();
    assert!(
        (256..256 + 150).contains(&descriptors),
        "the daemon holds {descriptors} descriptors"
    );

    // They close; the sandbox's next connection is served.
    let (code, _, stderr) = sh(&env, "kill $(cat /tmp/nc.pids)");
    assert_eq!(code, Some(0), "{stderr}");
    let served = wait_for(Duration::from_secs(20), || {
        let (code, body, _) = sh(&env, &fetch);
        code == Some(0) && body.starts_with("GET /next HTTP/1.1")
    });
    assert!(served, "{}", fs::read_to_string(&log).unwrap_or_default());
}

/// `up`, `down` and `up` again in one daemon: the second `up` makes the project's CA
/// again (`down` removed it with the project's directory) and the sandbox's network works.
#[test]
fn up_down_up_in_one_daemon_gives_the_sandbox_its_network_again() {
    let (env, port) = env_reaching_an_upstream();
    let _down = Down(&env);
    let fetch = format!("wget -q -O - http://127.0.0.1:{port}/again");
    env.ok(&["up"]);
    let daemon = env.daemon_pid();
    assert_eq!(sh(&env, &fetch).0, Some(0));
    let first_ca = fs::read_to_string(env.home().join("projects/net/ca.pem")).unwrap();
    env.ok(&["down"]);
    assert!(!env.home().join("projects/net").exists());

    env.ok(&["up"]);
    assert_eq!(env.daemon_pid(), daemon, "one daemon throughout");
    let (code, body, stderr) = sh(&env, &fetch);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(body.starts_with("GET /again HTTP/1.1"), "{body}");
    // The sandbox trusts the CA that is on disk now, which its proxy signs with.
    let ca = fs::read_to_string(env.home().join("projects/net/ca.pem")).unwrap();
    assert_ne!(ca, first_ca, "a new CA");
    let (_, inside, _) = sh(&env, "cat /etc/ssl/certs/aistack-bundle.pem");
    assert!(inside.contains(ca.trim()), "{inside}");
}
