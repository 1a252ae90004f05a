//! Who comes in (issue 16): a TCP listener serves only its own user's processes.

mod support;

use std::process::Command;
use std::time::Duration;

use aistack_spec::values::PolicyDefault::Deny;
use support::{Harness, Upstream, policy, raw, status};

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn a_client_of_another_user_is_refused_and_logged() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: switching to another user needs root");
        return;
    }
    let upstream = Upstream::http().await;
    let proxy = Harness::start(&policy(Deny, &["127.0.0.0/8"], &[]), None).await;
    let url = format!("http://127.0.0.1:{}/as-nobody", upstream.port());
    let nobody = tokio::task::spawn_blocking({
        let (proxy, url) = (proxy.url(), url.clone());
        move || {
            Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups", "curl"])
                .args(["--silent", "--max-time", "10", "--noproxy", "", "-x"])
                .args([&proxy, "-w", "\n%{http_code}", &url])
                .output()
                .expect("setpriv and curl run")
        }
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&nobody.stdout).into_owned();
    assert!(text.ends_with("\n403"), "{text}");
    assert!(
        text.contains("The proxy of `agents` serves only uid 0, the user aistack runs as; this client runs as uid 65534"),
        "{text}"
    );
    assert!(text.contains("help: Run the client as uid 0"), "{text}");
    assert!(upstream.seen().is_empty(), "nothing reached the upstream");

    // The proxy's own user goes through.
    let request = format!("GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(
        status(&raw(proxy.addr(), request.as_bytes(), WAIT).await),
        200
    );
    let entries = proxy.entries().await;
    let refused = (entries.iter().find(|e| e.status == 403)).expect("the refusal is logged");
    assert_eq!(refused.rule, "client uid 65534");
    assert_eq!(refused.host, "127.0.0.1");
}
