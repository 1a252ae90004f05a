//! What the benchmarks share: waiting for an idle machine, and medians.

use std::fs;
use std::time::{Duration, Instant};

/// Waits, at most `AISTACK_BENCH_IDLE_WAIT` seconds (else `default`), until the 1-minute
/// load average is under 0.5, warning when it is not; returns the load it ended at.
pub fn wait_idle(default: Duration) -> f64 {
    let load = || {
        fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let wait = std::env::var("AISTACK_BENCH_IDLE_WAIT")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(default, Duration::from_secs);
    let deadline = Instant::now() + wait;
    while load() >= 0.5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(2));
    }
    let l = load();
    if l >= 0.5 {
        eprintln!(
            "warning: machine not idle after {wait:?} (1-min load {l:.2}); numbers are noisy"
        );
    }
    l
}

/// The median (upper middle) of `v`; NaN when empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}
