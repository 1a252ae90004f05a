//! The timing probe against this machine's real KVM.

use std::time::{Duration, Instant};

use aistack_vmm::probe::{self, BUDGET, ProbeError};

#[test]
fn the_probe_runs_a_real_guest_and_compares_it_with_the_host() {
    let started = Instant::now();
    let speed = match probe::run() {
        Err(ProbeError::Open(e)) => {
            eprintln!("skipped: this machine has no usable /dev/kvm ({e})");
            return;
        }
        outcome => outcome.expect("a guest runs where /dev/kvm opens"),
    };
    let took = started.elapsed();
    eprintln!(
        "guest/host: {:.2}x over {} chunks in {took:?} (near native: {})",
        speed.ratio,
        speed.chunks,
        speed.near_native()
    );
    assert!(speed.chunks >= 1);
    // A guest does not run the loop much faster than the host does: a ratio below that
    // means the guest's chunks were not measured (or not run).
    assert!(speed.ratio > 0.5, "ratio {}", speed.ratio);
    // Bounded: the budget, then at most one chunk of a guest that crawls at 10000x.
    assert!(
        took < BUDGET + Duration::from_secs(3),
        "the probe took {took:?}"
    );
}
