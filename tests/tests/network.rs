//! `aistack network log`: the network log as the proxy writes it, read back by the binary.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use aistack_tests::{TestEnv, rendered, terminate, wait_gone};

/// Older entries, in the rotated file.
const ROTATED: &[&str] = &[
    r#"{"time":"2026-12-02T04:29:58.001Z","source":"agents","method":"CONNECT","host":"api.example.com","port":443,"address":"93.184.216.34","rule":"allow *.example.com","decision":"allow","status":200,"bytes_up":1229,"bytes_down":34816,"intercepted":false}"#,
    r#"{"time":"2026-12-02T04:29:59.250Z","source":"agents","method":"GET","host":"localhost","port":8080,"address":"127.0.0.1","rule":"block list 127.0.0.0/8 (127.0.0.1)","decision":"deny","status":403,"bytes_up":0,"bytes_down":0,"intercepted":false}"#,
];

/// Newer entries, in the current file.
const CURRENT: &[&str] = &[
    r#"{"time":"2026-12-02T04:30:00.123Z","source":"builders","method":"CONNECT","host":"github.com","port":443,"address":"140.82.121.4","rule":"allow github.com","decision":"allow","status":200,"bytes_up":52,"bytes_down":3145728,"intercepted":true}"#,
    r#"{"time":"2026-12-02T04:30:01.000Z","source":"agents","method":"CONNECT","host":"nowhere.invalid","port":443,"address":null,"rule":"no address","decision":"deny","status":502,"bytes_up":0,"bytes_down":0,"intercepted":false,"error":"cannot resolve"}"#,
    r#"{"time":"2026-12-02T04:30:02.500Z","source":"builders","method":"GET","host":"[2606:4700::1111]","port":80,"address":"2606:4700::1111","rule":"allow 2606:4700::/32","decision":"allow","status":200,"bytes_up":80,"bytes_down":512,"intercepted":false,"error":"upstream reset"}"#,
];

/// A home holding project `demo`'s log: the rotated file, then the current one ending in a
/// torn line (a writer killed mid-line), which readers skip.
fn env_with_log() -> TestEnv {
    let env = TestEnv::new();
    env.write("aistack.yaml", "version: 1\nname: demo\n");
    let logs = env.home().join("logs");
    fs::create_dir_all(&logs).expect("logs dir");
    let lines = |lines: &[&str]| lines.iter().map(|l| format!("{l}\n")).collect::<String>();
    fs::write(logs.join("network-demo.jsonl.1"), lines(ROTATED)).expect("write .1");
    fs::write(
        logs.join("network-demo.jsonl"),
        format!("{}{}", lines(CURRENT), &CURRENT[0][..40]),
    )
    .expect("write log");
    env
}

#[test]
fn the_log_prints_one_aligned_line_per_request_oldest_first() {
    let env = env_with_log();
    let out = env.run(&["network", "log"]);
    assert_eq!(out.status.code(), Some(0), "{}", rendered(&out));
    insta::assert_snapshot!("network_log", rendered(&out));
}

#[test]
fn json_prints_the_log_lines_as_written() {
    let env = env_with_log();
    let out = env.ok(&["network", "log", "--json"]);
    let expected: Vec<&str> = ROTATED.iter().chain(CURRENT).copied().collect();
    assert_eq!(out.lines().collect::<Vec<_>>(), expected);
}

#[test]
fn a_name_shows_only_that_source() {
    let env = env_with_log();
    let out = env.run(&["network", "log", "builders"]);
    assert_eq!(out.status.code(), Some(0), "{}", rendered(&out));
    insta::assert_snapshot!("network_log_builders", rendered(&out));
    let json = env.ok(&["network", "log", "agents", "--json"]);
    let sources: Vec<String> = json
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            v["source"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    assert_eq!(sources, ["agents", "agents", "agents"]);
    let out = env.run(&["network", "log", "nobody"]);
    assert_eq!(out.status.code(), Some(0), "{}", rendered(&out));
    insta::assert_snapshot!("network_log_unknown_source", rendered(&out));
}

#[test]
fn without_a_log_it_says_when_one_is_written() {
    let env = TestEnv::new();
    let out = env.run(&["-p", "demo", "network", "log"]);
    assert_eq!(out.status.code(), Some(0), "{}", rendered(&out));
    insta::assert_snapshot!("network_log_missing", rendered(&out));
}

#[test]
fn an_empty_log_says_how_to_fill_it() {
    let env = TestEnv::new();
    let logs = env.home().join("logs");
    fs::create_dir_all(&logs).expect("logs dir");
    fs::write(logs.join("network-demo.jsonl"), "").expect("write log");
    let out = env.run(&["-p", "demo", "network", "log"]);
    assert_eq!(out.status.code(), Some(0), "{}", rendered(&out));
    insta::assert_snapshot!("network_log_empty", rendered(&out));
}

#[test]
fn follow_prints_requests_as_they_are_logged() {
    let env = env_with_log();
    let mut child = env
        .cmd(&[
            "-p", "demo", "network", "log", "agents", "--json", "--follow",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("aistack runs");
    let stdout = child.stdout.take().expect("piped stdout");
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let next = || {
        received
            .recv_timeout(Duration::from_secs(10))
            .expect("a line within 10 s")
    };
    for expected in [ROTATED[0], ROTATED[1], CURRENT[1]] {
        assert_eq!(next(), expected);
    }
    // The torn line is completed, a line of another source is skipped, then one of ours.
    let path = env.home().join("logs/network-demo.jsonl");
    let mut log = fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("open log");
    let appended = CURRENT[1].replace("04:30:01.000Z", "04:31:00.000Z");
    write!(log, "{}\n{appended}\n", &CURRENT[0][40..]).expect("append");
    assert_eq!(next(), appended);
    // The writer rotates: the file moves to `.1` and a new one starts.
    fs::rename(&path, env.home().join("logs/network-demo.jsonl.1")).expect("rotate");
    let rotated = CURRENT[1].replace("04:30:01.000Z", "04:32:00.000Z");
    fs::write(&path, format!("{rotated}\n")).expect("new log");
    assert_eq!(next(), rotated);
    let pid = i32::try_from(child.id()).expect("pid");
    terminate(pid, rustix::process::Signal::INT);
    assert!(
        wait_gone(pid, Duration::from_secs(5)),
        "Ctrl-C ends --follow"
    );
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
    assert!(
        received.try_recv().is_err(),
        "nothing else was printed, the other source's line included"
    );
}
