//! The plan walker: runs a plan's steps against a [`Host`].
//!
//! `up` is three calls: observe, [reconcile](aistack_planner) into a [`Plan`], and [`walk`]
//! it. This crate is the last of them, and it is deliberately dull.
//!
//! # The executor makes no decisions
//!
//! Every choice (paths, digests, argv, ports, memory) was made by the planner and written
//! into the steps. The walker only maps each step's [`Action`] onto [`Host`] calls, and
//! that mapping is mechanical:
//!
//! | action    | host calls                                   | events                  |
//! |-----------|----------------------------------------------|-------------------------|
//! | `Create`  | [`Host::create`]`(desired)`                  | `Applied`               |
//! | `Change`  | [`Host::change`]`(current, desired)`         | `Applied`               |
//! | `Remove`  | [`Host::remove`]`(current, delete_artifact)` | `Removed`               |
//! | `Replace` | [`Host::remove`]`(current, false)`, then `create` | `Removed`, then `Applied` |
//!
//! The [`Event::Applied`] record is `desired`'s id, fields, hash and dependencies plus the
//! outputs the host returned: nothing is merged from the previous record, so a host returns
//! every output it wants kept.
//!
//! # Order and failure
//!
//! An edge `a -> b` in the plan means `b` starts only after `a` succeeded. A step starts as
//! soon as all its predecessors succeeded, at most [`WalkOptions::max_parallel`] at a time,
//! lowest [`StepIndex`] first among those ready. When a step fails, only what depends on it
//! (transitively) is skipped, each naming the failed resource as the reason; independent
//! branches go on to completion, as terraform's walker does ("upstream failed").
//!
//! # Apply is one attempt
//!
//! Nothing is retried here. Every [`Host`] method is idempotent, so the way to finish a
//! failed or interrupted apply is to observe, plan and walk again; watch mode is a loop
//! around [`walk`], not a loop inside it.
//!
//! # Cancellation
//!
//! When the [`CancellationToken`] fires, no new step starts and the steps in flight are
//! **dropped** at their next `.await` (their futures are dropped; nothing waits for them to
//! finish). They and every step that never started end [`Outcome::Cancelled`], and [`walk`]
//! returns at once. Dropping is sound because host methods are idempotent: a half-done
//! create is finished by the next `up`. Events already sent stay true: a `Replace` whose
//! removal finished has sent `Removed` even if its creation was dropped.
//!
//! # Refusal
//!
//! Before anything runs, [`Host::check`] sees every step, and the walker checks that each
//! step carries what its action needs and that the plan has no cycle. Any refusal means
//! nothing at all is called on the host: `up` never half-applies a plan it could not finish.

#![warn(missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;

use aistack_planner::{Action, Applied, Desired, Plan, ResourceId, Step, StepIndex};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use petgraph::Direction;
use petgraph::visit::{Dfs, Walker};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What a host reports about a resource it made (a manifest digest, an endpoint, a pid).
pub type Outputs = BTreeMap<String, String>;

/// The only seam between a plan and the machine.
///
/// Every method is idempotent: creating what exists as desired succeeds, removing what is
/// gone succeeds, and calling any of them twice has the effect of calling it once. The
/// walker relies on this: it never retries, and it may drop a call at any `.await` when the
/// walk is cancelled, leaving the next `up` to finish the job.
pub trait Host: Send + Sync + 'static {
    /// Refuses, before any step runs, a step this host cannot carry out (a resource kind
    /// whose executor does not exist yet). Called for every step first; any refusal means
    /// nothing runs.
    fn check(&self, step: &Step) -> Result<(), Unsupported>;

    /// Makes the resource exist as desired. Idempotent: creating what exists succeeds.
    fn create(
        &self,
        desired: &Desired,
        progress: &Progress,
    ) -> impl Future<Output = Result<Outputs, HostError>> + Send;

    /// Brings an existing resource to `desired` in place. Idempotent.
    fn change(
        &self,
        current: &Applied,
        desired: &Desired,
        progress: &Progress,
    ) -> impl Future<Output = Result<Outputs, HostError>> + Send;

    /// Removes the resource, and with `delete_artifact` (the step's
    /// [`Step::delete_artifact`]) what it keeps in a shared store. Idempotent: removing
    /// what is gone succeeds.
    fn remove(
        &self,
        current: &Applied,
        delete_artifact: bool,
        progress: &Progress,
    ) -> impl Future<Output = Result<(), HostError>> + Send;
}

/// A step the host (or the walker) cannot carry out; see [`Host::check`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct Unsupported {
    /// The resource of the refused step.
    pub id: ResourceId,
    /// What cannot be done, one line.
    pub message: String,
    /// What the user can do about it.
    pub help: Option<String>,
}

/// A host method failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct HostError {
    /// What went wrong, one line.
    pub message: String,
    /// What the user can do about it.
    pub help: Option<String>,
}

impl HostError {
    /// An error without help.
    pub fn new(message: impl Into<String>) -> Self {
        HostError {
            message: message.into(),
            help: None,
        }
    }

    /// `e` with its sources (see [`chain`]), and its fix.
    pub fn from_error(e: &dyn std::error::Error, help: Option<String>) -> Self {
        HostError {
            message: chain(e),
            help,
        }
    }

    /// The same error with a `help:` line.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// The plan was refused before anything ran: every refusal, in step order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Refused(pub Vec<Unsupported>);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [one] => write!(f, "This host cannot carry out the step for `{}`", one.id),
            many => write!(
                f,
                "This host cannot carry out {} steps of the plan",
                many.len()
            ),
        }
    }
}

/// How a walk runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalkOptions {
    /// The most steps in flight at once; `0` is taken as `1`.
    pub max_parallel: usize,
}

impl Default for WalkOptions {
    fn default() -> Self {
        WalkOptions { max_parallel: 4 }
    }
}

/// What a host reports while a step runs: a message, or bytes (of one part of the step,
/// such as one layer of a pull, when `part` names it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressEvent {
    /// What the step is doing now (`importing`), one line, lower case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Bytes done and bytes in all (an import, a pull).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<(u64, u64)>,
    /// Which part of the step the bytes are of (a layer digest), when it has several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<String>,
}

/// A cheap, cloneable handle through which a host reports a step's progress; each report
/// becomes an [`Event::Progress`] for that step. Reports after the receiver is gone are
/// dropped silently.
#[derive(Debug, Clone)]
pub struct Progress {
    step: StepIndex,
    events: mpsc::UnboundedSender<Event>,
}

impl Progress {
    /// A handle reporting for `step` into `events`: for hosts' own tests and callers that
    /// run a host outside [`walk`].
    pub fn new(step: StepIndex, events: mpsc::UnboundedSender<Event>) -> Self {
        Progress { step, events }
    }

    /// Reports what the step is doing now.
    pub fn message(&self, message: impl Into<String>) {
        self.send(ProgressEvent {
            message: Some(message.into()),
            ..ProgressEvent::default()
        });
    }

    /// Reports bytes done out of `total`.
    pub fn bytes(&self, done: u64, total: u64) {
        self.send(ProgressEvent {
            bytes: Some((done, total)),
            ..ProgressEvent::default()
        });
    }

    /// Reports bytes done out of `total` for one `part` of the step (a layer of a pull).
    pub fn part_bytes(&self, part: impl Into<String>, done: u64, total: u64) {
        self.send(ProgressEvent {
            message: None,
            bytes: Some((done, total)),
            part: Some(part.into()),
        });
    }

    fn send(&self, event: ProgressEvent) {
        // The caller may have stopped listening; the step goes on regardless.
        let _ = self.events.send(Event::Progress(self.step, event));
    }
}

/// What happens during a walk, in the order it happens.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The step started.
    Started(StepIndex),
    /// The host reported progress on the step.
    Progress(StepIndex, ProgressEvent),
    /// The resource now exists as this record says: the caller persists it.
    Applied(StepIndex, Applied),
    /// The resource is gone: the caller forgets it. For a replacement this comes after the
    /// removal and before the creation.
    Removed(StepIndex, ResourceId),
    /// The step failed.
    Failed(StepIndex, HostError),
    /// The step did not run because the named resource's step failed.
    Skipped(StepIndex, ResourceId),
    /// The step did not finish (or start) because the walk was cancelled.
    Cancelled(StepIndex),
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// It succeeded.
    Done,
    /// The host failed it.
    Failed(HostError),
    /// It did not run: a step it depends on failed.
    Skipped {
        /// The resource whose step failed.
        because: ResourceId,
    },
    /// The walk was cancelled before it finished.
    Cancelled,
}

/// How every step of a walked plan ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// One outcome per step of the plan.
    pub outcomes: BTreeMap<StepIndex, Outcome>,
}

impl Report {
    /// Whether every step succeeded.
    pub fn succeeded(&self) -> bool {
        self.outcomes.values().all(|o| *o == Outcome::Done)
    }

    /// The failed steps and why, in step order.
    pub fn failures(&self) -> impl Iterator<Item = (StepIndex, &HostError)> {
        self.outcomes.iter().filter_map(|(i, o)| match o {
            Outcome::Failed(e) => Some((*i, e)),
            _ => None,
        })
    }
}

/// What one step does, with the records its action needs taken out of the [`Step`].
#[derive(Clone, Copy)]
enum Work<'a> {
    Create(&'a Desired),
    Change(&'a Applied, &'a Desired),
    /// The record, and whether its artifact goes too.
    Remove(&'a Applied, bool),
    Replace(&'a Applied, &'a Desired),
}

impl<'a> Work<'a> {
    /// The step's work, or why the step is malformed (a planner bug, refused like an
    /// unsupported step so that nothing runs).
    fn of(step: &'a Step) -> Result<Self, Unsupported> {
        let malformed = |what: &str| Unsupported {
            id: step.id.clone(),
            message: format!("The step for `{}` {what}", step.id),
            help: Some(
                "This is a bug in the planner; please report it with `aistack plan --json`".into(),
            ),
        };
        let desired = || match &step.desired {
            Some(d) if d.id == step.id => Ok(d),
            Some(_) => Err(malformed("has a desired record for another resource")),
            None => Err(malformed("has no desired record")),
        };
        let current = || match &step.current {
            Some(c) if c.id == step.id => Ok(c),
            Some(_) => Err(malformed("has an applied record for another resource")),
            None => Err(malformed("has no applied record")),
        };
        Ok(match step.action {
            Action::Create => Work::Create(desired()?),
            Action::Change => Work::Change(current()?, desired()?),
            Action::Remove => Work::Remove(current()?, step.delete_artifact),
            Action::Replace => Work::Replace(current()?, desired()?),
        })
    }
}

/// Walks `plan` on `host`: every step once, in dependency order, at most
/// `options.max_parallel` at a time.
///
/// Events go to `events` as they happen (see [`Event`]); a closed receiver is ignored, so a
/// caller that only wants the [`Report`] may drop it. Returns [`Refused`], having called
/// nothing but [`Host::check`], if any step is refused; otherwise the outcome of every step.
/// See the [module docs](self) for the invariants, failure and cancellation.
pub async fn walk<H: Host>(
    plan: &Plan,
    host: &H,
    options: WalkOptions,
    events: &mpsc::UnboundedSender<Event>,
    cancel: CancellationToken,
) -> Result<Report, Refused> {
    let graph = &plan.graph;
    let work = check(plan, host)?;
    let emit = |event: Event| {
        let _ = events.send(event);
    };

    // Unfinished predecessors of each step, edge by edge (parallel edges count each time,
    // on both sides).
    let mut waiting: BTreeMap<StepIndex, usize> = graph
        .node_indices()
        .map(|i| (i, graph.edges_directed(i, Direction::Incoming).count()))
        .collect();
    let mut ready: BTreeSet<StepIndex> = waiting
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(i, _)| *i)
        .collect();
    let mut outcomes: BTreeMap<StepIndex, Outcome> = BTreeMap::new();
    let mut running = FuturesUnordered::new();
    let max_parallel = options.max_parallel.max(1);

    loop {
        while running.len() < max_parallel && !cancel.is_cancelled() {
            let Some(index) = ready.pop_first() else {
                break;
            };
            emit(Event::Started(index));
            running.push(run(
                host,
                index,
                work[&index],
                Progress::new(index, events.clone()),
            ));
        }
        if running.is_empty() {
            // Everything ran or was skipped, or the walk was cancelled between steps.
            break;
        }
        let finished = tokio::select! {
            biased;
            () = cancel.cancelled() => None,
            Some(finished) = running.next() => Some(finished),
        };
        let Some((index, result)) = finished else {
            break;
        };
        match result {
            Ok(()) => {
                outcomes.insert(index, Outcome::Done);
                for next in graph.neighbors_directed(index, Direction::Outgoing) {
                    let n = waiting.get_mut(&next).expect("every step has a count");
                    *n -= 1;
                    if *n == 0 {
                        ready.insert(next);
                    }
                }
            }
            Err(error) => {
                emit(Event::Failed(index, error.clone()));
                outcomes.insert(index, Outcome::Failed(error));
                let because = &graph[index].id;
                let dependents: BTreeSet<StepIndex> = Dfs::new(graph, index)
                    .iter(graph)
                    .filter(|i| *i != index)
                    .collect();
                for dependent in dependents {
                    // A dependent cannot have started, but another failure may have
                    // skipped it already; the first reason stands.
                    outcomes.entry(dependent).or_insert_with(|| {
                        emit(Event::Skipped(dependent, because.clone()));
                        Outcome::Skipped {
                            because: because.clone(),
                        }
                    });
                }
            }
        }
    }

    // Drop the steps in flight (if cancelled) before reporting them cancelled.
    drop(running);
    for index in graph.node_indices() {
        outcomes.entry(index).or_insert_with(|| {
            emit(Event::Cancelled(index));
            Outcome::Cancelled
        });
    }
    Ok(Report { outcomes })
}

/// Checks every step before any runs: its shape, then the host; then the plan for cycles.
fn check<'a, H: Host>(plan: &'a Plan, host: &H) -> Result<BTreeMap<StepIndex, Work<'a>>, Refused> {
    let graph = &plan.graph;
    let mut work = BTreeMap::new();
    let mut refusals = Vec::new();
    for index in graph.node_indices() {
        let step = &graph[index];
        match Work::of(step).and_then(|w| host.check(step).map(|()| w)) {
            Ok(w) => {
                work.insert(index, w);
            }
            Err(refusal) => refusals.push(refusal),
        }
    }
    if refusals.is_empty()
        && let Err(cycle) = petgraph::algo::toposort(graph, None)
    {
        let id = graph[cycle.node_id()].id.clone();
        refusals.push(Unsupported {
            message: format!("The plan has a cycle through `{id}`"),
            id,
            help: Some(
                "This is a bug in the planner; please report it with `aistack plan --json`".into(),
            ),
        });
    }
    if refusals.is_empty() {
        Ok(work)
    } else {
        Err(Refused(refusals))
    }
}

/// Carries out one step: the mechanical mapping from action to host calls.
async fn run<H: Host>(
    host: &H,
    index: StepIndex,
    work: Work<'_>,
    progress: Progress,
) -> (StepIndex, Result<(), HostError>) {
    let emit = |event: Event| {
        let _ = progress.events.send(event);
    };
    let result = async {
        match work {
            Work::Create(desired) => {
                let outputs = host.create(desired, &progress).await?;
                emit(Event::Applied(
                    index,
                    Applied::from_desired(desired, outputs),
                ));
            }
            Work::Change(current, desired) => {
                let outputs = host.change(current, desired, &progress).await?;
                emit(Event::Applied(
                    index,
                    Applied::from_desired(desired, outputs),
                ));
            }
            Work::Remove(current, delete_artifact) => {
                host.remove(current, delete_artifact, &progress).await?;
                emit(Event::Removed(index, current.id.clone()));
            }
            Work::Replace(current, desired) => {
                host.remove(current, false, &progress).await?;
                emit(Event::Removed(index, current.id.clone()));
                let outputs = host.create(desired, &progress).await?;
                emit(Event::Applied(
                    index,
                    Applied::from_desired(desired, outputs),
                ));
            }
        }
        Ok(())
    }
    .await;
    (index, result)
}

/// The message of `e` followed by its sources, each once (`Cannot write x: No space left on
/// device`): errors cross the daemon's API as text, so the causes must travel with them.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
