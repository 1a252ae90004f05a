//! Rendering problems for people: the one place that turns errors into miette reports.

use std::fmt;
use std::io::IsTerminal;

use aistack_spec::{Diagnostic, SourceFile};
use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource, SourceSpan};

/// A problem to show: a message, an optional code, a fix, and optionally a labelled span in
/// one of the spec files.
#[derive(Debug)]
pub struct Report {
    code: Option<String>,
    message: String,
    help: Option<String>,
    source: Option<(NamedSource<String>, SourceSpan, String)>,
}

impl Report {
    /// A problem without a place in the spec.
    pub fn new(message: impl Into<String>, help: Option<String>) -> Self {
        Report {
            code: None,
            message: message.into(),
            help,
            source: None,
        }
    }

    /// A spec diagnostic, with its file.
    pub fn from_diagnostic(d: &Diagnostic, files: &[SourceFile]) -> Self {
        let source = files.get(d.location.file).map(|file| {
            let span = SourceSpan::from(d.location.span.clone());
            (
                NamedSource::new(&file.name, file.text.clone()).with_language("yaml"),
                span,
                d.label.clone(),
            )
        });
        Report {
            code: Some(d.code.to_owned()),
            message: d.message.clone(),
            help: d.help.clone(),
            source,
        }
    }

    /// The report as text, in colour only on a terminal without `NO_COLOR`.
    pub fn render(&self) -> String {
        let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        let theme = if colour {
            GraphicalTheme::unicode()
        } else {
            GraphicalTheme::unicode_nocolor()
        };
        let handler = GraphicalReportHandler::new_themed(theme)
            .with_width(100)
            .with_wrap_lines(false)
            .with_context_lines(1);
        let mut out = String::new();
        if handler.render_report(&mut out, self).is_err() {
            out = format!("error: {}\n", self.message);
        }
        out
    }

    /// Prints the report on stderr.
    pub fn eprint(&self) {
        eprint!("{}", self.render());
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Report {}

impl miette::Diagnostic for Report {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.code
            .as_ref()
            .map(|c| Box::new(c) as Box<dyn fmt::Display>)
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.source
            .as_ref()
            .map(|(src, _, _)| src as &dyn miette::SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let (_, span, label) = self.source.as_ref()?;
        Some(Box::new(std::iter::once(
            LabeledSpan::new_primary_with_span(Some(label.clone()), *span),
        )))
    }
}

/// An error a command ends with: one or more reports, exit code 1.
#[derive(Debug)]
pub struct Failure(pub Vec<Report>);

impl Failure {
    /// Prints every report on stderr, a blank line between two, and a count when several.
    pub fn eprint(&self) {
        for (i, report) in self.0.iter().enumerate() {
            if i > 0 {
                eprintln!();
            }
            report.eprint();
        }
        if self.0.len() > 1 {
            eprintln!("\n{} problems found", self.0.len());
        }
    }
}

impl From<Report> for Failure {
    fn from(report: Report) -> Self {
        Failure(vec![report])
    }
}

/// Errors of the executors turn into reports with their own help.
macro_rules! report_from {
    ($($ty:ty),+) => {$(
        impl From<$ty> for Failure {
            fn from(e: $ty) -> Self {
                Failure(vec![Report::new(chain(&e), e.help())])
            }
        }
    )+};
}

report_from!(
    aistack_daemon::state::StateError,
    aistack_planner::RecordError,
    aistack_daemon::client::ClientError,
    aistack_daemon::DaemonError,
    aistack_store::StoreError,
    aistack_engine::serve::ServeError,
    aistack_engine::confine::ConfineError
);

pub use aistack_apply::chain;
