//! The models a gateway serves and their engines' lifecycle: load on first request (one load
//! at a time, so two first requests load once and admission sees every resident), admission
//! against the memory budget with least-recently-used eviction of idle models, a bounded
//! queue per model, unload after `keep_alive` idle, and restart of an engine that died.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aistack_engine_api::{EngineClient, EngineInfo, Mode};
use serde::Serialize;
use tokio::process::Child;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::admission::{Resident, evictions};
use crate::config::{GatewayError, KeepAlive, Launcher, ModelConfig};
use crate::launch;

/// Requests that may wait for a sequence of one model; beyond, 503 as Ollama answers when
/// its queue (`OLLAMA_MAX_QUEUE`) is full. Waiting costs only a task, so the bound is generous.
pub(crate) const MAX_WAITING: usize = 128;
/// How long an engine may take to load its model.
const LOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one readiness probe waits for the engine's answer.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// A registered model, as `aistack status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ModelStatus {
    /// The name clients send.
    pub name: String,
    /// The project that declared it.
    pub project: String,
    /// Chat or embedding.
    pub mode: Mode,
    /// Its engine, when loaded.
    pub loaded: Option<LoadedStatus>,
}

/// A running engine.
#[derive(Debug, Clone, Serialize)]
pub struct LoadedStatus {
    /// The engine process.
    pub pid: u32,
    /// Bytes it takes, as the engine estimates.
    pub memory_bytes: u64,
    /// CPU threads.
    pub threads: u32,
    /// Tokens of context per sequence.
    pub context_size: u32,
    /// Sequences decoded together.
    pub parallel: u32,
    /// ggml's CPU feature line.
    pub cpu_features: String,
    /// SIMD features the CPU has that the build does not use.
    pub unused_cpu_features: Vec<String>,
    /// Requests at the engine now.
    pub in_flight: usize,
}

/// Why a request could not get an engine; the dialects render it.
#[derive(Debug)]
pub(crate) enum Unavailable {
    /// No model of that name; the names served.
    Unknown(Vec<String>),
    /// Queue full.
    Busy,
    /// Loading failed or does not fit.
    Failed(GatewayError),
}

struct Running {
    child: Child,
    client: EngineClient,
    info: EngineInfo,
    /// The device and inode of the socket it bound, so that stopping it removes that
    /// socket and never the one a newer engine of the same model bound at the same path.
    socket: Option<(u64, u64)>,
}

/// The device and inode of the file at `path`.
fn file_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

pub(crate) struct Entry {
    pub(crate) config: ModelConfig,
    engine: tokio::sync::Mutex<Option<Running>>,
    /// A snapshot of the engine for status and admission without awaiting its lock.
    loaded: Mutex<Option<EngineInfo>>,
    sequences: Arc<Semaphore>,
    waiting: AtomicUsize,
    in_flight: AtomicUsize,
    /// Milliseconds since the gateway started when the last request ended.
    last_used: AtomicU64,
}

impl Entry {
    fn new(config: ModelConfig) -> Self {
        let parallel = config.parallel.max(1) as usize;
        Entry {
            config,
            engine: tokio::sync::Mutex::new(None),
            loaded: Mutex::new(None),
            sequences: Arc::new(Semaphore::new(parallel)),
            waiting: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            last_used: AtomicU64::new(0),
        }
    }

    fn idle(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) == 0 && self.in_flight.load(Ordering::SeqCst) == 0
    }

    pub(crate) fn queue_depth(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    pub(crate) fn loaded_info(&self) -> Option<EngineInfo> {
        self.loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    async fn stop(&self) {
        let running = self.engine.lock().await.take();
        *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if let Some(running) = running {
            terminate(running.child).await;
            // A confined engine cannot remove its socket itself.
            let path = running.client.socket();
            if running.socket.is_some() && file_id(path) == running.socket {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// SIGTERM, then SIGKILL after 5 s.
async fn terminate(mut child: Child) {
    if let Some(pid) = child
        .id()
        .and_then(|p| rustix::process::Pid::from_raw(p as i32))
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        if tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    let _ = child.kill().await;
}

/// A request's hold on a sequence of a loaded engine; dropping it ends the request.
pub(crate) struct Lease {
    pub(crate) entry: Arc<Entry>,
    pub(crate) client: EngineClient,
    epoch: Instant,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.entry
            .last_used
            .store(millis_since(self.epoch), Ordering::SeqCst);
        self.entry.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn millis_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Every model of one gateway.
pub(crate) struct Models {
    launcher: Launcher,
    entries: Mutex<BTreeMap<String, Arc<Entry>>>,
    budget: AtomicU64,
    /// Serialises loads: admission must see every resident, and a model loads once.
    loading: tokio::sync::Mutex<()>,
    epoch: Instant,
}

impl Models {
    pub(crate) fn new(launcher: Launcher, budget: u64) -> Self {
        Models {
            launcher,
            entries: Mutex::new(BTreeMap::new()),
            budget: AtomicU64::new(budget),
            loading: tokio::sync::Mutex::new(()),
            epoch: Instant::now(),
        }
    }

    pub(crate) fn set_budget(&self, budget: u64) {
        self.budget.store(budget, Ordering::SeqCst);
    }

    fn entries(&self) -> Vec<Arc<Entry>> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<Entry>>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The registered models, by name.
    pub(crate) fn configs(&self) -> Vec<Arc<Entry>> {
        self.entries()
    }

    pub(crate) async fn register(&self, config: ModelConfig) -> Result<(), GatewayError> {
        let previous = {
            let mut entries = self.lock();
            if let Some(existing) = entries.get(&config.name)
                && existing.config.project != config.project
            {
                return Err(GatewayError::Conflict {
                    name: config.name.clone(),
                    project: config.project.clone(),
                    other: existing.config.project.clone(),
                });
            }
            if entries
                .get(&config.name)
                .is_some_and(|e| e.config == config)
            {
                return Ok(());
            }
            // Anything else changed: the old engine stops and the next request loads anew.
            entries.insert(config.name.clone(), Arc::new(Entry::new(config)))
        };
        if let Some(previous) = previous {
            previous.stop().await;
        }
        Ok(())
    }

    pub(crate) async fn unregister(&self, project: &str, name: &str) {
        let removed = {
            let mut entries = self.lock();
            match entries.get(name) {
                Some(entry) if entry.config.project == project => entries.remove(name),
                _ => None,
            }
        };
        if let Some(entry) = removed {
            entry.stop().await;
        }
    }

    /// Finds a model by the name a client sent: its key, `KEY:latest`, or its reference.
    pub(crate) fn find(&self, name: &str) -> Result<Arc<Entry>, Unavailable> {
        let entries = self.lock();
        let bare = name.strip_suffix(":latest").unwrap_or(name);
        entries
            .get(name)
            .or_else(|| entries.get(bare))
            .or_else(|| {
                entries.values().find(|e| {
                    e.config.reference.as_deref().is_some_and(|r| {
                        r == name || r.strip_prefix("docker.io/").is_some_and(|r| r == name)
                    })
                })
            })
            .cloned()
            .ok_or_else(|| Unavailable::Unknown(entries.keys().cloned().collect()))
    }

    /// Waits for a sequence of `entry` (bounded queue) and its engine (loading it if needed).
    pub(crate) async fn acquire(&self, entry: Arc<Entry>) -> Result<Lease, Unavailable> {
        let parallel = entry.config.parallel.max(1) as usize;
        let queued = entry.waiting.fetch_add(1, Ordering::SeqCst);
        let at_engine = entry.in_flight.load(Ordering::SeqCst);
        if queued + at_engine >= parallel + MAX_WAITING {
            entry.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(Unavailable::Busy);
        }
        let permit = entry.sequences.clone().acquire_owned().await;
        entry.waiting.fetch_sub(1, Ordering::SeqCst);
        let Ok(permit) = permit else {
            return Err(Unavailable::Busy);
        };
        entry.in_flight.fetch_add(1, Ordering::SeqCst);
        let lease_entry = entry.clone();
        let client = match self.ensure_loaded(&entry).await {
            Ok(client) => client,
            Err(e) => {
                entry.in_flight.fetch_sub(1, Ordering::SeqCst);
                return Err(Unavailable::Failed(e));
            }
        };
        Ok(Lease {
            entry: lease_entry,
            client,
            epoch: self.epoch,
            _permit: permit,
        })
    }

    /// Loads `entry`'s engine unless it runs; restarts it if it died.
    pub(crate) async fn ensure_loaded(
        &self,
        entry: &Arc<Entry>,
    ) -> Result<EngineClient, GatewayError> {
        {
            let mut engine = entry.engine.lock().await;
            if let Some(running) = engine.as_mut() {
                if running.child.try_wait().ok().flatten().is_none() {
                    return Ok(running.client.clone());
                }
                tracing::warn!(model = %entry.config.name, "Engine died; restarting it");
                *engine = None;
                *entry.loaded.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
        }
        let _loading = self.loading.lock().await;
        let mut engine = entry.engine.lock().await;
        if let Some(running) = engine.as_ref() {
            return Ok(running.client.clone());
        }
        self.admit(entry).await?;
        let running = self.spawn(entry).await?;
        let client = running.client.clone();
        *entry.loaded.lock().unwrap_or_else(|e| e.into_inner()) = Some(running.info.clone());
        *engine = Some(running);
        Ok(client)
    }

    /// Makes room for `entry` within the budget by stopping idle models, oldest first.
    async fn admit(&self, entry: &Arc<Entry>) -> Result<(), GatewayError> {
        let others: Vec<Arc<Entry>> = self
            .entries()
            .into_iter()
            .filter(|e| !Arc::ptr_eq(e, entry))
            .collect();
        let residents: Vec<Resident<usize>> = others
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                e.loaded_info().map(|info| Resident {
                    key: i,
                    memory: info.memory_bytes.max(e.config.memory_estimate),
                    idle: e.idle(),
                    last_used: e.last_used.load(Ordering::SeqCst),
                })
            })
            .collect();
        let budget = self.budget.load(Ordering::SeqCst);
        let needed = entry.config.memory_estimate;
        match evictions(needed, budget, &residents) {
            Ok(evict) => {
                for i in evict {
                    tracing::info!(model = %others[i].config.name, "Unloading an idle model to make room");
                    others[i].stop().await;
                }
                Ok(())
            }
            Err(free) => Err(GatewayError::Memory {
                model: entry.config.name.clone(),
                needed,
                free,
                budget,
            }),
        }
    }

    fn socket_path(&self, config: &ModelConfig) -> PathBuf {
        // Unix socket paths are short (108 bytes): a hash, not the names.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in config.project.bytes().chain([0]).chain(config.name.bytes()) {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.launcher
            .run_dir
            .join(format!("engine-{hash:016x}.sock"))
    }

    /// Threads for a new engine: the cores other engines leave free (never fewer than one),
    /// since ggml's spinning threads collapse when they share cores.
    fn threads_for(&self, entry: &Arc<Entry>) -> u32 {
        if let Some(threads) = entry.config.threads {
            return threads;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let used: u32 = self
            .entries()
            .iter()
            .filter(|e| !Arc::ptr_eq(e, entry))
            .filter_map(|e| e.loaded_info().map(|i| i.threads))
            .sum();
        cores.saturating_sub(used).max(1)
    }

    async fn spawn(&self, entry: &Arc<Entry>) -> Result<Running, GatewayError> {
        let config = &entry.config;
        let io = |path: &Path, source| GatewayError::Io {
            model: config.name.clone(),
            path: path.to_owned(),
            source,
        };
        std::fs::create_dir_all(&self.launcher.run_dir)
            .map_err(|e| io(&self.launcher.run_dir, e))?;
        std::fs::create_dir_all(&self.launcher.log_dir)
            .map_err(|e| io(&self.launcher.log_dir, e))?;
        let log_path = self
            .launcher
            .log_dir
            .join(format!("engine-{}-{}.log", config.project, config.name));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| io(&log_path, e))?;
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let socket = self.socket_path(config);
        launch::share_model(&self.launcher, &config.model_path)
            .map_err(|(path, e)| io(&path, e))?;
        let threads = self.threads_for(entry);
        let mut command = launch::command(&self.launcher, config, &socket, threads, log)
            .map_err(|e| io(&log_path, e))?;
        let _ = std::fs::remove_file(&socket);
        let mut child = command.spawn().map_err(|source| GatewayError::Spawn {
            model: config.name.clone(),
            program: self.launcher.program.clone(),
            source,
        })?;
        let client = EngineClient::new(&socket);
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(GatewayError::EngineExited {
                    model: config.name.clone(),
                    status: status.to_string(),
                    log_tail: log_tail(&log_path, log_start),
                    log: log_path,
                });
            }
            // The engine binds its socket before it loads the model, so a probe may wait in
            // the socket's backlog until the model is loaded: bounded, so that the deadline
            // and the engine's exit are still seen.
            if let Ok(Ok(info)) = tokio::time::timeout(PROBE_TIMEOUT, client.info()).await {
                tracing::info!(model = %config.name, pid = info.pid, "Engine ready");
                return Ok(Running {
                    child,
                    socket: file_id(&socket),
                    client,
                    info,
                });
            }
            if started.elapsed() > LOAD_TIMEOUT {
                terminate(child).await;
                return Err(GatewayError::EngineTimeout {
                    model: config.name.clone(),
                    seconds: LOAD_TIMEOUT.as_secs(),
                    log: log_path,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops engines idle for longer than their keep-alive.
    pub(crate) async fn reap(&self) {
        let now = millis_since(self.epoch);
        for entry in self.entries() {
            let KeepAlive::After(keep) = entry.config.keep_alive else {
                continue;
            };
            if entry.loaded_info().is_none() || !entry.idle() {
                continue;
            }
            let idle_for = now.saturating_sub(entry.last_used.load(Ordering::SeqCst));
            if u128::from(idle_for) >= keep.as_millis() {
                let _loading = self.loading.lock().await;
                if entry.idle() {
                    tracing::info!(model = %entry.config.name, "Unloading after keep_alive");
                    entry.stop().await;
                }
            }
        }
    }

    pub(crate) fn status(&self) -> Vec<ModelStatus> {
        self.entries()
            .iter()
            .map(|e| ModelStatus {
                name: e.config.name.clone(),
                project: e.config.project.clone(),
                mode: e.config.mode,
                loaded: e.loaded_info().map(|info| LoadedStatus {
                    pid: info.pid,
                    memory_bytes: info.memory_bytes,
                    threads: info.threads,
                    context_size: info.context_size,
                    parallel: info.parallel,
                    cpu_features: info.cpu_features,
                    unused_cpu_features: info.unused_cpu_features,
                    in_flight: e.in_flight.load(Ordering::SeqCst),
                }),
            })
            .collect()
    }

    pub(crate) async fn stop_all(&self) {
        for entry in self.entries() {
            entry.stop().await;
        }
    }
}

/// The last lines of what an engine wrote to its log since `from`.
fn log_tail(path: &Path, from: u64) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text[usize::try_from(from).unwrap_or(0).min(text.len())..])
        .into_owned();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join(" / ")
}

/// Unix seconds now.
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}
