//! Problems found in a spec, each pointing at the span that caused it.

use std::ops::Range;

/// One input file: its name as shown to the user and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// The path as the user wrote it (`aistack.yaml`, `-f prod.yaml`).
    pub name: String,
    /// The file's contents.
    pub text: String,
}

/// A span in one of the input files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// Index of the file in the slice given to [`crate::parse`].
    pub file: usize,
    /// Byte range in that file's text.
    pub span: Range<usize>,
}

/// A problem in a spec: stable code, one-line message, labelled span and a fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Stable identifier, e.g. `aistack::unknown-key`.
    pub code: &'static str,
    /// One capitalised line, names in backticks, no trailing period.
    pub message: String,
    /// Where the problem is.
    pub location: Location,
    /// Text shown under the span.
    pub label: String,
    /// What to do about it.
    pub help: Option<String>,
}
