//! One exec connection: spawn the command confined, pump its streams as frames, relay
//! stdin, signals and window sizes, and end with its exit status.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aistack_sandbox::protocol::{self, ExitStatus, Frame, Reply};
use aistack_sandbox::sys::{self, Confinement};

use crate::server::{self, Mode, Shared};
use crate::users::{self, AGENT};

/// After the command exits, how long its output may still take to drain: a background
/// process that keeps the pipe open must not hold the exec open forever.
const DRAIN: Duration = Duration::from_millis(500);

pub fn run(shared: &Shared, mut stream: UnixStream, request: protocol::Exec) -> io::Result<()> {
    // The threads that follow the command start before it does: a command that forks
    // up to the sandbox's process limit at once must not leave none for them.
    let workers = if request.detach { 0 } else { 3 };
    let workers = match (0..workers)
        .map(|_| Worker::start())
        .collect::<io::Result<Vec<_>>>()
    {
        Ok(workers) => workers,
        Err(e) => {
            let message =
                format!("Cannot follow a command ({e}): the sandbox is at its process limit");
            return server::reply(&mut stream, &server::error(message));
        }
    };
    let started = match start(shared, &request) {
        Ok(started) => started,
        Err(e) => return server::reply(&mut stream, &server::error(e.to_string())),
    };
    server::reply(&mut stream, &Reply::Started { pid: started.pid })?;
    if request.detach {
        return Ok(());
    }
    let writer = Arc::new(Mutex::new(stream.try_clone()?));
    let pid = started.pid;
    let (control, input) = (started.control, started.input);
    let mut workers = workers.into_iter();
    let mut pumps = Vec::new();
    if let Some(relay) = workers.next() {
        relay.run(move || relay_input(stream, input, control, pid));
    }
    for ((source, frame), worker) in started.outputs.into_iter().zip(workers) {
        let writer = writer.clone();
        pumps.push(worker.run(move || pump(source, frame, writer)));
    }
    let status = started.exit.recv().unwrap_or(ExitStatus {
        code: None,
        signal: Some(libc::SIGKILL),
    });
    let deadline = std::time::Instant::now() + DRAIN;
    for pump in pumps {
        while !pump.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let mut writer = writer.lock().expect("writer lock");
    Frame::Exit(status).write_to(&mut *writer)?;
    writer.shutdown(std::net::Shutdown::Both)
}

/// A thread started ahead of its work; one given no work ends.
struct Worker {
    job: std::sync::mpsc::Sender<Box<dyn FnOnce() + Send>>,
    handle: std::thread::JoinHandle<()>,
}

impl Worker {
    fn start() -> io::Result<Worker> {
        let (job, jobs) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
        let handle = crate::thread(move || {
            if let Ok(job) = jobs.recv() {
                job();
            }
        })?;
        Ok(Worker { job, handle })
    }

    fn run(self, job: impl FnOnce() + Send + 'static) -> std::thread::JoinHandle<()> {
        let _ = self.job.send(Box::new(job));
        self.handle
    }
}

/// A stream of the command and the frame its bytes travel in.
type Output = (File, fn(Vec<u8>) -> Frame);

struct Started {
    pid: u32,
    exit: Receiver<ExitStatus>,
    input: Option<File>,
    /// The terminal's controller, for window sizes (TTY mode).
    control: Option<OwnedFd>,
    outputs: Vec<Output>,
}

fn start(shared: &Shared, request: &protocol::Exec) -> io::Result<Started> {
    let program = request.argv.first().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "No command given; pass one after `--`",
        )
    })?;
    let user = match (&request.user, shared.mode) {
        (Some(spec), _) => users::resolve(spec)?,
        (None, Mode::Init { .. }) => users::resolve(AGENT)?,
        (None, Mode::Process) => users::resolve(&own_ids())?,
    };
    let mut command = Command::new(program);
    command
        .args(&request.argv[1..])
        .env_clear()
        .envs(environment(&request.env, &shared.env, &user))
        .current_dir(request.cwd.as_deref().unwrap_or(&user.home));
    let mut outputs: Vec<Output> = Vec::new();
    let (mut input, mut control) = (None, None);
    if request.detach {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
    } else if let Some(size) = request.tty {
        let (controller, terminal) = sys::open_pty(size)?;
        command
            .stdin(terminal.try_clone()?)
            .stdout(terminal.try_clone()?)
            .stderr(terminal);
        input = Some(File::from(controller.try_clone()?));
        outputs.push((File::from(controller.try_clone()?), Frame::Stdout));
        control = Some(controller);
    } else {
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
    }
    let confinement = Confinement {
        uid: user.uid,
        gid: user.gid,
        groups: vec![user.gid],
        controlling_tty: request.tty.is_some() && !request.detach,
        drop_capabilities: user.uid != 0,
        seccomp: shared.seccomp.clone(),
    };
    let (mut child, exit) = shared
        .children
        .spawn(request.detach, || {
            sys::spawn_confined(&mut command, confinement)
        })
        .map_err(|e| io::Error::new(e.kind(), format!("Cannot run `{program}`: {e}")))?;
    drop(command);
    if let Some(stdin) = child.stdin.take() {
        input = Some(File::from(OwnedFd::from(stdin)));
    }
    if let Some(stdout) = child.stdout.take() {
        outputs.push((File::from(OwnedFd::from(stdout)), Frame::Stdout));
    }
    if let Some(stderr) = child.stderr.take() {
        outputs.push((File::from(OwnedFd::from(stderr)), Frame::Stderr));
    }
    Ok(Started {
        pid: child.id(),
        exit: exit.unwrap_or_else(|| std::sync::mpsc::channel().1),
        input,
        control,
        outputs,
    })
}

/// The command's environment: what the host sent, with the sandbox's own variables and
/// `PATH`, `HOME`, `USER` and `LOGNAME` filled in when it did not send them.
fn environment(
    requested: &BTreeMap<String, String>,
    sandbox: &[(String, String)],
    user: &users::User,
) -> BTreeMap<String, String> {
    let mut env = requested.clone();
    for (key, value) in sandbox {
        env.entry(key.clone()).or_insert_with(|| value.clone());
    }
    let defaults = [
        ("PATH", aistack_sandbox::setup::PATH),
        ("HOME", user.home.as_str()),
        ("USER", user.name.as_str()),
        ("LOGNAME", user.name.as_str()),
    ];
    for (key, value) in defaults {
        env.entry(key.to_string())
            .or_insert_with(|| value.to_string());
    }
    env
}

/// The agent's own `UID:GID` (a process's `/proc/self` belongs to its ids).
fn own_ids() -> String {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map_or("0:0".to_owned(), |m| format!("{}:{}", m.uid(), m.gid()))
}

fn pump(mut source: File, frame: fn(Vec<u8>) -> Frame, writer: Arc<Mutex<UnixStream>>) {
    {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let n = match source.read(&mut buffer) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // A terminal's controller reads EIO once the last process holding the
                // terminal has gone.
                Err(_) => return,
            };
            let mut writer = writer.lock().expect("writer lock");
            if frame(buffer[..n].to_vec()).write_to(&mut *writer).is_err() {
                return;
            }
        }
    }
}

/// Relays the host's frames until it closes its side.
fn relay_input(
    mut stream: UnixStream,
    mut input: Option<File>,
    control: Option<OwnedFd>,
    pid: u32,
) {
    while let Ok(Some(frame)) = Frame::read_from(&mut stream) {
        match frame {
            Frame::Stdin(data) => {
                if let Some(file) = input.as_mut()
                    && file.write_all(&data).is_err()
                {
                    input = None;
                }
            }
            // A terminal has no end of input; its end is the controller's ^D.
            Frame::StdinEof if control.is_none() => input = None,
            Frame::Signal(signal) => {
                let _ = sys::kill_group(pid, signal);
            }
            Frame::Resize(size) => {
                if let Some(controller) = &control {
                    let _ = sys::set_window_size(controller, size);
                }
            }
            _ => {}
        }
    }
}
