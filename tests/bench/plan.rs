//! `aistack plan` on a large spec, as a whole process: 50 models naming one local 98 MB
//! GGUF, 20 templates, 20 network policies and 20 sandboxes.
//!
//! Target: median under 20 ms wall on the 2-core development machine, which needs the
//! digest cache (an unchanged file is not hashed again). The peer in the same run is
//! `aistack validate` on the same file — the process start, parse and validation that every
//! command pays — run interleaved with `plan` (A B A B …); the ratio is plan's cost over it.
//! The cold plan (empty digest cache: one 98 MB hash) is reported once for scale.
//!
//!     AISTACK_TEST_MODEL=$(scripts/fetch-model) cargo bench -p aistack-tests --bench plan

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use aistack_tests::TestEnv;

const RUNS: usize = 41;
const TARGET: Duration = Duration::from_millis(20);

fn spec() -> String {
    let mut s = String::from(
        "# yaml-language-server: $schema=../../schemas/aistack.schema.json\nversion: 1\nname: bench\nmodels:\n",
    );
    for i in 0..50 {
        writeln!(
            s,
            "  m{i}:\n    source: ./models/smollm2.gguf\n    context_size: {}",
            1024 + i
        )
        .unwrap();
    }
    s.push_str("network_policies:\n");
    for i in 0..20 {
        writeln!(
            s,
            "  p{i}:\n    default: deny\n    allow: [\"api{i}.example.com\", \"*.npmjs.org\", \"203.0.113.0/24\"]\n    deny: [\"evil.example.com\"]"
        )
        .unwrap();
    }
    s.push_str("templates:\n");
    for i in 0..20 {
        let from = if i == 0 {
            "127.0.0.1:5000/sandbox/debian:bookworm".to_owned()
        } else {
            format!("t{}", i - 1)
        };
        writeln!(
            s,
            "  t{i}:\n    from: {from}\n    run: [\"echo step {i}\"]\n    network_policy: p{i}"
        )
        .unwrap();
    }
    s.push_str("sandboxes:\n");
    for i in 0..20 {
        writeln!(
            s,
            "  s{i}:\n    template: t{i}\n    agent: claude\n    network_policy: p{i}\n    models: [m{i}, m{}]\n    ports: [\"127.0.0.1:{}:3000\"]",
            i + 20,
            18000 + i
        )
        .unwrap();
    }
    s
}

fn time(env: &TestEnv, args: &[&str]) -> Duration {
    let start = Instant::now();
    let out = env.run(args);
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "aistack {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let env = TestEnv::new();
    env.write("aistack.yaml", &spec());
    env.link_model("smollm2.gguf");

    // Build (or find) the release binary before anything is timed.
    aistack_tests::aistack_bin();
    let cold = time(&env, &["plan"]);
    let mut plan = Vec::with_capacity(RUNS);
    let mut validate = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        plan.push(time(&env, &["plan"]));
        validate.push(time(&env, &["validate"]));
    }
    let (plan, validate) = (median(plan), median(validate));
    println!(
        "aistack plan, 50 models / 20 templates / 20 policies / 20 sandboxes, {RUNS} runs interleaved"
    );
    println!(
        "  cold plan (hashes the 98 MB GGUF once): {:8.2} ms",
        ms(cold)
    );
    println!(
        "  plan median:                            {:8.2} ms (target < {} ms)",
        ms(plan),
        TARGET.as_millis()
    );
    println!(
        "  validate median (peer):                 {:8.2} ms",
        ms(validate)
    );
    println!(
        "  ratio plan / validate:                  {:8.2}",
        plan.as_secs_f64() / validate.as_secs_f64()
    );
    println!(
        "  {}",
        if plan < TARGET {
            "PASS: under target"
        } else {
            "MISS: over target"
        }
    );
}
