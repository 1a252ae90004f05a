//! The walker against a stateful test double of the machine ([`FakeHost`]).
//!
//! Time is paused (`start_paused`): delays advance a virtual clock, so the tests are fast
//! and their timing is exact. Order is checked with a logical clock the double ticks on
//! every call start and end.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use aistack_apply::{
    Event, Host, HostError, Outcome, Outputs, Progress, ProgressEvent, Refused, Report,
    Unsupported, WalkOptions, walk,
};
use aistack_planner::{
    Action, Applied, Artifact, Cause, Desired, EngineOptions, Kind, ModelPlan, ModelSettings,
    Payload, Plan, ResourceId, Serving, Step, StepIndex,
};
use aistack_spec::values::{EngineKind, KeepAlive, ModelMode};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------
// The test double
// ---------------------------------------------------------------------------------------

/// Which host method a call was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Create,
    Change,
    Remove,
}

/// One host call as the double saw it: logical start and end ticks (`end` is `None` for a
/// call that was dropped before it finished) and virtual times.
#[derive(Debug, Clone)]
struct Call {
    op: Op,
    id: ResourceId,
    start: u64,
    end: Option<u64>,
    started_at: Instant,
}

/// A fake machine for tests: keeps resources as `Applied` records in memory, logs every
/// call, and fails, delays or refuses the resources it is told to.
#[derive(Default)]
struct FakeHost {
    /// What exists, as the host would report it.
    state: Mutex<BTreeMap<ResourceId, Applied>>,
    log: Mutex<Vec<Call>>,
    clock: AtomicU64,
    checks: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// Resource name, the call that fails (`None`: every call) and the error it returns.
    failures: Vec<(String, Option<Op>, String)>,
    /// Resource name -> how long each of its calls takes.
    delays: BTreeMap<String, Duration>,
    /// How long any other call takes.
    default_delay: Duration,
    /// Resource names `check` refuses.
    refusals: BTreeSet<String>,
}

impl FakeHost {
    fn new() -> Self {
        FakeHost {
            default_delay: Duration::from_millis(10),
            ..FakeHost::default()
        }
    }

    fn failing(mut self, name: &str, message: &str) -> Self {
        self.failures.push((name.into(), None, message.into()));
        self
    }

    fn failing_on(mut self, name: &str, op: Op, message: &str) -> Self {
        self.failures.push((name.into(), Some(op), message.into()));
        self
    }

    fn delaying(mut self, name: &str, delay: Duration) -> Self {
        self.delays.insert(name.into(), delay);
        self
    }

    fn default_delay(mut self, delay: Duration) -> Self {
        self.default_delay = delay;
        self
    }

    fn refusing(mut self, name: &str) -> Self {
        self.refusals.insert(name.into());
        self
    }

    fn with_existing(self, applied: Applied) -> Self {
        self.state
            .lock()
            .unwrap()
            .insert(applied.id.clone(), applied);
        self
    }

    fn calls(&self) -> Vec<Call> {
        self.log.lock().unwrap().clone()
    }

    fn calls_for(&self, name: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.id.name == name)
            .collect()
    }

    fn resources(&self) -> BTreeMap<ResourceId, Applied> {
        self.state.lock().unwrap().clone()
    }

    /// Logs the start of a call, waits its delay and reports progress, then fails or lets
    /// the caller apply its effect; the returned guard logs the end.
    async fn enter(
        &self,
        op: Op,
        id: &ResourceId,
        progress: &Progress,
    ) -> Result<InFlight<'_>, HostError> {
        let start = self.clock.fetch_add(1, Ordering::SeqCst);
        let slot = {
            let mut log = self.log.lock().unwrap();
            log.push(Call {
                op,
                id: id.clone(),
                start,
                end: None,
                started_at: Instant::now(),
            });
            log.len() - 1
        };
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let mut call = InFlight {
            host: self,
            slot,
            finished: false,
        };
        progress.message(format!("{op:?} {id}").to_lowercase());
        let delay = self
            .delays
            .get(&id.name)
            .copied()
            .unwrap_or(self.default_delay);
        tokio::time::sleep(delay).await;
        progress.bytes(1, 1);
        let failure = self
            .failures
            .iter()
            .find(|(name, on, _)| *name == id.name && on.is_none_or(|on| on == op));
        if let Some((_, _, message)) = failure {
            call.done();
            return Err(HostError::new(message.clone()).with_help("Try again"));
        }
        Ok(call)
    }
}

/// Counts a call in flight until dropped; logs its end only if [`InFlight::done`] ran, so a
/// call dropped by cancellation has no end.
struct InFlight<'a> {
    host: &'a FakeHost,
    slot: usize,
    finished: bool,
}

impl InFlight<'_> {
    fn done(&mut self) {
        self.finished = true;
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.host.in_flight.fetch_sub(1, Ordering::SeqCst);
        if self.finished {
            let end = self.host.clock.fetch_add(1, Ordering::SeqCst);
            self.host.log.lock().unwrap()[self.slot].end = Some(end);
        }
    }
}

fn record(desired: &Desired, generation: usize) -> Applied {
    Applied {
        id: desired.id.clone(),
        fields: desired.fields(),
        hash: desired.hash.clone(),
        depends_on: desired.depends_on.clone(),
        outputs: Outputs::from([("generation".to_owned(), generation.to_string())]),
    }
}

impl Host for FakeHost {
    fn check(&self, step: &Step) -> Result<(), Unsupported> {
        self.checks.fetch_add(1, Ordering::SeqCst);
        if self.refusals.contains(&step.id.name) {
            return Err(Unsupported {
                id: step.id.clone(),
                message: format!("`{}` is not supported by the fake host", step.id),
                help: Some("Remove it".into()),
            });
        }
        Ok(())
    }

    async fn create(&self, desired: &Desired, progress: &Progress) -> Result<Outputs, HostError> {
        let mut call = self.enter(Op::Create, &desired.id, progress).await?;
        let mut state = self.state.lock().unwrap();
        // Idempotent: creating what exists makes it as desired.
        let generation = state.len() + 1;
        let applied = record(desired, generation);
        let outputs = applied.outputs.clone();
        state.insert(desired.id.clone(), applied);
        call.done();
        Ok(outputs)
    }

    async fn change(
        &self,
        current: &Applied,
        desired: &Desired,
        progress: &Progress,
    ) -> Result<Outputs, HostError> {
        let mut call = self.enter(Op::Change, &current.id, progress).await?;
        let mut state = self.state.lock().unwrap();
        let applied = record(desired, state.len());
        let outputs = applied.outputs.clone();
        state.insert(desired.id.clone(), applied);
        call.done();
        Ok(outputs)
    }

    async fn remove(
        &self,
        current: &Applied,
        _delete_artifact: bool,
        progress: &Progress,
    ) -> Result<(), HostError> {
        let mut call = self.enter(Op::Remove, &current.id, progress).await?;
        // Idempotent: removing what is gone succeeds.
        self.state.lock().unwrap().remove(&current.id);
        call.done();
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Building plans
// ---------------------------------------------------------------------------------------

fn id(name: &str) -> ResourceId {
    ResourceId::new(Kind::Model, name)
}

/// A model whose settings differ by `version`: its reference.
fn desired(name: &str, version: u32) -> Desired {
    let reference = format!("example.com/{name}:{version}");
    let plan = ModelPlan {
        settings: ModelSettings {
            source: reference.clone(),
            digests: vec![reference.clone()],
            serving: Serving {
                engine: EngineKind::LlamaCpp,
                context_size: None,
                parallel: Some(1),
                keep_alive: KeepAlive::Forever,
                mode: ModelMode::Chat,
                runtime_flags: Vec::new(),
                options: EngineOptions::Diffusers {},
            },
        },
        artifact: Artifact::Pull {
            reference,
            digest: None,
            size: None,
        },
    };
    Desired::new(name, Payload::Model(plan), Vec::new())
}

/// The hash of `desired(name, version)`.
fn hash(name: &str, version: u32) -> String {
    desired(name, version).hash
}

fn applied(name: &str, version: u32) -> Applied {
    let d = desired(name, version);
    Applied {
        fields: d.fields(),
        id: d.id,
        hash: d.hash,
        depends_on: Vec::new(),
        outputs: Outputs::new(),
    }
}

/// Builds plans step by step; `after` adds the edges (and the `depends_on` entries).
#[derive(Default)]
struct PlanBuilder {
    plan: Plan,
    names: BTreeMap<String, StepIndex>,
}

impl PlanBuilder {
    fn new() -> Self {
        PlanBuilder {
            plan: Plan {
                project: "test".into(),
                ..Plan::default()
            },
            ..PlanBuilder::default()
        }
    }

    fn step(&mut self, name: &str, action: Action) -> StepIndex {
        let (desired, current, cause) = match action {
            Action::Create => (Some(desired(name, 1)), None, Cause::Missing),
            Action::Change => (
                Some(desired(name, 2)),
                Some(applied(name, 1)),
                Cause::Changed {
                    fields: vec!["version".into()],
                },
            ),
            Action::Remove => (None, Some(applied(name, 1)), Cause::NotInSpec),
            Action::Replace => (
                Some(desired(name, 2)),
                Some(applied(name, 1)),
                Cause::Changed {
                    fields: vec!["version".into()],
                },
            ),
        };
        let index = self.plan.graph.add_node(Step {
            id: id(name),
            action,
            cause,
            desired,
            current,
            delete_artifact: false,
        });
        self.names.insert(name.into(), index);
        index
    }

    fn create(&mut self, name: &str) -> StepIndex {
        self.step(name, Action::Create)
    }

    /// `then` starts only after each of `first` succeeded.
    fn after(&mut self, then: &str, first: &[&str]) -> &mut Self {
        let b = self.names[then];
        for name in first {
            let a = self.names[*name];
            self.plan.graph.add_edge(a, b, ());
            if let Some(d) = &mut self.plan.graph[b].desired {
                d.depends_on.push(id(name));
            }
        }
        self
    }

    fn index(&self, name: &str) -> StepIndex {
        self.names[name]
    }
}

// ---------------------------------------------------------------------------------------
// Running walks
// ---------------------------------------------------------------------------------------

struct Walked {
    result: Result<Report, Refused>,
    events: Vec<Event>,
}

impl Walked {
    fn report(&self) -> &Report {
        self.result.as_ref().expect("the plan was refused")
    }

    fn outcome(&self, b: &PlanBuilder, name: &str) -> &Outcome {
        &self.report().outcomes[&b.index(name)]
    }

    fn events_for(&self, index: StepIndex) -> Vec<&Event> {
        self.events.iter().filter(|e| step_of(e) == index).collect()
    }
}

fn step_of(event: &Event) -> StepIndex {
    match event {
        Event::Started(i)
        | Event::Progress(i, _)
        | Event::Applied(i, _)
        | Event::Removed(i, _)
        | Event::Failed(i, _)
        | Event::Skipped(i, _)
        | Event::Cancelled(i) => *i,
    }
}

async fn run(
    plan: &Plan,
    host: &FakeHost,
    max_parallel: usize,
    cancel: CancellationToken,
) -> Walked {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let result = walk(plan, host, WalkOptions { max_parallel }, &tx, cancel).await;
    drop(tx);
    let mut events = Vec::new();
    while let Some(event) = rx.recv().await {
        events.push(event);
    }
    Walked { result, events }
}

/// Every call for a step starts after every call for each of its predecessors ended.
fn assert_dependency_order(plan: &Plan, host: &FakeHost) {
    let graph = &plan.graph;
    for edge in graph.edge_indices() {
        let (a, b) = graph.edge_endpoints(edge).unwrap();
        let (a, b) = (&graph[a].id, &graph[b].id);
        let before = host.calls_for(&a.name);
        let after = host.calls_for(&b.name);
        assert!(
            !before.is_empty() && !after.is_empty(),
            "{a} and {b} both ran"
        );
        let a_end = before
            .iter()
            .map(|c| c.end.expect("finished"))
            .max()
            .unwrap();
        let b_start = after.iter().map(|c| c.start).min().unwrap();
        assert!(
            a_end < b_start,
            "{b} started (tick {b_start}) before {a} ended (tick {a_end})"
        );
    }
}

fn assert_all_done(walked: &Walked, steps: usize) {
    let report = walked.report();
    assert_eq!(report.outcomes.len(), steps);
    assert!(report.succeeded(), "{:?}", report.outcomes);
}

// ---------------------------------------------------------------------------------------
// Ordering
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn chain_runs_each_step_after_the_one_before() {
    let mut b = PlanBuilder::new();
    for name in ["a", "b", "c", "d"] {
        b.create(name);
    }
    b.after("b", &["a"]).after("c", &["b"]).after("d", &["c"]);
    let host = FakeHost::new();

    let walked = run(&b.plan, &host, 8, CancellationToken::new()).await;

    assert_all_done(&walked, 4);
    assert_dependency_order(&b.plan, &host);
    let order: Vec<String> = host.calls().iter().map(|c| c.id.name.clone()).collect();
    assert_eq!(order, ["a", "b", "c", "d"]);
    assert_eq!(host.resources().len(), 4);
}

#[tokio::test(start_paused = true)]
async fn diamond_runs_in_dependency_order_and_its_middle_in_parallel() {
    //   a
    //  / \
    // b   c
    //  \ /
    //   d
    let mut b = PlanBuilder::new();
    // Added out of order, so index order is not dependency order.
    b.create("d");
    b.create("c");
    b.create("b");
    b.create("a");
    b.after("b", &["a"])
        .after("c", &["a"])
        .after("d", &["b", "c"]);
    let host = FakeHost::new()
        .delaying("b", Duration::from_millis(100))
        .delaying("c", Duration::from_millis(300));

    let start = Instant::now();
    let walked = run(&b.plan, &host, 4, CancellationToken::new()).await;

    assert_all_done(&walked, 4);
    assert_dependency_order(&b.plan, &host);
    // b and c overlapped; d waited for the slower of them.
    assert_eq!(host.max_in_flight.load(Ordering::SeqCst), 2);
    let c = &host.calls_for("c")[0];
    let d = &host.calls_for("d")[0];
    assert_eq!(d.started_at - c.started_at, Duration::from_millis(300));
    assert_eq!(start.elapsed(), Duration::from_millis(10 + 300 + 10));
    // Each step: Started, then progress, then Applied with the host's outputs.
    for name in ["a", "b", "c", "d"] {
        let events = walked.events_for(b.index(name));
        assert!(
            matches!(events.first(), Some(Event::Started(_))),
            "{events:?}"
        );
        let Some(Event::Applied(_, record)) = events.last() else {
            panic!("{events:?}")
        };
        assert_eq!(record, &host.resources()[&id(name)]);
    }
    let d_record = &host.resources()[&id("d")];
    assert_eq!(d_record.depends_on, [id("b"), id("c")]);
}

#[tokio::test(start_paused = true)]
async fn progress_reports_reach_the_caller_between_start_and_end() {
    let mut b = PlanBuilder::new();
    let a = b.create("a");
    let host = FakeHost::new();

    let walked = run(&b.plan, &host, 1, CancellationToken::new()).await;

    let events = walked.events_for(a);
    assert_eq!(events.len(), 4, "{events:?}");
    assert_eq!(events[0], &Event::Started(a));
    assert_eq!(
        events[1],
        &Event::Progress(
            a,
            ProgressEvent {
                message: Some("create model a".into()),
                ..ProgressEvent::default()
            }
        )
    );
    assert_eq!(
        events[2],
        &Event::Progress(
            a,
            ProgressEvent {
                bytes: Some((1, 1)),
                ..ProgressEvent::default()
            }
        )
    );
    assert!(matches!(events[3], Event::Applied(i, _) if *i == a));
}

// ---------------------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn never_more_than_max_parallel_in_flight() {
    let mut b = PlanBuilder::new();
    for n in 0..6 {
        b.create(&format!("m{n}"));
    }
    let host = FakeHost::new().default_delay(Duration::from_millis(100));

    let start = Instant::now();
    let walked = run(&b.plan, &host, 2, CancellationToken::new()).await;

    assert_all_done(&walked, 6);
    assert_eq!(host.max_in_flight.load(Ordering::SeqCst), 2);
    assert_eq!(host.in_flight.load(Ordering::SeqCst), 0);
    // Three waves of two.
    assert_eq!(start.elapsed(), Duration::from_millis(300));
    // Lowest index first among those ready.
    let order: Vec<String> = host.calls().iter().map(|c| c.id.name.clone()).collect();
    assert_eq!(order, ["m0", "m1", "m2", "m3", "m4", "m5"]);
}

#[tokio::test(start_paused = true)]
async fn zero_max_parallel_runs_one_at_a_time() {
    let mut b = PlanBuilder::new();
    for n in 0..3 {
        b.create(&format!("m{n}"));
    }
    let host = FakeHost::new();

    let walked = run(&b.plan, &host, 0, CancellationToken::new()).await;

    assert_all_done(&walked, 3);
    assert_eq!(host.max_in_flight.load(Ordering::SeqCst), 1);
}

// ---------------------------------------------------------------------------------------
// Failure
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn failure_skips_only_what_depends_on_it() {
    // a (fails) -> b -> c, a -> d; x -> y independent of all that; d also after x.
    let mut b = PlanBuilder::new();
    for name in ["a", "b", "c", "d", "x", "y"] {
        b.create(name);
    }
    b.after("b", &["a"])
        .after("c", &["b"])
        .after("d", &["a", "x"])
        .after("y", &["x"]);
    let host = FakeHost::new()
        .failing("a", "Disk full")
        .delaying("x", Duration::from_millis(50))
        .delaying("y", Duration::from_millis(50));

    let walked = run(&b.plan, &host, 4, CancellationToken::new()).await;

    let report = walked.report();
    assert!(!report.succeeded());
    let failed = HostError {
        message: "Disk full".into(),
        help: Some("Try again".into()),
    };
    assert_eq!(walked.outcome(&b, "a"), &Outcome::Failed(failed.clone()));
    for name in ["b", "c", "d"] {
        assert_eq!(
            walked.outcome(&b, name),
            &Outcome::Skipped { because: id("a") },
            "{name}"
        );
        assert!(host.calls_for(name).is_empty(), "{name} was called");
        assert!(
            walked
                .events
                .contains(&Event::Skipped(b.index(name), id("a")))
        );
    }
    // The independent branch went on after the failure, to completion.
    assert_eq!(walked.outcome(&b, "x"), &Outcome::Done);
    assert_eq!(walked.outcome(&b, "y"), &Outcome::Done);
    assert!(host.calls_for("y")[0].start > host.calls_for("a")[0].end.unwrap());
    assert_eq!(
        report.failures().collect::<Vec<_>>(),
        [(b.index("a"), &failed)]
    );
    assert!(walked.events.contains(&Event::Failed(b.index("a"), failed)));
    // Nothing is recorded for the failed step.
    assert!(
        !walked
            .events
            .iter()
            .any(|e| matches!(e, Event::Applied(i, _) if *i == b.index("a")))
    );
    assert_eq!(
        host.resources().keys().cloned().collect::<Vec<_>>(),
        [id("x"), id("y")]
    );
}

#[tokio::test(start_paused = true)]
async fn a_step_below_two_failures_is_skipped_once() {
    let mut b = PlanBuilder::new();
    for name in ["p", "q", "r"] {
        b.create(name);
    }
    b.after("r", &["p", "q"]);
    let host = FakeHost::new()
        .failing("p", "P broke")
        .failing("q", "Q broke")
        .delaying("q", Duration::from_millis(50));

    let walked = run(&b.plan, &host, 4, CancellationToken::new()).await;

    // p fails first; r names it, and the later failure of q does not re-skip r.
    assert_eq!(
        walked.outcome(&b, "r"),
        &Outcome::Skipped { because: id("p") }
    );
    let skips = walked
        .events
        .iter()
        .filter(|e| matches!(e, Event::Skipped(..)))
        .count();
    assert_eq!(skips, 1);
    assert_eq!(walked.report().failures().count(), 2);
}

// ---------------------------------------------------------------------------------------
// Refusal
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn one_unsupported_step_means_nothing_runs() {
    let mut b = PlanBuilder::new();
    for name in ["a", "b", "sandbox"] {
        b.create(name);
    }
    b.step("old", Action::Remove);
    b.after("b", &["a"]);
    let host = FakeHost::new().refusing("sandbox");

    let walked = run(&b.plan, &host, 4, CancellationToken::new()).await;

    let Err(Refused(refusals)) = &walked.result else {
        panic!("not refused: {:?}", walked.result)
    };
    assert_eq!(refusals.len(), 1);
    assert_eq!(refusals[0].id, id("sandbox"));
    assert_eq!(refusals[0].help.as_deref(), Some("Remove it"));
    // Every step was checked; none was carried out.
    assert_eq!(host.checks.load(Ordering::SeqCst), 4);
    assert!(host.calls().is_empty());
    assert!(walked.events.is_empty());
    assert_eq!(
        walked.result.unwrap_err().to_string(),
        "This host cannot carry out the step for `model sandbox`"
    );
}

#[tokio::test(start_paused = true)]
async fn malformed_steps_and_cycles_are_refused_before_anything_runs() {
    let mut b = PlanBuilder::new();
    b.create("fine");
    let bad = b.create("bad");
    b.plan.graph[bad].desired = None;
    let host = FakeHost::new();
    let walked = run(&b.plan, &host, 4, CancellationToken::new()).await;
    let Err(Refused(refusals)) = &walked.result else {
        panic!("not refused")
    };
    assert_eq!(refusals.len(), 1);
    assert_eq!(
        refusals[0].message,
        "The step for `model bad` has no desired record"
    );
    assert!(host.calls().is_empty());

    let mut b = PlanBuilder::new();
    b.create("x");
    b.create("y");
    b.after("y", &["x"]).after("x", &["y"]);
    let host = FakeHost::new();
    let walked = run(&b.plan, &host, 4, CancellationToken::new()).await;
    let Err(Refused(refusals)) = &walked.result else {
        panic!("not refused")
    };
    assert!(
        refusals[0]
            .message
            .starts_with("The plan has a cycle through"),
        "{refusals:?}"
    );
    assert!(host.calls().is_empty());
}

// ---------------------------------------------------------------------------------------
// Cancellation
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn cancel_drops_running_steps_and_starts_no_more() {
    // slow1 -> after1; slow2; queued1 and queued2 wait for a free slot.
    let mut b = PlanBuilder::new();
    for name in ["slow1", "slow2", "after1", "queued1", "queued2"] {
        b.create(name);
    }
    b.after("after1", &["slow1"]);
    let host = FakeHost::new().default_delay(Duration::from_secs(3600));
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        trigger.cancel();
    });

    let start = Instant::now();
    let walked = tokio::time::timeout(Duration::from_secs(1), run(&b.plan, &host, 2, cancel))
        .await
        .expect("walk returns promptly after cancellation");

    assert_eq!(start.elapsed(), Duration::from_millis(100));
    for name in ["slow1", "slow2", "after1", "queued1", "queued2"] {
        assert_eq!(walked.outcome(&b, name), &Outcome::Cancelled, "{name}");
        assert!(walked.events.contains(&Event::Cancelled(b.index(name))));
    }
    // The two running calls were dropped mid-way; nothing else was called.
    let calls = host.calls();
    assert_eq!(
        calls.iter().map(|c| c.id.name.as_str()).collect::<Vec<_>>(),
        ["slow1", "slow2"]
    );
    assert!(
        calls.iter().all(|c| c.end.is_none() && c.op == Op::Create),
        "{calls:?}"
    );
    assert_eq!(host.in_flight.load(Ordering::SeqCst), 0);
    assert!(host.resources().is_empty());
}

#[tokio::test(start_paused = true)]
async fn cancel_between_steps_keeps_what_finished() {
    let mut b = PlanBuilder::new();
    for name in ["first", "second"] {
        b.create(name);
    }
    b.after("second", &["first"]);
    let host = FakeHost::new()
        .delaying("first", Duration::from_millis(50))
        .delaying("second", Duration::from_secs(60));
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(70)).await;
        trigger.cancel();
    });

    let walked = run(&b.plan, &host, 2, cancel).await;

    assert_eq!(walked.outcome(&b, "first"), &Outcome::Done);
    assert_eq!(walked.outcome(&b, "second"), &Outcome::Cancelled);
    assert!(
        walked
            .events
            .iter()
            .any(|e| matches!(e, Event::Applied(i, _) if *i == b.index("first")))
    );
    assert_eq!(
        host.resources().keys().cloned().collect::<Vec<_>>(),
        [id("first")]
    );
}

#[tokio::test(start_paused = true)]
async fn cancelled_before_the_walk_calls_nothing() {
    let mut b = PlanBuilder::new();
    b.create("a");
    let host = FakeHost::new();
    let cancel = CancellationToken::new();
    cancel.cancel();

    let walked = run(&b.plan, &host, 2, cancel).await;

    assert_eq!(walked.outcome(&b, "a"), &Outcome::Cancelled);
    assert_eq!(walked.events, [Event::Cancelled(b.index("a"))]);
    assert!(host.calls().is_empty());
}

// ---------------------------------------------------------------------------------------
// Actions
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn replace_removes_then_creates_and_reports_in_that_order() {
    let mut b = PlanBuilder::new();
    let r = b.step("m", Action::Replace);
    let host = FakeHost::new().with_existing(applied("m", 1));

    let walked = run(&b.plan, &host, 2, CancellationToken::new()).await;

    assert_all_done(&walked, 1);
    let ops: Vec<Op> = host.calls().iter().map(|c| c.op).collect();
    assert_eq!(ops, [Op::Remove, Op::Create]);
    let kinds: Vec<&str> = walked
        .events_for(r)
        .iter()
        .filter_map(|e| match e {
            Event::Started(_) => Some("started"),
            Event::Removed(_, removed) => {
                assert_eq!(removed, &id("m"));
                Some("removed")
            }
            Event::Applied(_, record) => {
                assert_eq!(record.hash, hash("m", 2));
                Some("applied")
            }
            _ => None,
        })
        .collect();
    assert_eq!(kinds, ["started", "removed", "applied"]);
    assert_eq!(host.resources()[&id("m")].hash, hash("m", 2));
}

#[tokio::test(start_paused = true)]
async fn replace_whose_creation_fails_still_reports_the_removal() {
    let mut b = PlanBuilder::new();
    let r = b.step("m", Action::Replace);
    b.create("user");
    b.after("user", &["m"]);
    let host =
        FakeHost::new()
            .with_existing(applied("m", 1))
            .failing_on("m", Op::Create, "Pull failed");

    let walked = run(&b.plan, &host, 2, CancellationToken::new()).await;

    assert!(matches!(walked.outcome(&b, "m"), Outcome::Failed(e) if e.message == "Pull failed"));
    assert_eq!(
        walked.outcome(&b, "user"),
        &Outcome::Skipped { because: id("m") }
    );
    // The caller forgets the removed resource and records nothing new for it.
    let events = walked.events_for(r);
    assert!(
        matches!(
            events[..],
            [
                Event::Started(_),
                ..,
                Event::Removed(..),
                Event::Progress(..),
                Event::Progress(..),
                Event::Failed(..)
            ]
        ),
        "{events:?}"
    );
    assert!(!events.iter().any(|e| matches!(e, Event::Applied(..))));
    assert!(host.resources().is_empty());
}

#[tokio::test(start_paused = true)]
async fn replace_whose_removal_fails_reports_neither() {
    let mut b = PlanBuilder::new();
    let r = b.step("m", Action::Replace);
    let host = FakeHost::new()
        .with_existing(applied("m", 1))
        .failing_on("m", Op::Remove, "Busy");

    let walked = run(&b.plan, &host, 2, CancellationToken::new()).await;

    assert!(matches!(walked.outcome(&b, "m"), Outcome::Failed(e) if e.message == "Busy"));
    assert!(
        !walked
            .events_for(r)
            .iter()
            .any(|e| matches!(e, Event::Removed(..) | Event::Applied(..)))
    );
    assert_eq!(
        host.calls().iter().map(|c| c.op).collect::<Vec<_>>(),
        [Op::Remove]
    );
    assert_eq!(host.resources()[&id("m")].hash, hash("m", 1));
}

#[tokio::test(start_paused = true)]
async fn change_passes_current_and_desired_and_records_desired() {
    let mut b = PlanBuilder::new();
    let c = b.step("m", Action::Change);
    let host = FakeHost::new().with_existing(applied("m", 1));

    let walked = run(&b.plan, &host, 2, CancellationToken::new()).await;

    assert_all_done(&walked, 1);
    assert_eq!(
        host.calls().iter().map(|c| c.op).collect::<Vec<_>>(),
        [Op::Change]
    );
    let Some(Event::Applied(_, record)) = walked.events_for(c).last().copied() else {
        panic!()
    };
    let want = desired("m", 2);
    assert_eq!(
        (&record.id, &record.fields, &record.hash),
        (&want.id, &want.fields(), &want.hash)
    );
    assert_eq!(record.outputs, host.resources()[&id("m")].outputs);
}

#[tokio::test(start_paused = true)]
async fn removing_an_absent_resource_succeeds() {
    let mut b = PlanBuilder::new();
    let r = b.step("gone", Action::Remove);
    let host = FakeHost::new();

    let walked = run(&b.plan, &host, 2, CancellationToken::new()).await;

    assert_all_done(&walked, 1);
    assert!(walked.events.contains(&Event::Removed(r, id("gone"))));
    assert!(host.resources().is_empty());
}

#[tokio::test(start_paused = true)]
async fn walking_the_same_plan_twice_is_harmless() {
    let mut b = PlanBuilder::new();
    b.create("a");
    b.step("old", Action::Remove);
    let host = FakeHost::new().with_existing(applied("old", 1));

    let first = run(&b.plan, &host, 2, CancellationToken::new()).await;
    let after_first = host.resources();
    let second = run(&b.plan, &host, 2, CancellationToken::new()).await;

    assert_all_done(&first, 2);
    assert_all_done(&second, 2);
    assert_eq!(
        host.resources().keys().collect::<Vec<_>>(),
        after_first.keys().collect::<Vec<_>>()
    );
}

#[test]
fn the_walk_can_be_spawned() {
    fn assert_send<T: Send>(_: &T) {}
    let plan = Plan::default();
    let host = FakeHost::new();
    let (tx, _rx) = mpsc::unbounded_channel();
    let walking = walk(
        &plan,
        &host,
        WalkOptions::default(),
        &tx,
        CancellationToken::new(),
    );
    assert_send(&walking);
}

// ---------------------------------------------------------------------------------------
// Convergence with the real planner
// ---------------------------------------------------------------------------------------

mod convergence {
    use std::path::{Path, PathBuf};

    use aistack_planner::{FileFact, LocalFile, Observed, reconcile};
    use aistack_spec::Spec;
    use aistack_spec::model::Model;
    use aistack_spec::values::Source;

    use super::*;

    fn spec(models: &[(&str, Option<u32>)]) -> Spec {
        Spec {
            version: 1,
            name: Some("demo".into()),
            gateway: Default::default(),
            engines: Default::default(),
            models: models
                .iter()
                .map(|(name, context_size)| {
                    let model = Model {
                        source: Source::Local(format!("./{name}.gguf")),
                        engine: None,
                        context_size: *context_size,
                        parallel: None,
                        keep_alive: None,
                        preload: false,
                        mode: Default::default(),
                        runtime_flags: Vec::new(),
                    };
                    (name.to_string(), model)
                })
                .collect(),
            templates: BTreeMap::new(),
            network_policies: BTreeMap::new(),
            sandboxes: BTreeMap::new(),
        }
    }

    /// What the shell would observe: the fake host's records and the local file facts.
    fn observe(host: &FakeHost, base: &Path, names: &[&str]) -> Observed {
        let local_files = names
            .iter()
            .map(|name| {
                let path: PathBuf = base.join(format!("{name}.gguf"));
                let fact = FileFact {
                    path: path.clone(),
                    size: 1024,
                    digest: format!("sha256:{:064x}", name.len()),
                };
                (path, LocalFile::Present { shards: vec![fact] })
            })
            .collect();
        Observed {
            resources: host.resources(),
            local_files,
            ..Observed::default()
        }
    }

    /// Plans `spec` against what the host has, walks the plan, and returns the plan text.
    async fn up(spec: &Spec, host: &FakeHost, base: &Path, files: &[&str]) -> String {
        let plan = reconcile("demo", spec, base, &observe(host, base, files)).expect("plans");
        let mut recorded = host.resources();
        let walked = run(&plan, host, 4, CancellationToken::new()).await;
        assert!(walked.report().succeeded(), "{:?}", walked.report());
        // What a caller persists from the events is what the host has.
        for event in &walked.events {
            match event {
                Event::Applied(_, applied) => {
                    recorded.insert(applied.id.clone(), applied.clone());
                }
                Event::Removed(_, id) => {
                    recorded.remove(id);
                }
                _ => {}
            }
        }
        assert_eq!(recorded, host.resources());
        plan.render_text()
    }

    fn replan(spec: &Spec, host: &FakeHost, base: &Path, files: &[&str]) -> String {
        reconcile("demo", spec, base, &observe(host, base, files))
            .expect("plans")
            .render_text()
    }

    #[tokio::test(start_paused = true)]
    async fn walking_a_plan_converges_and_the_next_plan_is_empty() {
        let base = Path::new("/project");
        let host = FakeHost::new();

        // One local model: created, then nothing left to do.
        let first = spec(&[("chat", None)]);
        let text = up(&first, &host, base, &["chat"]).await;
        assert!(text.contains("+ model chat"), "{text}");
        assert_eq!(replan(&first, &host, base, &["chat"]), "No changes.\n");

        // A changed setting and a second model: applied, then nothing left to do.
        let second = spec(&[("chat", Some(8192)), ("embed", None)]);
        let text = up(&second, &host, base, &["chat", "embed"]).await;
        assert!(
            text.contains("model chat") && text.contains("+ model embed"),
            "{text}"
        );
        assert_eq!(
            replan(&second, &host, base, &["chat", "embed"]),
            "No changes.\n"
        );

        // A model dropped from the spec: removed, then nothing left to do.
        let third = spec(&[("embed", None)]);
        let text = up(&third, &host, base, &["embed"]).await;
        assert!(text.contains("- model chat"), "{text}");
        assert_eq!(replan(&third, &host, base, &["embed"]), "No changes.\n");
        assert_eq!(
            host.resources().keys().cloned().collect::<Vec<_>>(),
            [
                ResourceId::new(Kind::Gateway, "gateway"),
                ResourceId::new(Kind::Model, "embed")
            ]
        );
    }
}
