//! `aistack daemon`, starting it for `up`, and `aistack logs`.

use std::fs::{self, OpenOptions};
use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use aistack_daemon::Home;
use aistack_daemon::client::Client;

use super::home;
use crate::load::SpecArgs;
use crate::report::{Failure, Report};

/// How long `up` waits for a daemon it started to answer.
const START_TIMEOUT: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(25);

/// `aistack daemon`: the runtime, in the foreground, logging to stderr.
pub async fn daemon() -> Result<ExitCode, Failure> {
    let home = home()?;
    let filter = tracing_subscriber::EnvFilter::try_from_env("AISTACK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    aistack_daemon::run(home).await?;
    Ok(ExitCode::SUCCESS)
}

/// A client of the daemon of `home`, starting the daemon detached when none answers.
pub async fn ensure_daemon(home: &Home) -> Result<Client, Failure> {
    let client = Client::new(&home.socket());
    if client.health().await.is_ok() {
        return Ok(client);
    }
    let log_path = home.daemon_log();
    let cannot = |what: &str, e: std::io::Error| {
        Failure::from(Report::new(
            format!("Cannot start the aistack daemon: {what}: {e}"),
            Some("Check the permissions and free space of `AISTACK_HOME`".to_owned()),
        ))
    };
    fs::create_dir_all(home.logs()).map_err(|e| cannot("creating the log directory", e))?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| cannot("opening its log", e))?;
    let log_err = log.try_clone().map_err(|e| cannot("opening its log", e))?;
    let exe = std::env::current_exe().map_err(|e| cannot("finding this program", e))?;
    // Its own process group: Ctrl-C in this terminal must not reach the daemon.
    let mut child = Command::new(exe)
        .arg("daemon")
        .env("AISTACK_HOME", home.root())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .process_group(0)
        .spawn()
        .map_err(|e| cannot("spawning it", e))?;
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        if client.health().await.is_ok() {
            return Ok(client);
        }
        if let Ok(Some(status)) = child.try_wait() {
            // Another `up` may have started one at the same moment; its daemon then answers.
            if client.health().await.is_ok() {
                return Ok(client);
            }
            // Its report is the last lines of its log: the error, then its `help:`.
            let (said, help) = last_report(&log_path);
            return Err(Report::new(
                format!("The aistack daemon exited as it started ({status}): {said}"),
                Some(help.unwrap_or_else(|| format!("See `{}`", log_path.display()))),
            )
            .into());
        }
        tokio::time::sleep(POLL).await;
    }
    Err(Report::new(
        format!(
            "The aistack daemon did not answer within {}s",
            START_TIMEOUT.as_secs()
        ),
        Some(format!("See `{}`", log_path.display())),
    )
    .into())
}

/// What the daemon said last in its log: its error report (the `×` line) and the report's
/// `help:`, when it ended with one; else its last line.
fn last_report(path: &std::path::Path) -> (String, Option<String>) {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = (text.lines().map(str::trim))
        .filter(|l| !l.is_empty())
        .collect();
    let Some(last) = lines.last() else {
        return ("it wrote nothing".to_owned(), None);
    };
    let Some(help) = last.strip_prefix("help:") else {
        return ((*last).to_owned(), None);
    };
    let said = (lines.iter().rev())
        .find_map(|l| l.strip_prefix('×'))
        .unwrap_or(last);
    (said.trim().to_owned(), Some(help.trim().to_owned()))
}

/// `aistack logs [NAME] [-f]`: the daemon's log, or the engine log of model NAME of the
/// project.
pub async fn logs(spec: &SpecArgs, name: Option<&str>, follow: bool) -> Result<ExitCode, Failure> {
    let home = home()?;
    let engine = name.filter(|n| *n != "daemon");
    let path = match engine {
        None => home.daemon_log(),
        Some(model) => {
            let project = spec.project_without_spec()?;
            // The gateway names engine logs so (see `aistack_gateway::Launcher`).
            home.logs().join(format!("engine-{project}-{model}.log"))
        }
    };
    let mut file = match fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && engine.is_some() => {
            let model = engine.unwrap_or_default();
            return Err(Report::new(
                format!("No engine log for model `{model}`"),
                Some(
                    "An engine writes its log once its model loads: run `aistack run MODEL`, \
                     or set `preload: true` and run `aistack up`"
                        .to_owned(),
                ),
            )
            .into());
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !follow => {
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => {
            return Err(Report::new(
                format!("Cannot read `{}`: {e}", path.display()),
                Some("The daemon writes it once `aistack up` has started it".to_owned()),
            )
            .into());
        }
    };
    let mut out = std::io::stdout();
    let mut buf = Vec::new();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        buf.clear();
        let _ = file.read_to_end(&mut buf);
        let _ = out.write_all(&buf);
        let _ = out.flush();
        if !follow {
            return Ok(ExitCode::SUCCESS);
        }
        // A rotated or truncated log starts over.
        if let (Ok(pos), Ok(meta)) = (file.stream_position(), fs::metadata(&path))
            && meta.len() < pos
        {
            let _ = file.seek(SeekFrom::Start(0));
        }
        tokio::select! {
            _ = &mut ctrl_c => return Ok(ExitCode::SUCCESS),
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}
