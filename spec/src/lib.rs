//! The `aistack.yaml` file format: parsing, validation and the typed model.
//!
//! Raw YAML becomes a span-carrying node tree ([`yaml`]), Compose's conveniences are applied
//! to it (interpolation, `x-` keys, merges of several files), and it is decoded into the
//! typed [`model::Spec`] while every problem is collected as a [`Diagnostic`] pointing at
//! the offending span. No I/O happens here: the caller reads the files and the environment.

pub mod diagnostic;
pub mod model;
pub mod values;

pub use diagnostic::{Diagnostic, Location, SourceFile};
pub use model::Spec;

/// A parsed and validated spec, with the source location of every key and value.
#[derive(Debug, Clone)]
pub struct Document {
    /// The validated model.
    pub spec: Spec,
    /// Where each value was written, keyed by its dotted path (`models.chat.source`).
    pub locations: std::collections::BTreeMap<String, Location>,
}

impl Document {
    /// The location of the value at `path` (`models.chat.source`), if it was written.
    pub fn location(&self, path: &str) -> Option<&Location> {
        self.locations.get(path)
    }
}
