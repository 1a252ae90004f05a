//! `aistack network …`: what the network policies' proxies decided.

use std::io::{self, Write};
use std::net::IpAddr;
use std::process::ExitCode;

use aistack_proxy::netlog::{self, Entry, Follower};
use aistack_spec::values::human_size;
use clap::Subcommand;

use super::home;
use crate::load::SpecArgs;
use crate::report::{Failure, Report};

/// The `network` subcommands.
#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Show the proxies' decisions, one line per request.
    Log {
        /// Only the requests of this source (a network policy).
        name: Option<String>,
        /// Print the log's JSON lines.
        #[arg(long)]
        json: bool,
        /// Keep printing new requests. (No `-f`: that is the global `--file`.)
        #[arg(long)]
        follow: bool,
    },
}

/// `aistack network …`.
pub async fn network(spec: &SpecArgs, command: NetworkCommand) -> Result<ExitCode, Failure> {
    match command {
        NetworkCommand::Log { name, json, follow } => {
            log(spec, name.as_deref(), json, follow).await
        }
    }
}

/// `aistack network log [NAME] [--json] [--follow]`: the project's network log (its rotated
/// file first), filtered by source.
async fn log(
    spec: &SpecArgs,
    name: Option<&str>,
    json: bool,
    follow: bool,
) -> Result<ExitCode, Failure> {
    let home = home()?;
    let project = spec.project_without_spec()?;
    let path = netlog::path(&home.logs(), &project);
    let cannot_read = |e: io::Error| {
        Failure::from(Report::new(
            format!("Cannot read the network log `{}`: {e}", path.display()),
            Some("Check the permissions of `AISTACK_HOME`".to_owned()),
        ))
    };
    let mut follower = Follower::new(path.clone());
    let entries = follower.poll().map_err(cannot_read)?;
    if !follower.found() {
        eprintln!("No network log for project `{project}` yet");
        eprintln!("hint: It is written once `aistack up` starts a network policy's proxy");
        if !follow {
            return Ok(ExitCode::SUCCESS);
        }
    }
    let mut printer = Printer {
        name,
        json,
        widths: [0; COLUMNS],
    };
    let Ok(shown) = printer.print(&entries) else {
        // Stdout closed: the reader is gone.
        return Ok(ExitCode::SUCCESS);
    };
    if !follow {
        if entries.is_empty() && follower.found() {
            eprintln!("No requests in the network log of project `{project}` yet");
            eprintln!("hint: Send some through a proxy: `aistack status` shows their endpoints");
        } else if let (Some(name), 0) = (name, shown) {
            no_entries_from(name, &project, &entries);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => return Ok(ExitCode::SUCCESS),
            _ = tokio::time::sleep(netlog::POLL_INTERVAL) => {}
        }
        let entries = follower.poll().map_err(cannot_read)?;
        if printer.print(&entries).is_err() {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

fn no_entries_from(name: &str, project: &str, entries: &[Entry]) {
    let mut sources: Vec<&str> = entries.iter().map(|e| e.source.as_str()).collect();
    sources.sort_unstable();
    sources.dedup();
    let sources: Vec<String> = sources.iter().map(|s| format!("`{s}`")).collect();
    eprintln!("No requests from `{name}` in the network log of project `{project}`");
    eprintln!("hint: It holds requests from {}", sources.join(", "));
}

/// time, source, method, destination, decision, status, bytes, and the rule unpadded.
const COLUMNS: usize = 7;

/// Prints entries as they come; columns widen to the widest value seen so far.
struct Printer<'a> {
    name: Option<&'a str>,
    json: bool,
    widths: [usize; COLUMNS],
}

impl Printer<'_> {
    /// Prints the entries of the chosen source and says how many; an error when stdout is
    /// closed.
    fn print(&mut self, entries: &[Entry]) -> io::Result<usize> {
        let chosen: Vec<&Entry> = entries
            .iter()
            .filter(|e| self.name.is_none_or(|n| e.source == n))
            .collect();
        if chosen.is_empty() {
            return Ok(0);
        }
        let mut text = String::new();
        if self.json {
            for entry in &chosen {
                text.push_str(&serde_json::to_string(entry).unwrap_or_default());
                text.push('\n');
            }
        } else {
            let rows: Vec<([String; COLUMNS], String)> = chosen.iter().map(|e| row(e)).collect();
            for (cells, _) in &rows {
                for (width, cell) in self.widths.iter_mut().zip(cells) {
                    *width = (*width).max(cell.chars().count());
                }
            }
            for (cells, rest) in &rows {
                for (width, cell) in self.widths.iter().zip(cells) {
                    text.push_str(&format!("{cell:width$}  "));
                }
                text.push_str(rest);
                text.truncate(text.trim_end().len());
                text.push('\n');
            }
        }
        let mut out = io::stdout();
        out.write_all(text.as_bytes())?;
        out.flush()?;
        Ok(chosen.len())
    }
}

/// One entry's padded cells and its unpadded rest: the rule, `intercepted`, the error.
fn row(e: &Entry) -> ([String; COLUMNS], String) {
    let bare = e.host.trim_start_matches('[').trim_end_matches(']');
    let mut destination = if e.host.contains(':') && !e.host.starts_with('[') {
        format!("[{}]:{}", e.host, e.port)
    } else {
        format!("{}:{}", e.host, e.port)
    };
    if let Some(address) = e.address
        && bare.parse::<IpAddr>().ok() != Some(address)
    {
        destination.push_str(&format!(" ({address})"));
    }
    let mut rest = e.rule.clone();
    if e.intercepted {
        rest.push_str("  intercepted");
    }
    if let Some(error) = &e.error {
        rest.push_str(&format!("  error: {error}"));
    }
    (
        [
            e.time.clone(),
            e.source.clone(),
            e.method.clone(),
            destination,
            e.decision.clone(),
            e.status.to_string(),
            format!("↑{} ↓{}", human_size(e.bytes_up), human_size(e.bytes_down)),
        ],
        rest,
    )
}
