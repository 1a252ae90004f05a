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

impl Location {
    /// A location in file `file` spanning `span`.
    pub fn new(file: usize, span: Range<usize>) -> Self {
        Location { file, span }
    }

    /// The 1-based line and column (in characters) where the span starts in `text`.
    ///
    /// A span past the end of `text` or inside a character is clamped to the nearest
    /// character boundary before it.
    pub fn line_col(&self, text: &str) -> (usize, usize) {
        let mut start = self.span.start.min(text.len());
        while !text.is_char_boundary(start) {
            start -= 1;
        }
        let before = &text[..start];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before[line_start..].chars().count() + 1;
        (line, col)
    }
}

impl Diagnostic {
    /// A diagnostic without help.
    pub fn new(
        code: &'static str,
        message: impl Into<String>,
        location: Location,
        label: impl Into<String>,
    ) -> Self {
        Diagnostic {
            code,
            message: one_line(&message.into()),
            location,
            label: label.into(),
            help: None,
        }
    }

    /// The same diagnostic with `help`.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// The longest message kept whole; longer ones (quoting a long value) are cut.
const MAX_MESSAGE: usize = 240;

/// `text` on one line: control characters escaped (a quoted value may hold a newline),
/// and cut to [`MAX_MESSAGE`] characters.
fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (count, c) in text.chars().enumerate() {
        if count >= MAX_MESSAGE {
            out.push('…');
            break;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                out.push_str(&c.escape_unicode().to_string())
            }
            c => out.push(c),
        }
    }
    out
}

/// The stable diagnostic codes.
pub mod codes {
    /// Malformed YAML, or YAML features the format does not allow (several documents).
    pub const SYNTAX: &str = "aistack::syntax";
    /// A file with no content.
    pub const EMPTY: &str = "aistack::empty";
    /// A key written twice in one mapping.
    pub const DUPLICATE_KEY: &str = "aistack::duplicate-key";
    /// A key the format does not know.
    pub const UNKNOWN_KEY: &str = "aistack::unknown-key";
    /// A required key that is not written.
    pub const MISSING_KEY: &str = "aistack::missing-key";
    /// A value of the wrong YAML type.
    pub const TYPE: &str = "aistack::type";
    /// A value of the right type that is not acceptable (a size, a duration, a CIDR...).
    pub const INVALID_VALUE: &str = "aistack::invalid-value";
    /// A YAML tag other than the core schema's.
    pub const TAG: &str = "aistack::tag";
    /// Aliases expanding past the size limit, or nesting past the depth limit.
    pub const TOO_LARGE: &str = "aistack::too-large";
    /// A `${VAR}` that cannot be substituted.
    pub const INTERPOLATION: &str = "aistack::interpolation";
    /// A malformed `.env` line.
    pub const DOTENV: &str = "aistack::dotenv";
    /// A name of a model, template, policy or sandbox that does not exist.
    pub const UNRESOLVED_REFERENCE: &str = "aistack::unresolved-reference";
    /// Template inheritance that loops.
    pub const CYCLE: &str = "aistack::cycle";
    /// Two things that cannot both hold (a port published twice, a bypassed credential host).
    pub const CONFLICT: &str = "aistack::conflict";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters() {
        let text = "a: é\nbé: x\n";
        assert_eq!(Location::new(0, 0..1).line_col(text), (1, 1));
        assert_eq!(Location::new(0, 9..10).line_col(text), (2, 3));
        // Inside a character or past the end: clamped, never a panic.
        assert_eq!(Location::new(0, 4..4).line_col(text), (1, 4));
        assert_eq!(Location::new(0, 99..99).line_col(text), (3, 1));
    }

    #[test]
    fn messages_stay_on_one_line() {
        let d = Diagnostic::new(codes::TYPE, "Bad `a\nb`", Location::new(0, 0..0), "x");
        assert_eq!(d.message, "Bad `a\\nb`");
    }
}
