//! Network-policy proxy performance (issue 5): the proxy `aistack up` runs for a policy,
//! against Debian's tinyproxy, both forwarding plain HTTP to a loopback upstream inside
//! this process, in the same run, interleaved (direct, tinyproxy, aistack in every phase of
//! every round), medians over rounds.
//!
//! 1. `GET /1k` (1 KiB body), a new client connection per request (tinyproxy closes the
//!    client connection after every response; checked at the start, not assumed):
//!    sequential latency p50 and p99, the added latency p50(proxy) − p50(direct), and
//!    requests/s with 4 concurrent clients. Also on one kept-alive connection, where the
//!    proxy supports it.
//! 2. `GET /100m` (100 MiB, streamed from a static buffer): MB/s.
//!
//! Targets: throughput ≥ 1.0× tinyproxy (requests/s and MB/s); p50 added latency < 0.2 ms
//! over a direct request. Also shown, to say where time goes: each proxy process's CPU time
//! per 1 KiB request and per 100 MiB (`/proc/PID/stat`), the whole machine's CPU time per
//! request in the 4-client phase (`/proc/stat`), and how busy the machine was otherwise.
//!
//!     cargo bench -p aistack-tests --bench proxy
//!
//! Env: AISTACK_BENCH_ROUNDS (default 7), AISTACK_BENCH_REQUESTS (sequential requests per
//! path and round, default 1000), AISTACK_BENCH_SECONDS (each path's 4-client phase per
//! round, default 2), AISTACK_BENCH_IDLE_WAIT (seconds, default 120), TINYPROXY (a
//! tinyproxy binary; default: the one on `PATH`, installed with apt-get when missing and
//! run as root). Speed is reported, never asserted; every response's status and length are.

use std::convert::Infallible;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use aistack_tests::bench::{median, wait_idle};
use aistack_tests::{TestEnv, free_port, wait_for};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONNECTION, HOST};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

const IDLE_WAIT: Duration = Duration::from_secs(120);
const SMALL: usize = 1 << 10;
const LARGE: usize = 100 << 20;
const CHUNK: usize = 1 << 20;
/// What the upstream sends, in frames of at most this buffer.
static DATA: [u8; CHUNK] = [b'a'; CHUNK];
const CLIENTS: usize = 4;
/// Bounds the concurrent phase whatever its duration.
const MAX_REQUESTS_PER_CLIENT: u64 = 500_000;
/// Untimed requests per path before the rounds.
const WARM_UP: usize = 300;

const SPEC: &str = "version: 1
name: bench
network_policies:
  bench:
    default: deny
    allow: [\"127.0.0.0/8\"]
";

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

/// The `q` quantile (nearest rank) of `v`, in milliseconds.
fn quantile_ms(v: &mut [Duration], q: f64) -> f64 {
    v.sort();
    let rank = ((v.len() - 1) as f64 * q).round() as usize;
    v[rank].as_secs_f64() * 1e3
}

// ---------- CPU accounting ----------

/// CPU time (user + system, all threads) of `pid` so far, from `/proc/PID/stat`.
fn cpu_of(pid: &str) -> Duration {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the parenthesised command name: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // USER_HZ is 100 on Linux.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// The whole machine's busy CPU time so far, from `/proc/stat`.
fn machine_busy() -> Duration {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|s| s.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let busy: u64 = ticks
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, t)| t)
        .sum();
    Duration::from_millis(busy * 10)
}

// ---------- the upstream ----------

/// `left` bytes of [`DATA`], in frames of at most 1 MiB, with an exact length (so the
/// response has a `Content-Length`).
struct Repeat {
    left: usize,
}

impl Body for Repeat {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(CHUNK);
        self.left -= n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&DATA[..n])))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left as u64)
    }
}

/// A loopback HTTP/1.1 server (hyper, its own thread and runtime) serving `/1k` and
/// `/100m`; returns its address.
fn start_upstream() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the upstream");
    let address = listener.local_addr().expect("upstream address");
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("upstream runtime");
        runtime.block_on(async move {
            let listener = TcpListener::from_std(listener).expect("tokio listener");
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|request: Request<Incoming>| {
                        let (status, left) = match request.uri().path() {
                            "/1k" => (StatusCode::OK, SMALL),
                            "/100m" => (StatusCode::OK, LARGE),
                            _ => (StatusCode::NOT_FOUND, 0),
                        };
                        let mut response = Response::new(Repeat { left });
                        *response.status_mut() = status;
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    });
    address
}

// ---------- the client ----------

/// Where a request goes: straight to the upstream, or to a proxy in absolute form.
#[derive(Clone)]
struct Route {
    name: &'static str,
    connect: SocketAddr,
    proxied: bool,
    upstream: SocketAddr,
}

type Sender = SendRequest<Empty<Bytes>>;

impl Route {
    async fn open(&self) -> Sender {
        let stream = TcpStream::connect(self.connect)
            .await
            .unwrap_or_else(|e| panic!("connecting to {} at {}: {e}", self.name, self.connect));
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("client handshake");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        sender
    }

    /// One GET on `sender`, its body read to the end; checks status and length.
    async fn get(
        &self,
        sender: &mut Sender,
        path: &str,
        close: bool,
        expect: usize,
    ) -> Result<(), String> {
        let uri = if self.proxied {
            format!("http://{}{path}", self.upstream)
        } else {
            path.to_owned()
        };
        let mut request = Request::get(uri).header(HOST, self.upstream.to_string());
        if close {
            request = request.header(CONNECTION, "close");
        }
        let request = request.body(Empty::new()).expect("a request");
        let response = (sender.send_request(request).await)
            .map_err(|e| format!("GET {path} through {}: {e}", self.name))?;
        if response.status() != StatusCode::OK {
            return Err(format!(
                "GET {path} through {}: status {}",
                self.name,
                response.status()
            ));
        }
        let mut body = response.into_body();
        let mut got = 0;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("GET {path} through {}: {e}", self.name))?;
            if let Some(data) = frame.data_ref() {
                got += data.len();
            }
        }
        if got != expect {
            return Err(format!(
                "GET {path} through {}: {got} bytes, not {expect}",
                self.name
            ));
        }
        Ok(())
    }

    /// One GET on a new connection (`Connection: close`), connect to last body byte.
    async fn once(&self, path: &str, expect: usize) -> Duration {
        let start = Instant::now();
        let mut sender = self.open().await;
        if let Err(error) = self.get(&mut sender, path, true, expect).await {
            panic!("{error}");
        }
        start.elapsed()
    }

    /// Whether a second request on the same client connection is answered.
    async fn keeps_alive(&self) -> bool {
        let attempt = async {
            let mut sender = self.open().await;
            self.get(&mut sender, "/1k", false, SMALL).await.is_ok()
                && sender.ready().await.is_ok()
                && self.get(&mut sender, "/1k", false, SMALL).await.is_ok()
        };
        tokio::time::timeout(Duration::from_secs(5), attempt)
            .await
            .unwrap_or(false)
    }

    /// `n` sequential GETs of `/1k`, each on a new connection: (p50, p99) in ms.
    async fn sequential(&self, n: usize) -> (f64, f64) {
        let mut took = Vec::with_capacity(n);
        for _ in 0..n {
            took.push(self.once("/1k", SMALL).await);
        }
        (quantile_ms(&mut took, 0.5), quantile_ms(&mut took, 0.99))
    }

    /// `n` sequential GETs of `/1k` on one kept-alive connection: p50 in ms.
    async fn kept_alive(&self, n: usize) -> f64 {
        let mut sender = self.open().await;
        let mut took = Vec::with_capacity(n);
        for _ in 0..n {
            let start = Instant::now();
            sender.ready().await.expect("connection kept alive");
            if let Err(error) = self.get(&mut sender, "/1k", false, SMALL).await {
                panic!("{error}");
            }
            took.push(start.elapsed());
        }
        quantile_ms(&mut took, 0.5)
    }

    /// [`CLIENTS`] concurrent clients looping on new-connection GETs of `/1k` for
    /// `duration`: (requests/s, requests).
    async fn rate(&self, duration: Duration) -> (f64, u64) {
        let start = Instant::now();
        let deadline = start + duration;
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let route = self.clone();
                tokio::spawn(async move {
                    let mut n = 0;
                    while n < MAX_REQUESTS_PER_CLIENT && Instant::now() < deadline {
                        route.once("/1k", SMALL).await;
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let mut total = 0;
        for client in clients {
            total += client.await.expect("a client finishes");
        }
        (total as f64 / start.elapsed().as_secs_f64(), total)
    }

    /// One GET of `/100m` on a new connection: MB/s (10^6 bytes).
    async fn large(&self) -> f64 {
        LARGE as f64 / self.once("/100m", LARGE).await.as_secs_f64() / 1e6
    }
}

// ---------- the two proxies ----------

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// tinyproxy: `TINYPROXY`, or the one on `PATH`, or Debian's installed now when run as
/// root; `None` (with the fix printed) otherwise.
fn tinyproxy_bin() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("TINYPROXY") {
        return Some(PathBuf::from(bin));
    }
    if let Some(bin) = on_path("tinyproxy") {
        return Some(bin);
    }
    if !rustix::process::geteuid().is_root() {
        eprintln!(
            "warning: no tinyproxy on PATH; install it (`sudo apt-get install -y tinyproxy`) \
             or set TINYPROXY; comparisons skipped"
        );
        return None;
    }
    eprintln!("tinyproxy is missing; installing Debian's (apt-get install -y tinyproxy)");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "tinyproxy"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let installed = install()
        || (Command::new("apt-get")
            .arg("update")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
            && install());
    let bin = on_path("tinyproxy").filter(|_| installed);
    if bin.is_none() {
        eprintln!("warning: installing tinyproxy failed; comparisons skipped");
    }
    bin
}

/// tinyproxy in the foreground with its own configuration, on a free loopback port.
struct Tinyproxy {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Tinyproxy {
    fn start(bin: &Path) -> Tinyproxy {
        let dir = tempfile::tempdir().expect("tinyproxy dir");
        let port = free_port();
        let conf = dir.path().join("tinyproxy.conf");
        fs::write(
            &conf,
            format!(
                "Port {port}\nListen 127.0.0.1\nAllow 127.0.0.1\nMaxClients 100\nTimeout 60\n\
                 LogLevel Critical\nDisableViaHeader Yes\n"
            ),
        )
        .expect("write tinyproxy.conf");
        let log = dir.path().join("tinyproxy.log");
        let out = fs::File::create(&log).expect("tinyproxy log");
        let child = Command::new(bin)
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log handle"))
            .stderr(out)
            .spawn()
            .expect("tinyproxy starts");
        let mut proxy = Tinyproxy {
            child,
            port,
            _dir: dir,
        };
        let listening = wait_for(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        if !listening || proxy.child.try_wait().ok().flatten().is_some() {
            panic!(
                "tinyproxy did not listen on 127.0.0.1:{port}:\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        proxy
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The project's proxy as `aistack up` runs it; `down` and the daemon's end on drop.
struct Ours {
    env: TestEnv,
    endpoint: SocketAddr,
}

impl Ours {
    fn up() -> Ours {
        let env = TestEnv::new();
        env.write("aistack.yaml", &env.spec(SPEC));
        env.ok(&["up", "-q"]);
        let status = env.status();
        let endpoint = (status["resources"].as_array().into_iter().flatten())
            .find(|r| r["kind"] == "proxy" && r["name"] == "bench")
            .and_then(|r| r["endpoint"].as_str())
            .unwrap_or_else(|| {
                panic!(
                    "`aistack status --json` shows no endpoint for the proxy `bench`:\n{status:#}"
                )
            });
        let endpoint = (endpoint.strip_prefix("http://"))
            .and_then(|a| a.trim_end_matches('/').parse().ok())
            .unwrap_or_else(|| panic!("the proxy endpoint `{endpoint}` is not http://IP:PORT"));
        Ours { env, endpoint }
    }

    fn pid(&self) -> String {
        self.env
            .daemon_pid()
            .expect("the daemon wrote its pid")
            .to_string()
    }
}

impl Drop for Ours {
    fn drop(&mut self) {
        let _ = self.env.run(&["down"]);
    }
}

// ---------- the run ----------

/// What one path measured, a value per round.
#[derive(Default)]
struct Samples {
    p50: Vec<f64>,
    p99: Vec<f64>,
    kept_alive_p50: Vec<f64>,
    rps: Vec<f64>,
    mbps: Vec<f64>,
    /// CPU time of the proxy process in the concurrent phases, and the requests served.
    rate_cpu: Duration,
    rate_requests: u64,
    /// The whole machine's busy CPU time in the concurrent phases, and their wall time.
    rate_machine: Duration,
    rate_wall: Duration,
    /// CPU time of the proxy process in the large transfers.
    large_cpu: Duration,
}

struct Leg {
    route: Route,
    /// The proxy's process, for its CPU time.
    pid: Option<String>,
    keeps_alive: bool,
    samples: Samples,
}

fn main() {
    let rounds = env_number("AISTACK_BENCH_ROUNDS", 7) as usize;
    let requests = env_number("AISTACK_BENCH_REQUESTS", 1000) as usize;
    let seconds = env_number("AISTACK_BENCH_SECONDS", 2);
    // Build (or find) the binary before anything is timed.
    aistack_tests::aistack_bin();
    let tinyproxy_bin = tinyproxy_bin();

    let upstream = start_upstream();
    let tiny = tinyproxy_bin.as_deref().map(Tinyproxy::start);
    let ours = Ours::up();
    let route = |name: &'static str, connect: SocketAddr, proxied: bool| Route {
        name,
        connect,
        proxied,
        upstream,
    };
    let mut paths = vec![Leg {
        route: route("direct", upstream, false),
        pid: None,
        keeps_alive: true,
        samples: Samples::default(),
    }];
    if let Some(tiny) = &tiny {
        paths.push(Leg {
            route: route("tinyproxy", ([127, 0, 0, 1], tiny.port).into(), true),
            pid: Some(tiny.pid()),
            keeps_alive: false,
            samples: Samples::default(),
        });
    }
    paths.push(Leg {
        route: route("aistack", ours.endpoint, true),
        pid: Some(ours.pid()),
        keeps_alive: false,
        samples: Samples::default(),
    });

    // The client: one thread, so that it takes one core at most and never migrates work.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    runtime.block_on(async {
        for path in &mut paths {
            path.keeps_alive = path.route.keeps_alive().await;
            for _ in 0..WARM_UP {
                path.route.once("/1k", SMALL).await;
            }
            path.route.large().await;
        }
    });

    let load = wait_idle(IDLE_WAIT);
    let pids: Vec<String> = (paths.iter().filter_map(|p| p.pid.clone()))
        .chain(["self".to_owned()])
        .collect();
    let measured_cpu = || pids.iter().map(|p| cpu_of(p)).sum::<Duration>();
    let (busy_before, measured_before, started) = (machine_busy(), measured_cpu(), Instant::now());
    for round in 0..rounds {
        runtime.block_on(async {
            for path in &mut paths {
                let (p50, p99) = path.route.sequential(requests).await;
                path.samples.p50.push(p50);
                path.samples.p99.push(p99);
            }
            for path in paths.iter_mut().filter(|p| p.keeps_alive) {
                let p50 = path.route.kept_alive(requests).await;
                path.samples.kept_alive_p50.push(p50);
            }
            for path in &mut paths {
                let before = path.pid.as_deref().map(cpu_of);
                let (machine, wall) = (machine_busy(), Instant::now());
                let (rps, n) = path.route.rate(Duration::from_secs(seconds)).await;
                path.samples.rate_wall += wall.elapsed();
                path.samples.rate_machine += machine_busy().saturating_sub(machine);
                if let (Some(before), Some(pid)) = (before, &path.pid) {
                    path.samples.rate_cpu += cpu_of(pid).saturating_sub(before);
                }
                path.samples.rps.push(rps);
                path.samples.rate_requests += n;
            }
            for path in &mut paths {
                let before = path.pid.as_deref().map(cpu_of);
                let mbps = path.route.large().await;
                if let (Some(before), Some(pid)) = (before, &path.pid) {
                    path.samples.large_cpu += cpu_of(pid).saturating_sub(before);
                }
                path.samples.mbps.push(mbps);
            }
        });
        let line: Vec<String> = paths
            .iter()
            .map(|p| {
                let s = &p.samples;
                format!(
                    "{} p50 {:.3} ms, {:.0} req/s, {:.0} MB/s",
                    p.route.name, s.p50[round], s.rps[round], s.mbps[round]
                )
            })
            .collect();
        eprintln!("round {}: {}", round + 1, line.join("; "));
    }
    let elapsed = started.elapsed();
    let busy = machine_busy().saturating_sub(busy_before);
    let mine = measured_cpu().saturating_sub(measured_before);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let others = busy.saturating_sub(mine).as_secs_f64() / elapsed.as_secs_f64();
    let load_after = fs::read_to_string("/proc/loadavg").unwrap_or_default();

    report(&paths, rounds, requests, seconds);
    println!(
        "\nmachine: {cores} cores; 1-min load {load:.2} before the rounds, {} after; other \
         processes used {others:.2} cores on average during the {:.0} s of rounds{}",
        load_after.split_whitespace().next().unwrap_or("?"),
        elapsed.as_secs_f64(),
        if others > 0.1 {
            " (busy: figures are noisy)"
        } else {
            " (idle)"
        }
    );
    drop(ours);
    drop(tiny);
}

fn report(paths: &[Leg], rounds: usize, requests: usize, seconds: u64) {
    let find = |name: &str| paths.iter().find(|p| p.route.name == name);
    let direct = &find("direct").expect("the direct path").samples;
    let tiny = find("tinyproxy").map(|p| &p.samples);
    let ours = &find("aistack").expect("the aistack path").samples;
    let ratio = |f: &dyn Fn(&Samples) -> &Vec<f64>| {
        tiny.map(|t| {
            let per_round = (f(ours).iter().zip(f(t)))
                .map(|(a, b)| a / b)
                .collect::<Vec<_>>();
            (
                median(f(ours).clone()) / median(f(t).clone()),
                median(per_round),
            )
        })
    };
    let added = |s: &Samples| {
        median(
            (s.p50.iter().zip(&direct.p50))
                .map(|(a, b)| a - b)
                .collect(),
        )
    };
    let cell = |s: Option<&Samples>, f: &dyn Fn(&Samples) -> String| s.map_or("n/a".into(), f);

    println!(
        "\nproxy bench: {rounds} rounds interleaved (direct, tinyproxy, aistack); per path and \
         round: {requests} sequential 1 KiB GETs, {CLIENTS} clients for {seconds} s, one 100 MiB GET"
    );
    println!(
        "client: hyper 1 HTTP/1.1 client on one thread, a new TCP connection per request \
         (`Connection: close`) unless marked keep-alive; medians over rounds\n"
    );
    println!(
        "{:<38} {:>10} {:>10} {:>10} {:>18}",
        "metric", "direct", "tinyproxy", "aistack", "aistack/tinyproxy"
    );
    let row = |metric: &str,
               f: &dyn Fn(&Samples) -> String,
               direct_cell: Option<String>,
               ratio: Option<(f64, f64)>| {
        println!(
            "{metric:<38} {:>10} {:>10} {:>10} {:>18}",
            direct_cell.unwrap_or_else(|| f(direct)),
            cell(tiny, f),
            f(ours),
            ratio.map_or("-".into(), |(r, _)| format!("{r:.2}"))
        );
    };
    row(
        "1 KiB GET p50, new conn (ms)",
        &|s| format!("{:.3}", median(s.p50.clone())),
        None,
        None,
    );
    row(
        "1 KiB GET p99, new conn (ms)",
        &|s| format!("{:.3}", median(s.p99.clone())),
        None,
        None,
    );
    row(
        "  added p50 over direct (ms)",
        &|s| format!("{:+.3}", added(s)),
        Some("-".into()),
        None,
    );
    let kept = |s: &Samples| {
        if s.kept_alive_p50.is_empty() {
            "n/a".to_owned()
        } else {
            format!("{:.3}", median(s.kept_alive_p50.clone()))
        }
    };
    row("1 KiB GET p50, keep-alive (ms)", &kept, None, None);
    let rps = ratio(&|s| &s.rps);
    row(
        &format!("1 KiB GET, {CLIENTS} clients (req/s)"),
        &|s| format!("{:.0}", median(s.rps.clone())),
        None,
        rps,
    );
    let mbps = ratio(&|s| &s.mbps);
    row(
        "100 MiB GET (MB/s)",
        &|s| format!("{:.0}", median(s.mbps.clone())),
        None,
        mbps,
    );
    row(
        "proxy CPU per 1 KiB GET (µs)",
        &|s| {
            format!(
                "{:.1}",
                s.rate_cpu.as_secs_f64() * 1e6 / s.rate_requests.max(1) as f64
            )
        },
        Some("-".into()),
        None,
    );
    row(
        "  machine CPU per 1 KiB GET (µs)",
        &|s| {
            format!(
                "{:.1}",
                s.rate_machine.as_secs_f64() * 1e6 / s.rate_requests.max(1) as f64
            )
        },
        None,
        None,
    );
    row(
        &format!("  cores busy, {CLIENTS}-client phase"),
        &|s| {
            format!(
                "{:.2}",
                s.rate_machine.as_secs_f64() / s.rate_wall.as_secs_f64()
            )
        },
        None,
        None,
    );
    row(
        "proxy CPU per 100 MiB GET (ms)",
        &|s| format!("{:.0}", s.large_cpu.as_secs_f64() * 1e3 / rounds as f64),
        Some("-".into()),
        None,
    );
    if let Some(p) = find("tinyproxy")
        && !p.keeps_alive
    {
        println!("(tinyproxy answered no second request on a client connection: no keep-alive)");
    }

    println!();
    let verdict = |ok: bool| if ok { "MET" } else { "NOT MET" };
    for (what, r) in [("requests/s, 1 KiB", rps), ("MB/s, 100 MiB", mbps)] {
        match r {
            Some((r, per_round)) => println!(
                "throughput ({what}): {} (aistack/tinyproxy {r:.2}, target >= 1.0; median of \
                 per-round ratios {per_round:.2})",
                verdict(r >= 1.0)
            ),
            None => println!("throughput ({what}): not compared (no tinyproxy)"),
        }
    }
    let a = added(ours);
    println!(
        "added latency: {} (p50 {a:+.3} ms over a direct request, median of per-round \
         differences; target < 0.2 ms)",
        verdict(a < 0.2)
    );
}
