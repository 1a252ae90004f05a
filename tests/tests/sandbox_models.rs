//! A sandbox's models through a gateway without a key (issue 16): the gateway refuses host
//! names other than `localhost` and IP addresses (DNS rebinding), and the sandbox's proxy
//! addresses it as `models.aistack.internal` with the sandbox's scope, which it allows.
//! Through the real binary, the real proxy and a namespace sandbox (root).

use aistack_tests::TestEnv;
use aistack_tests::sandbox::{Down, busybox_rootfs, guest_bin};

#[test]
fn a_sandbox_reaches_its_models_on_a_gateway_without_a_key() {
    let mut env = TestEnv::new();
    env.set_var("AISTACK_GUEST", guest_bin());
    busybox_rootfs(&env.project().join("rootfs"));
    env.link_model("smollm2.gguf");
    env.write(
        "aistack.yaml",
        &env.spec(
            "version: 1
name: sbxmodels
models:
  chat: { source: ./models/smollm2.gguf, context_size: 512 }
templates:
  base: { from: ./rootfs }
sandboxes:
  box:
    template: base
    agent: shell
    models: [chat]
",
        ),
    );
    let _down = Down(&env);
    env.ok(&["up"]);

    let listed = env.ok(&[
        "exec",
        "box",
        "--",
        "sh",
        "-c",
        "wget -q -O - ${CHAT_URL}models",
    ]);
    assert!(listed.contains("\"id\":\"chat\""), "{listed}");
    let body = r#"{"model":"chat","messages":[{"role":"user","content":"Hi"}],"max_tokens":2}"#;
    let script = format!(
        "printf 'POST http://models.aistack.internal/v1/chat/completions HTTP/1.1\\r\\n\
         Host: models.aistack.internal\\r\\nContent-Type: application/json\\r\\n\
         Content-Length: {}\\r\\nConnection: close\\r\\n\\r\\n%s' '{body}' \
         | nc 127.0.0.1 ${{http_proxy##*:}}",
        body.len()
    );
    let reply = env.ok(&["exec", "box", "--", "sh", "-c", &script]);
    assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
    assert!(reply.contains("\"finish_reason\":\"length\""), "{reply}");

    // The same name from outside, without the scope a sandbox's proxy adds, is refused.
    let out = std::process::Command::new("curl")
        .args(["-s", "-H", "Host: models.aistack.internal"])
        .arg(format!("http://127.0.0.1:{}/v1/models", env.gateway_port()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Host `models.aistack.internal` is refused"),
        "{text}"
    );
}
