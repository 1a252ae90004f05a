//! The `aistack.yaml` file format: parsing, validation and the typed model.
//!
//! Raw YAML becomes a span-carrying node tree ([`yaml`]), Compose's conveniences are applied
//! to it (interpolation, `x-` keys, merges of several files), and it is decoded into the
//! typed [`model::Spec`] while every problem is collected as a [`Diagnostic`] pointing at
//! the offending span. No I/O happens here: the caller reads the files and the environment.
//!
//! The steps of [`parse`], in order:
//!
//! 1. [`yaml::load`] each file into [`yaml::Node`]s (anchors, aliases and `<<` merges
//!    resolved; duplicate keys, non-core tags, runaway aliases and nesting reported).
//! 2. Drop top-level `x-` keys, then deep-merge the files in order (Compose's `-f`).
//! 3. [`interpolate`] `${VAR}` in scalar values; a plain scalar stays plain, so
//!    `${CTX:-4096}` is an integer.
//! 4. Decode into [`Spec`] by hand (serde would stop at the first error), recording the
//!    location of every value by dotted path.
//! 5. Validate what needs the whole file: references, template cycles, port and
//!    credential conflicts.
//!
//! Every step reports into one list, so one run shows every problem. Decisions the design
//! leaves open: size units are binary as in Docker (`2G` = `2GiB`, `100KB` = 102400 bytes);
//! a bare model reference is `ai/NAME` (Docker Model Runner) but a bare template image is
//! `library/NAME` (Docker); a bare template `from:` within two edits of a template name is
//! reported as a typo rather than pulled as an image.

#![warn(missing_docs)]

mod decode;
pub mod diagnostic;
pub mod interpolate;
pub mod model;
pub mod runtime_flags;
mod schema;
mod validate;
pub mod values;
pub mod yaml;

use std::collections::BTreeMap;

pub use decode::{did_you_mean, is_name};
pub use diagnostic::{Diagnostic, Location, SourceFile, codes};
pub use interpolate::parse_dotenv;
pub use model::Spec;
pub use schema::schema;

/// A parsed and validated spec, with the source location of every key and value.
#[derive(Debug, Clone)]
pub struct Document {
    /// The validated model.
    pub spec: Spec,
    /// Where each value was written, keyed by its dotted path (`models.chat.source`).
    pub locations: BTreeMap<String, Location>,
    /// Where each mapping key was written, keyed by the same dotted path as its value.
    pub key_locations: BTreeMap<String, Location>,
}

impl Document {
    /// The location of the value at `path` (`models.chat.source`), if it was written.
    pub fn location(&self, path: &str) -> Option<&Location> {
        self.locations.get(path)
    }
}

/// Parses, merges, interpolates, decodes and validates `files` (merged in order, as
/// Compose merges `-f` files), reading `${VAR}` from `env`.
///
/// Returns every problem found, each pointing at the offending span, or the validated
/// document. Pure: no I/O, no environment reads.
pub fn parse(
    files: &[SourceFile],
    env: &BTreeMap<String, String>,
) -> Result<Document, Vec<Diagnostic>> {
    let mut diagnostics = Vec::new();
    let mut roots = Vec::new();
    let mut fatal = false;
    for (i, file) in files.iter().enumerate() {
        let loaded = yaml::load(i, &file.text);
        diagnostics.extend(loaded.diagnostics);
        match loaded.root {
            Some(root) => roots.push(root),
            None => fatal = true,
        }
    }
    if fatal {
        return Err(diagnostics);
    }
    let mut merged: Option<yaml::Node> = None;
    for mut root in roots {
        if !matches!(root.value, yaml::Value::Mapping(_)) {
            let kind = root.kind();
            diagnostics.push(
                Diagnostic::new(
                    codes::TYPE,
                    format!("Expected a mapping at the top of the file, found {kind}"),
                    root.location.clone(),
                    kind,
                )
                .with_help("Start the file with `version: 1` and the sections as keys"),
            );
            continue;
        }
        interpolate::drop_extensions(&mut root);
        match &mut merged {
            None => merged = Some(root),
            Some(base) => interpolate::merge(base, root),
        }
    }
    let Some(mut root) = merged else {
        if diagnostics.is_empty() {
            diagnostics.push(
                Diagnostic::new(
                    codes::EMPTY,
                    "No spec file was given",
                    Location::new(0, 0..0),
                    "no content",
                )
                .with_help("Name a file with `-f aistack.yaml`"),
            );
        }
        return Err(diagnostics);
    };
    let texts: Vec<&str> = files.iter().map(|f| f.text.as_str()).collect();
    interpolate::interpolate(&mut root, env, &texts, &mut diagnostics);
    let mut cx = decode::Cx::default();
    let mut declared = decode::Declared::default();
    let spec = decode::spec(&mut cx, &root, &mut declared);
    validate::validate(&mut cx, &spec, &declared);
    diagnostics.extend(cx.diagnostics);
    if !diagnostics.is_empty() {
        diagnostics.sort_by(|a, b| {
            (a.location.file, a.location.span.start).cmp(&(b.location.file, b.location.span.start))
        });
        return Err(diagnostics);
    }
    Ok(Document {
        spec,
        locations: cx.locations,
        key_locations: cx.keys,
    })
}
