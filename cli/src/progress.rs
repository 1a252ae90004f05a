//! Progress of byte transfers (imports, pulls, pushes): a bar per part on a terminal, plain
//! lines otherwise, nothing with `--quiet`.

use std::collections::BTreeMap;
use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use aistack_spec::values::human_size;

/// How progress is shown.
pub enum Progress {
    /// Nothing.
    Quiet,
    /// A line when a part starts, at each quarter, and when it ends.
    Plain(BTreeMap<String, u64>),
    /// A bar per part.
    Bars(MultiProgress, BTreeMap<String, ProgressBar>),
}

impl Progress {
    /// Bars on a terminal, plain lines elsewhere, nothing when `quiet`.
    pub fn new(quiet: bool) -> Self {
        if quiet {
            Progress::Quiet
        } else if std::io::stdout().is_terminal() {
            Progress::Bars(
                MultiProgress::with_draw_target(ProgressDrawTarget::stdout()),
                BTreeMap::new(),
            )
        } else {
            Progress::Plain(BTreeMap::new())
        }
    }

    /// `done` of `total` bytes of the part `label` (e.g. `model chat sha256:0123…`).
    pub fn bytes(&mut self, label: &str, done: u64, total: u64) {
        match self {
            Progress::Quiet => {}
            Progress::Plain(quarters) => {
                let quarter = done.saturating_mul(4).checked_div(total).unwrap_or(4);
                let last = quarters.get(label).copied();
                if last.is_none_or(|q| quarter > q) {
                    quarters.insert(label.to_owned(), quarter);
                    println!("{label}: {} of {}", human_size(done), human_size(total));
                }
            }
            Progress::Bars(multi, bars) => {
                let bar = bars.entry(label.to_owned()).or_insert_with(|| {
                    let bar = multi.add(ProgressBar::new(total));
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                    );
                    bar.set_prefix(label.to_owned());
                    bar
                });
                bar.set_length(total);
                bar.set_position(done);
                if done >= total {
                    bar.finish();
                }
            }
        }
    }

    /// A line of text that must not tear the bars.
    pub fn println(&self, line: &str) {
        match self {
            Progress::Quiet => {}
            Progress::Plain(_) => println!("{line}"),
            Progress::Bars(multi, _) => {
                let _ = multi.println(line);
            }
        }
    }
}
