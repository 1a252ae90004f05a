//! The planner: desired spec + observed reality -> a [`Plan`].
//!
//! Synchronous, deterministic and free of I/O: everything the planner needs to know about
//! the machine arrives in [`Observed`], gathered beforehand by the imperative shell. The
//! executor that carries a plan out makes no decisions, so every choice (paths, digests,
//! argv) is made here and written into the steps.

pub mod observed;
pub mod plan;
pub mod reconcile;
pub mod resource;

pub use observed::{FileFact, LocalFile, Observed, RegistryFact};
pub use plan::{Action, Cause, FORMAT_VERSION, Plan, Step, StepIndex, Summary};
pub use reconcile::{
    GATEWAY, PlanError, gateway_disagreement, local_path, normalise, reconcile, reconcile_down,
};
pub use resource::{
    Applied, Desired, Kind, MANIFEST_OUTPUT, Payload, ResourceId, canonical_json, fields_hash,
};
