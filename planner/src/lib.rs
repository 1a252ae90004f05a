//! The planner: desired spec + observed reality -> a [`Plan`].
//!
//! Synchronous, deterministic and free of I/O: everything the planner needs to know about
//! the machine arrives in [`Observed`], gathered beforehand by the imperative shell. The
//! executor that carries a plan out makes no decisions, so every choice (paths, digests,
//! argv, environments, defaults) is made here and written into the steps' typed payloads
//! ([`payload`]).

#![warn(missing_docs)]

pub mod agents;
pub mod observed;
pub mod payload;
pub mod plan;
pub mod quickstart;
pub mod reconcile;
pub mod resource;

pub use observed::{FileFact, LocalFile, Observed, RegistryFact};
pub use payload::{
    Artifact, Base, EngineOptions, GatewayPlan, Kind, KindPlan, Limits, ModelPlan, ModelSettings,
    Payload, SandboxPlan, SandboxSettings, Serving, Settings, TemplatePlan, TemplateSettings,
};
pub use plan::{Action, Cause, FORMAT_VERSION, Plan, Step, StepIndex, Summary};
pub use reconcile::{
    GATEWAY, MODELS_HOST, PlanError, local_path, normalise, reconcile, reconcile_down,
};
pub use resource::{Applied, Desired, MANIFEST_OUTPUT, RecordError, ResourceId};
