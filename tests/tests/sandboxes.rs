//! Sandboxes through the real binary: `up` imports a busybox template and starts a
//! namespace sandbox, `aistack exec` runs commands in it with the command's exit code,
//! a killed guest agent is repaired by the next `up` with the sandbox's files kept, and
//! `down` removes it. The contract of the way out (policy proxy, models, credentials,
//! published ports) runs on both backends: `<test>::namespace` and `<test>::microvm`
//! (under TCG here; `tests/microvm.rs` has the microVM's own).

use std::fs;
use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use aistack_tests::on_both_backends;
use aistack_tests::sandbox::{Down, On, assert_no_key, busybox_rootfs, guest_bin, key_search};
use aistack_tests::{TestEnv, wait_for};

const SPEC: &str = "version: 1
name: sbx
templates:
  base:
    from: ./rootfs
    env: { GREETING: hello }
sandboxes:
  box:
    template: base
    agent: shell
    memory: 256MiB
    cpus: 1
    env: { WHO: sandbox }
";

on_both_backends!(
    listed_models_are_reachable_inside_and_no_others,
    the_network_is_the_policy_proxy,
    the_api_key_goes_over_tls_only_and_never_reaches_the_sandbox,
    a_published_port_reaches_a_server_inside,
);

/// [`SPEC`], its sandbox on `on`.
fn spec(on: On) -> String {
    match on {
        On::Namespace => SPEC.to_owned(),
        On::Microvm => SPEC.replace(
            "    agent: shell\n",
            "    agent: shell\n    isolation: microvm\n",
        ),
    }
}

fn env() -> TestEnv {
    env_on(On::Namespace)
}

fn env_on(on: On) -> TestEnv {
    let mut env = TestEnv::new();
    env.set_var("AISTACK_GUEST", guest_bin());
    on.prepare(&mut env);
    busybox_rootfs(&env.project().join("rootfs"));
    env.write("aistack.yaml", &env.spec(&spec(on)));
    env
}

/// `aistack exec box -- sh -c SCRIPT`.
fn sh(env: &TestEnv, script: &str) -> std::process::Output {
    env.run(&["exec", "box", "--", "sh", "-c", script])
}

/// `aistack exec -u USER box -- sh -c SCRIPT`.
fn sh_as(env: &TestEnv, user: &str, script: &str) -> std::process::Output {
    env.run(&["exec", "-u", user, "box", "--", "sh", "-c", script])
}

/// The same as [`sh`], asserting success; its stdout.
fn sh_ok(env: &TestEnv, script: &str) -> String {
    env.ok(&["exec", "box", "--", "sh", "-c", script])
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_owned()
}

/// The host pids of processes running the guest agent for this test's home: those in a
/// cgroup of its sandboxes (the agent gets no environment to tell them by).
fn guest_pids(env: &TestEnv) -> Vec<i32> {
    let guest = guest_bin().to_string_lossy().into_owned();
    let processes = aistack_tests::sandbox::sandbox_processes(env);
    (processes.into_iter())
        .filter(|(_, _, cmdline)| cmdline.starts_with(&guest))
        .map(|(pid, _, _)| pid)
        .collect()
}

#[test]
fn up_exec_repair_and_down() {
    let env = env();
    let _down = Down(&env);
    env.ok(&["up"]);

    let out = sh(&env, "echo $GREETING $WHO from $(pwd) as $(id -un); exit 5");
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    let project = env.project().canonicalize().unwrap();
    assert_eq!(
        text(&out.stdout),
        format!("hello sandbox from {} as agent", project.display())
    );

    let mut cat = env
        .cmd(&[
            "exec",
            "-i",
            "-e",
            "EXTRA=1",
            "-u",
            "root",
            "box",
            "--",
            "sh",
            "-c",
            "cat; echo $EXTRA $(id -u)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    cat.stdin.take().unwrap().write_all(b"piped\n").unwrap();
    let out = cat.wait_with_output().unwrap();
    assert_eq!(text(&out.stdout), "piped\n1 0");

    // The workspace is the project directory; a file in the sandbox's own layer too.
    sh_ok(&env, "echo kept > note && echo layer > /home/agent/layer");
    assert_eq!(
        fs::read_to_string(env.project().join("note")).unwrap(),
        "kept\n"
    );

    // Killing the guest agent ends the sandbox; the next `up` starts it again.
    let pids = guest_pids(&env);
    assert!(!pids.is_empty(), "the guest agent runs");
    for pid in &pids {
        aistack_tests::terminate(*pid, rustix::process::Signal::KILL);
    }
    assert!(wait_for(Duration::from_secs(10), || guest_pids(&env).is_empty()));
    let failed = env.run(&["exec", "box", "--", "true"]);
    assert_eq!(failed.status.code(), Some(1));
    assert!(
        text(&failed.stderr).contains("Sandbox `box` is not running"),
        "{}",
        text(&failed.stderr)
    );
    let plan = env.ok(&["plan"]);
    assert!(plan.contains("+ sandbox box"), "{plan}");
    env.ok(&["up"]);
    let out = sh(&env, "cat note /home/agent/layer");
    assert_eq!(text(&out.stdout), "kept\nlayer", "{}", text(&out.stderr));

    // `-t` runs the command on a terminal of its own; `sandbox run` starts the agent
    // (here the shell, reading its commands from a pipe).
    assert_eq!(
        env.ok(&["exec", "-t", "box", "--", "tty"]).trim(),
        "/dev/pts/0"
    );
    assert_eq!(
        text(&env.run(&["exec", "box", "--", "tty"]).stdout),
        "not a tty"
    );
    let mut run = env
        .cmd(&["sandbox", "run", "box"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    run.stdin
        .take()
        .unwrap()
        .write_all(b"echo agent in $(pwd); exit 4\n")
        .unwrap();
    let out = run.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(text(&out.stdout), format!("agent in {}", project.display()));

    let listed: serde_json::Value =
        serde_json::from_str(&env.ok(&["sandbox", "ls", "--json"])).unwrap();
    assert_eq!(listed[0]["name"], "box");
    assert_eq!(listed[0]["state"], "running");
    assert_eq!(listed[0]["isolation"], "namespace");
    let reason = listed[0]["isolation_reason"].as_str().unwrap();
    assert!(reason.starts_with("auto: "), "{reason}");
    let status = env.status();
    let shown = (status["resources"].as_array().unwrap().iter())
        .find(|r| r["kind"] == "sandbox")
        .unwrap();
    assert_eq!(shown["detail"], format!("namespace ({reason})"), "{status}");
    // `sandbox stop` ends its processes and keeps its files; `up` starts it again.
    env.ok(&["sandbox", "stop", "box"]);
    assert!(wait_for(Duration::from_secs(10), || guest_pids(&env).is_empty()));
    let listed: serde_json::Value =
        serde_json::from_str(&env.ok(&["sandbox", "ls", "--json"])).unwrap();
    assert_eq!(listed[0]["state"], "stopped");
    let log = env.ok(&["sandbox", "logs", "box"]);
    assert!(log.contains("aistack-guest: shutting down"), "{log}");
    env.ok(&["up"]);
    let out = env.run(&["exec", "box", "--", "cat", "/home/agent/layer"]);
    assert_eq!(text(&out.stdout), "layer", "{}", text(&out.stderr));
    let missing = env.run(&["sandbox", "logs", "nope"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing.stderr).contains("No sandbox `nope` in project `sbx`"));

    env.ok(&["down"]);
    assert!(wait_for(Duration::from_secs(10), || guest_pids(&env).is_empty()));
    assert!(!env.home().join("projects/sbx/sandboxes/box").exists());
    assert_eq!(
        fs::read_to_string(env.project().join("note")).unwrap(),
        "kept\n"
    );
}

/// An agent the template does not contain fails `up` before the sandbox starts, naming
/// the build step that installs it.
#[test]
fn an_agent_the_template_lacks_names_its_install_step() {
    let env = env();
    let spec = SPEC.replace("agent: shell", "agent: claude");
    env.write("aistack.yaml", &env.spec(&spec));
    let out = env.run(&["up"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("Agent `claude` of sandbox `box` is not installed in template `base`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("help: Add the step that installs it to `templates.base.run`: `npm install -g @anthropic-ai/claude-code`"),
        "{stderr}"
    );
    assert!(guest_pids(&env).is_empty());
}

/// A sandbox reaches the models it lists at `models.aistack.internal` through its proxy,
/// with `CHAT_URL` and `CHAT_MODEL` set and the gateway's key added by the proxy; a model
/// it does not list is refused and left out of listings, and nothing else is reachable.
fn listed_models_are_reachable_inside_and_no_others(on: On) {
    const KEY: &str = "gw-key-sandbox-5d1e0b";
    let mut env = env_on(on);
    env.set_var("GATEWAY_KEY", KEY);
    env.link_model("smollm2.gguf");
    let spec = format!(
        "version: 1\nname: sbx\ngateway: {{ listen: 127.0.0.1:{port}, api_key_env: GATEWAY_KEY }}\n\
         models:\n  chat: {{ source: ./models/smollm2.gguf, context_size: 512 }}\n  \
         other: {{ source: ./models/smollm2.gguf, context_size: 512, mode: embedding }}\n\
         {rest}    models: [chat]\n",
        port = env.gateway_port(),
        rest = spec(on).split_once("name: sbx\n").unwrap().1,
    );
    env.write("aistack.yaml", &spec);
    let _down = Down(&env);
    env.ok(&["up"]);

    assert_eq!(
        sh_ok(&env, "echo $CHAT_URL $CHAT_MODEL"),
        "http://models.aistack.internal/engines/v1/ chat\n"
    );
    let listed = sh_ok(&env, "wget -q -O - ${CHAT_URL}models");
    assert!(listed.contains("\"id\":\"chat\""), "{listed}");
    assert!(!listed.contains("other"), "{listed}");
    // busybox's wget sends GET through a proxy whatever `--post-data` says, so the posts
    // are written out for busybox's nc, to the proxy port the variables name.
    let post = |path: &str, body: &str| {
        let head = format!(
            "POST http://models.aistack.internal{path} HTTP/1.1\\r\\nHost: models.aistack.internal\\r\\n\
             Content-Type: application/json\\r\\nContent-Length: {}\\r\\nConnection: close\\r\\n\\r\\n",
            body.len()
        );
        let script = format!("printf '{head}%s' '{body}' | nc 127.0.0.1 ${{http_proxy##*:}}");
        let out = sh_ok(&env, &script);
        let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
        (
            head.lines().next().unwrap_or_default().to_owned(),
            body.to_owned(),
        )
    };
    let (status, chat) = post(
        "/engines/v1/chat/completions",
        r#"{"model":"chat","messages":[{"role":"user","content":"Hi"}],"max_tokens":3}"#,
    );
    assert_eq!(status, "HTTP/1.1 200 OK", "{chat}");
    let chat: serde_json::Value = serde_json::from_str(&chat).unwrap();
    assert_eq!(chat["model"], "chat", "{chat}");
    assert_eq!(chat["choices"][0]["finish_reason"], "length", "{chat}");

    let (status, refusal) = post("/v1/embeddings", r#"{"model":"other","input":"x"}"#);
    assert_eq!(status, "HTTP/1.1 403 Forbidden", "{refusal}");
    assert!(
        refusal
            .contains("Model `other` is not listed in this sandbox's `models:` (listed: `chat`)"),
        "{refusal}"
    );
    let admin = sh(&env, "wget -q -O - http://models.aistack.internal/metrics");
    assert_eq!(
        admin.status.code(),
        Some(1),
        "the gateway's metrics stay outside"
    );
    let elsewhere = sh(&env, "wget -S -O - http://127.0.0.2:9/");
    assert!(
        text(&elsewhere.stderr).contains("403"),
        "a sandbox without a policy reaches only its models: {}",
        text(&elsewhere.stderr)
    );
    let out = sh_as(&env, "root", "env; cat /proc/*/environ");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(KEY),
        "the gateway key is inside"
    );

    // Outside, the same gateway still serves the other model.
    let port = env.gateway_port();
    let models = std::process::Command::new("curl")
        .args(["-s", "-H", &format!("authorization: Bearer {KEY}")])
        .arg(format!("http://127.0.0.1:{port}/v1/models"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&models.stdout).contains("other"));
}

/// The only way out is the sandbox's policy: allowed requests pass through the proxy
/// (found through the variables every command gets), others get its 403, direct
/// connections fail, and the network log names the sandbox.
fn the_network_is_the_policy_proxy(on: On) {
    let port = aistack_tests::upstream::upstream();
    let env = env_on(on);
    let spec = format!(
        "{}    network_policy: local\nnetwork_policies:\n  local:\n    default: deny\n    allow: [\"127.0.0.1/32:{port}\"]\n",
        spec(on)
    );
    env.write("aistack.yaml", &env.spec(&spec));
    let _down = Down(&env);
    env.ok(&["up"]);

    let fetch = format!("wget -q -O - http://127.0.0.1:{port}/through-the-proxy");
    let out = sh(&env, &fetch);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("GET /through-the-proxy HTTP/1.1"),
        "{}",
        text(&out.stdout)
    );

    let denied = env.run(&[
        "exec",
        "box",
        "--",
        "wget",
        "-q",
        "-O",
        "-",
        "http://127.0.0.2:9/",
    ]);
    assert_eq!(denied.status.code(), Some(1));
    assert!(
        text(&denied.stderr).contains("403"),
        "{}",
        text(&denied.stderr)
    );

    let direct = format!("env -u http_proxy wget -q -O - http://127.0.0.1:{port}/direct");
    let out = sh(&env, &direct);
    assert_ne!(out.status.code(), Some(0), "a direct connection must fail");

    let vars = sh_ok(
        &env,
        "echo $HTTPS_PROXY $https_proxy $SSL_CERT_FILE; grep -c BEGIN $NODE_EXTRA_CA_CERTS",
    );
    assert_eq!(
        vars.trim(),
        "http://127.0.0.1:3128 http://127.0.0.1:3128 /etc/ssl/certs/aistack-bundle.pem\n1"
    );

    // The log's writer batches lines; it holds both decisions within moments.
    let decided = |entries: &[serde_json::Value]| {
        entries
            .iter()
            .any(|e| e["decision"] == "allow" && e["source"] == "box")
            && entries
                .iter()
                .any(|e| e["decision"] == "deny" && e["host"] == "127.0.0.2")
    };
    let mut log = String::new();
    let found = wait_for(Duration::from_secs(5), || {
        log = env.ok(&["network", "log", "box", "--json"]);
        let entries: Vec<serde_json::Value> = log
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        decided(&entries)
    });
    assert!(found, "{log}");
}

/// The policy's credential never reaches the sandbox, and goes over TLS only: a plain-HTTP
/// request to its host is refused with the fix and never reaches the stand-in API (the
/// key inside TLS is `agents.rs`'s, whose template has TLS clients; busybox's cannot speak
/// to an intercepting proxy).
fn the_api_key_goes_over_tls_only_and_never_reaches_the_sandbox(on: On) {
    const KEY: &str = "sk-sandbox-e2e-7c41a9-secret";
    let (port, heads) = aistack_tests::upstream::recording("127.0.0.1", "200 OK", "ok");
    let mut env = env_on(on);
    env.set_var("STANDIN_API_KEY", KEY);
    let spec = format!(
        "{}    network_policy: api\nnetwork_policies:\n  api:\n    default: deny\n    allow: [\"127.0.0.1/32:{port}\"]\n    credentials:\n      - {{ host: 127.0.0.1, header: x-api-key, from_env: STANDIN_API_KEY }}\n",
        spec(on)
    );
    env.write("aistack.yaml", &env.spec(&spec));
    let _down = Down(&env);
    env.ok(&["up"]);
    let call = format!(
        "printf 'GET http://127.0.0.1:{port}/v1/messages HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n' | nc 127.0.0.1 3128"
    );
    let answer = sh_ok(&env, &call);
    assert!(answer.starts_with("HTTP/1.1 403 Forbidden"), "{answer}");
    assert!(
        answer.contains("The proxy adds the credential for `127.0.0.1` over https only, not to a plain-HTTP request"),
        "{answer}"
    );
    assert!(
        answer.contains(&format!("help: Use `https://127.0.0.1:{port}/`")),
        "{answer}"
    );
    assert!(heads.lock().unwrap().is_empty(), "nothing reached the API");

    let dirs = format!(
        "/bin /etc /home /root /run /tmp /usr /var {}",
        env.project().canonicalize().unwrap().display()
    );
    let search = key_search(KEY, &dirs);
    for user in ["agent", "root"] {
        let out = sh_as(&env, user, &search);
        assert_no_key(&String::from_utf8_lossy(&out.stdout), KEY, user);
    }
}

/// `ports:` publishes a sandbox port on the host through the agent's tunnel, and a
/// restarted daemon publishes it again.
fn a_published_port_reaches_a_server_inside(on: On) {
    let host_port = aistack_tests::free_port();
    let env = env_on(on);
    let spec = format!("{}    ports: [\"127.0.0.1:{host_port}:3000\"]\n", spec(on));
    env.write("aistack.yaml", &env.spec(&spec));
    let _down = Down(&env);
    env.ok(&["up"]);
    let serve = "mkdir -p /tmp/www && echo served-inside > /tmp/www/index.html && httpd -p 127.0.0.1:3000 -h /tmp/www";
    sh_ok(&env, serve);
    let get = || {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", host_port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").ok()?;
        let mut answer = String::new();
        std::io::Read::read_to_string(&mut stream, &mut answer).ok()?;
        answer.contains("served-inside").then_some(())
    };
    assert!(
        wait_for(Duration::from_secs(5), || get().is_some()),
        "the published port answers: {}",
        fs::read_to_string(env.home().join("logs/daemon.log")).unwrap_or_default()
    );

    let daemon = env.daemon_pid().expect("the daemon runs");
    aistack_tests::terminate(daemon, rustix::process::Signal::KILL);
    assert!(aistack_tests::wait_gone(daemon, Duration::from_secs(10)));
    env.ok(&["up"]);
    assert!(
        wait_for(Duration::from_secs(5), || get().is_some()),
        "published again: {}",
        fs::read_to_string(env.home().join("logs/daemon.log")).unwrap_or_default()
    );
}

/// Templates build on each other: `run:` steps write a layer of their own (a removal
/// too), a template `from:` another sees both, an unchanged template is not built again,
/// and a failing step fails `up` with its exit code and output.
#[test]
fn run_steps_build_cached_layers() {
    let env = env();
    let spec = "version: 1
name: sbx
templates:
  base:
    from: ./rootfs
    run: [\"echo built > /etc/built\", \"rm /bin/vi\"]
    env: { STAGE: base }
  child:
    from: base
    run: [\"echo $$STAGE-child > /etc/child\"]
sandboxes:
  box:
    template: child
    agent: shell
";
    env.write("aistack.yaml", &env.spec(spec));
    let _down = Down(&env);
    env.ok(&["up"]);
    assert_eq!(
        sh_ok(
            &env,
            "cat /etc/built /etc/child; test -e /bin/vi || echo no-vi"
        ),
        "built\nbase-child\nno-vi\n",
        "a template's steps see the `env:` of the templates it is built from"
    );
    assert!(env.ok(&["plan"]).contains("No changes."));
    let log = fs::read_to_string(env.home().join("logs/template-sbx-base.log")).unwrap();
    assert_eq!(log.matches("$ echo built").count(), 1, "{log}");
    // The host tree the template came from is untouched.
    assert!(env.project().join("rootfs/bin/vi").exists());

    let listed: serde_json::Value =
        serde_json::from_str(&env.ok(&["template", "ls", "--json"])).unwrap();
    let child = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "child")
        .unwrap();
    assert_eq!(child["steps"], 1);
    assert_eq!(child["layers"].as_array().unwrap().len(), 3, "{child}");
    let used = env.run(&["template", "rm", "child"]);
    assert_eq!(used.status.code(), Some(1));
    assert!(text(&used.stderr).contains("Template `child` is used by `sandbox box`"));
    // `sandbox rm` drops the sandbox and its own files; `template rm` the built layers.
    sh_ok(&env, "echo mine > /home/agent/own");
    let saved = env.ok(&["sandbox", "save", "box", "sbx/saved:1"]);
    assert!(
        saved.contains("Saved sandbox `box` as `docker.io/sbx/saved:1`"),
        "{saved}"
    );
    assert!(env.ok(&["sandbox", "rm", "box"]).contains("- sandbox box"));
    assert!(!env.home().join("projects/sbx/sandboxes/box").exists());
    env.ok(&["template", "rm", "child"]);
    let layer = child["layers"][0].as_str().unwrap();
    assert!(!std::path::Path::new(layer).exists(), "{layer}");
    env.ok(&["up"]);
    assert_eq!(
        sh(&env, "cat /home/agent/own").status.code(),
        Some(1),
        "a new sandbox"
    );
    assert_eq!(sh_ok(&env, "cat /etc/child"), "base-child\n");

    // The saved image is a template's base: the sandbox's own files are in it, and the
    // template's removal too. The agent's files are this sandbox's agent's (the
    // workspace's owner on the host), so it can write them.
    let from_saved = spec.replace(
        "sandboxes:\n  box:\n    template: child",
        "  saved:\n    from: sbx/saved:1\nsandboxes:\n  box:\n    template: saved",
    );
    env.write("aistack.yaml", &env.spec(&from_saved));
    env.ok(&["up"]);
    assert_eq!(
        sh_ok(
            &env,
            "cat /home/agent/own /etc/child; test -e /bin/vi || echo no-vi"
        ),
        "mine\nbase-child\nno-vi\n"
    );
    assert_eq!(
        sh_ok(
            &env,
            "stat -c '%U %G' /home/agent /home/agent/own; echo more >> /home/agent/own; touch /home/agent/new; cat /home/agent/own"
        ),
        "agent agent\nagent agent\nmine\nmore\n"
    );

    let failing = spec.replace("rm /bin/vi", "echo oops >&2; exit 3");
    env.write("aistack.yaml", &env.spec(&failing));
    let out = env.run(&["up"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("Step 2 of template `base` failed (exit 3): `echo oops >&2; exit 3`"),
        "{stderr}"
    );
    assert!(stderr.contains("oops"), "{stderr}");
    assert!(
        stderr.contains("help: Fix the step in `templates.base.run`"),
        "{stderr}"
    );
}

/// `from:` an image in a registry: its layers are applied in order, whiteouts included.
#[test]
fn a_template_from_an_image_applies_its_layers() {
    let registry = aistack_tests::registry::Registry::start();
    let env = env();
    let upper = env.project().join("upper");
    fs::create_dir_all(upper.join("etc")).unwrap();
    fs::create_dir_all(upper.join("bin")).unwrap();
    fs::write(upper.join("etc/motd"), "from the image\n").unwrap();
    fs::write(upper.join("bin/.wh.vi"), "").unwrap();
    let image = format!("{}/sandbox/busybox:1", registry.addr());
    aistack_tests::sandbox::push_image(&[&env.project().join("rootfs"), &upper], &image);
    let spec = SPEC.replace("from: ./rootfs", &format!("from: {image}"));
    env.write("aistack.yaml", &env.spec(&spec));
    let _down = Down(&env);
    env.ok(&["up"]);
    assert_eq!(
        sh_ok(&env, "cat /etc/motd; test -e /bin/vi || echo no-vi; id -un"),
        "from the image\nno-vi\nagent\n"
    );
    // The image is in the store, not among the models.
    let models = env.ok(&["model", "ls"]);
    assert!(!models.contains("busybox"), "{models}");
}
