//! The agent's children and the one reaper that waits for them all.
//!
//! As PID 1 the agent also inherits every orphan of the sandbox, so it cannot wait for
//! its children one by one: a single thread calls `waitpid(-1)` and hands each status to
//! whoever spawned that pid. Spawning holds the registry's lock until the pid is
//! registered, so a child that exits at once is still matched.

use std::collections::HashMap;
use std::io;
use std::process::Child;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use aistack_sandbox::protocol::ExitStatus;
use aistack_sandbox::sys;

#[derive(Default)]
struct Registry {
    waiting: HashMap<u32, Option<Sender<ExitStatus>>>,
    /// Bumped on every spawn, so the reaper knows whether `ECHILD` is still true.
    spawned: u64,
}

#[derive(Clone, Default)]
pub struct Children {
    inner: Arc<(Mutex<Registry>, Condvar)>,
}

impl Children {
    /// Runs `spawn` under the registry's lock and registers its child. The receiver gets
    /// the exit status; `detached` children's statuses are dropped.
    pub fn spawn(
        &self,
        detached: bool,
        spawn: impl FnOnce() -> io::Result<Child>,
    ) -> io::Result<(Child, Option<Receiver<ExitStatus>>)> {
        let (lock, wake) = &*self.inner;
        let mut registry = lock.lock().expect("registry lock");
        let child = spawn()?;
        let (sender, receiver) = if detached {
            (None, None)
        } else {
            let (tx, rx) = channel();
            (Some(tx), Some(rx))
        };
        registry.waiting.insert(child.id(), sender);
        registry.spawned += 1;
        wake.notify_all();
        Ok((child, receiver))
    }

    /// The reaper's loop; never returns.
    pub fn reap(&self) -> ! {
        let (lock, wake) = &*self.inner;
        loop {
            let generation = lock.lock().expect("registry lock").spawned;
            match sys::wait_any() {
                Ok(Some((pid, status))) => {
                    let mut registry = lock.lock().expect("registry lock");
                    if let Some(Some(sender)) = registry.waiting.remove(&pid) {
                        let _ = sender.send(status);
                    }
                    wake.notify_all();
                }
                Ok(None) => {
                    let registry = lock.lock().expect("registry lock");
                    drop(
                        wake.wait_while(registry, |r| r.spawned == generation)
                            .expect("registry lock"),
                    );
                }
                Err(e) => {
                    eprintln!("aistack-guest: waiting for children: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// Signals every command's process group (and, as PID 1, every process of the
    /// sandbox): SIGTERM, then SIGKILL to what is left after `grace`.
    pub fn terminate(&self, init: bool, grace: Duration) {
        let (lock, wake) = &*self.inner;
        for signal in [libc::SIGTERM, libc::SIGKILL] {
            let pids: Vec<u32> = lock
                .lock()
                .expect("registry lock")
                .waiting
                .keys()
                .copied()
                .collect();
            for pid in pids {
                let _ = sys::kill_group(pid, signal);
            }
            if init {
                sys::kill_every_other(signal);
            }
            let deadline = Instant::now() + grace;
            let mut registry = lock.lock().expect("registry lock");
            while !registry.waiting.is_empty() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                registry = wake.wait_timeout(registry, left).expect("registry lock").0;
            }
        }
    }
}
