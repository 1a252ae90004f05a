//! The gateway listeners this daemon runs: one per address, shared by the projects that
//! name it (DESIGN §3), and the models each project registered on it.
//!
//! Secrets (the values of `gateway.api_key_env`) arrive with each apply and live only in
//! this registry's memory. After a daemon restart they are unknown until the next `up`, so
//! a gateway that needs a key is restarted with one nobody knows: it fails closed.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

use aistack_apply::HostError;
use aistack_gateway::{
    Auth, DEFAULT_BODY_LIMIT, EngineUser, Gateway, Launcher, ModelConfig, ModelStatus, Settings,
    engine_environment,
};
use aistack_planner::GatewayPlan;
use aistack_proxy::OwnListeners;
use aistack_proxy::own::Listening;
use aistack_sandbox::idmap::{DEFAULT_BASE, SANDBOX_IDS};
use tokio::sync::Mutex;

/// Why a project may not join the listener at an address: another project there has other
/// settings. Pure, so the rule is tested without sockets.
pub fn conflict(
    joined: &BTreeMap<String, GatewayPlan>,
    project: &str,
    wanted: &GatewayPlan,
) -> Option<HostError> {
    joined
        .iter()
        .filter(|(other, spec)| *other != project && spec.listen == wanted.listen)
        .find_map(|(other, spec)| {
            let differing = wanted.disagreement(spec);
            (!differing.is_empty()).then(|| {
                HostError::new(format!(
                    "The gateway on `{}` is shared with project `{other}`, whose settings \
                     differ: {}",
                    wanted.listen,
                    differing.join(", ")
                ))
                .with_help(format!(
                    "Use the same `gateway:` settings as project `{other}`, or another \
                     `gateway.listen` address"
                ))
            })
        })
}

/// What the registry knows, behind one lock.
#[derive(Default)]
struct Inner {
    /// The running listeners by address.
    listeners: BTreeMap<SocketAddr, Gateway>,
    /// Where each listener is, among the daemon's own (no proxy dials it), while it runs.
    listening: BTreeMap<SocketAddr, Listening>,
    /// The gateway each project uses.
    projects: BTreeMap<String, GatewayPlan>,
    /// Each project's secrets from its last apply, by variable name.
    secrets: BTreeMap<String, BTreeMap<String, String>>,
    /// Registered models by (project, name), to register again after their engine stops.
    models: BTreeMap<(String, String), ModelConfig>,
}

/// The user and group every engine runs as when the daemon is root: the first id past the
/// default sandbox range. No login user has it (those start at 1000, subordinate ranges
/// at 100000), systemd hands out none that high (its containers end at 1,879,048,191), and
/// no sandbox maps it, so the engine owns nothing on the host and shares its id with no
/// sandbox process.
pub const ENGINE_ID: u32 = DEFAULT_BASE + SANDBOX_IDS;

/// The user engines run as: [`ENGINE_ID`] when this daemon may change user, else its own.
pub fn engine_user() -> Option<EngineUser> {
    rustix::process::geteuid().is_root().then_some(EngineUser {
        uid: ENGINE_ID,
        gid: ENGINE_ID,
    })
}

/// Every gateway this daemon runs.
pub struct Gateways {
    program: PathBuf,
    run_dir: PathBuf,
    log_dir: PathBuf,
    /// Whom engines run as.
    engine_user: Option<EngineUser>,
    /// The whole environment of an engine: chosen once, from this daemon's.
    engine_env: Vec<(OsString, OsString)>,
    /// 75% of the machine's memory: the budget of a gateway whose spec names none.
    default_budget: u64,
    /// Where this daemon listens; every gateway joins it.
    own: OwnListeners,
    inner: Mutex<Inner>,
}

impl Gateways {
    /// A registry starting engines as `program engine ...`, with their sockets in `run_dir`
    /// and their logs in `log_dir`; its listeners join `own`.
    pub fn new(
        program: PathBuf,
        run_dir: PathBuf,
        log_dir: PathBuf,
        own: OwnListeners,
    ) -> Gateways {
        Gateways {
            program,
            run_dir,
            log_dir,
            engine_user: engine_user(),
            engine_env: engine_environment(std::env::vars_os()),
            default_budget: default_memory_budget(),
            own,
            inner: Mutex::default(),
        }
    }

    fn launcher(&self) -> Launcher {
        Launcher {
            program: self.program.clone(),
            args: vec!["engine".to_owned()],
            run_dir: self.run_dir.clone(),
            log_dir: self.log_dir.clone(),
            user: self.engine_user,
            env: self.engine_env.clone(),
        }
    }

    /// The listener settings for `spec`, with the key from `secrets`. A key that is needed
    /// but unknown (the daemon restarted since the last `up`) refuses every request rather
    /// than serving unauthenticated.
    fn settings(&self, spec: &GatewayPlan, secrets: Option<&BTreeMap<String, String>>) -> Settings {
        let auth = match &spec.api_key_env {
            None => Auth::LoopbackOnly,
            Some(name) => match secrets.and_then(|s| s.get(name.as_str())) {
                Some(key) => Auth::Key(key.clone()),
                None => Auth::KeyUnknown,
            },
        };
        Settings {
            listen: spec.listen,
            cors_origins: spec.cors_origins.clone(),
            auth,
            memory_budget: spec.memory_budget.unwrap_or(self.default_budget),
            body_limit: DEFAULT_BODY_LIMIT,
        }
    }

    /// Keeps `project`'s secrets for its gateway and applies a changed key at once.
    pub async fn set_secrets(&self, project: &str, secrets: BTreeMap<String, String>) {
        let mut inner = self.inner.lock().await;
        inner.secrets.insert(project.to_owned(), secrets);
        if let Some(spec) = inner.projects.get(project)
            && let Some(gateway) = inner.listeners.get(&spec.listen)
        {
            gateway.set_settings(self.settings(spec, inner.secrets.get(project)));
        }
    }

    /// Makes `project` use the listener `spec` describes, starting it if none runs there,
    /// and returns the address it listens on. Idempotent; moving to another address leaves
    /// the old one (stopped if now unused).
    pub async fn attach(&self, project: &str, spec: GatewayPlan) -> Result<SocketAddr, HostError> {
        let mut inner = self.inner.lock().await;
        if let Some(e) = conflict(&inner.projects, project, &spec) {
            return Err(e);
        }
        if inner
            .projects
            .get(project)
            .is_some_and(|old| old.listen != spec.listen)
        {
            self.detach_locked(&mut inner, project).await;
        }
        let settings = self.settings(&spec, inner.secrets.get(project));
        let addr = match inner.listeners.get(&spec.listen) {
            Some(gateway) => {
                gateway.set_settings(settings);
                gateway.addr()
            }
            None => {
                let gateway = Gateway::start(settings, self.launcher())
                    .await
                    .map_err(|e| HostError::from_error(&e, e.help()))?;
                let addr = gateway.addr();
                tracing::info!(project, %addr, "gateway listening");
                inner.listeners.insert(spec.listen, gateway);
                inner.listening.insert(spec.listen, self.own.add(addr));
                addr
            }
        };
        inner.projects.insert(project.to_owned(), spec);
        Ok(addr)
    }

    /// `project` stops using its gateway: its models are unregistered, and the listener
    /// stops when no project is left on it. Idempotent.
    pub async fn detach(&self, project: &str) {
        let mut inner = self.inner.lock().await;
        self.detach_locked(&mut inner, project).await;
    }

    async fn detach_locked(&self, inner: &mut Inner, project: &str) {
        let Some(spec) = inner.projects.remove(project) else {
            return;
        };
        let names: Vec<String> = (inner.models.keys())
            .filter(|(p, _)| p == project)
            .map(|(_, n)| n.clone())
            .collect();
        let Some(gateway) = inner.listeners.get(&spec.listen).cloned() else {
            return;
        };
        for name in names {
            inner.models.remove(&(project.to_owned(), name.clone()));
            gateway.unregister(project, &name).await;
        }
        let used = inner.projects.values().any(|s| s.listen == spec.listen);
        if !used {
            inner.listeners.remove(&spec.listen);
            inner.listening.remove(&spec.listen);
            gateway.shutdown().await;
            tracing::info!(project, addr = %spec.listen, "gateway stopped");
        }
    }

    /// Whether `project` uses a running listener.
    pub async fn is_attached(&self, project: &str) -> bool {
        self.inner.lock().await.projects.contains_key(project)
    }

    /// The gateway `project` uses, if it is attached.
    async fn gateway_of(&self, project: &str) -> Result<Gateway, HostError> {
        let inner = self.inner.lock().await;
        (inner.projects.get(project))
            .and_then(|spec| inner.listeners.get(&spec.listen))
            .cloned()
            .ok_or_else(|| {
                HostError::new(format!("The gateway of project `{project}` is not running"))
                    .with_help("Run `aistack up` again; see `aistack logs` if it fails")
            })
    }

    /// Serves `config` on its project's gateway, in place of what was registered under its
    /// name; the gateway keeps a loaded engine whose command line is unchanged. Idempotent.
    pub async fn register(&self, config: ModelConfig) -> Result<(), HostError> {
        let gateway = self.gateway_of(&config.project).await?;
        let key = (config.project.clone(), config.name.clone());
        gateway
            .register(config.clone())
            .await
            .map_err(|e| HostError::from_error(&e, e.help()))?;
        self.inner.lock().await.models.insert(key, config);
        Ok(())
    }

    /// Whether `name` of `project` is registered.
    pub async fn is_registered(&self, project: &str, name: &str) -> bool {
        let key = (project.to_owned(), name.to_owned());
        self.inner.lock().await.models.contains_key(&key)
    }

    /// Whether `name` of `project` has a loaded engine.
    pub async fn is_loaded(&self, project: &str, name: &str) -> bool {
        (self.status(project).await.into_iter())
            .flat_map(|(_, models)| models)
            .any(|m| m.name == name && m.loaded.is_some())
    }

    /// Stops serving `name` of `project` (and its engine). Idempotent.
    pub async fn unregister(&self, project: &str, name: &str) {
        let removed = (self.inner.lock().await.models)
            .remove(&(project.to_owned(), name.to_owned()))
            .is_some();
        if removed && let Ok(gateway) = self.gateway_of(project).await {
            gateway.unregister(project, name).await;
        }
    }

    /// Loads `name` of `project` now instead of at its first request.
    pub async fn preload(&self, project: &str, name: &str) -> Result<(), HostError> {
        let gateway = self.gateway_of(project).await?;
        gateway
            .preload(project, name)
            .await
            .map_err(|e| HostError::from_error(&e, e.help()))
    }

    /// Stops the engine of `name` of `project`; the model stays registered and loads again
    /// at its next request. Idempotent.
    pub async fn stop_engine(&self, project: &str, name: &str) -> Result<(), HostError> {
        let config = (self.inner.lock().await.models)
            .get(&(project.to_owned(), name.to_owned()))
            .cloned();
        let Some(config) = config else {
            return Ok(());
        };
        // The gateway has no unload: unregistering stops the engine, registering again
        // serves the model on demand.
        let gateway = self.gateway_of(project).await?;
        gateway.unregister(project, name).await;
        self.register(config).await
    }

    /// `project`'s gateway address and its models as the gateway sees them.
    pub async fn status(&self, project: &str) -> Option<(SocketAddr, Vec<ModelStatus>)> {
        let inner = self.inner.lock().await;
        let spec = inner.projects.get(project)?;
        let gateway = inner.listeners.get(&spec.listen)?;
        let models = (gateway.models().into_iter())
            .filter(|m| m.project == project)
            .collect();
        Some((gateway.addr(), models))
    }

    /// Where this machine dials `project`'s gateway (loopback for a wildcard `listen`),
    /// and the variable holding its key, if it has one.
    pub async fn endpoint(&self, project: &str) -> Option<(SocketAddr, Option<String>)> {
        let inner = self.inner.lock().await;
        let spec = inner.projects.get(project)?;
        let mut address = inner.listeners.get(&spec.listen)?.addr();
        if address.ip().is_unspecified() {
            address.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        Some((address, spec.api_key_env.clone()))
    }

    /// Stops every listener and its engines (the daemon is stopping).
    pub async fn shutdown(&self) {
        let listeners = {
            let mut inner = self.inner.lock().await;
            inner.listening.clear();
            std::mem::take(&mut inner.listeners)
        };
        for gateway in listeners.into_values() {
            gateway.shutdown().await;
        }
    }
}

/// 75% of `MemTotal` in `/proc/meminfo` (DESIGN §4's default), else 8 GiB where that cannot
/// be read.
fn default_memory_budget() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| mem_total(&text))
        .map_or(8 << 30, |total| total / 4 * 3)
}

/// `MemTotal` in bytes from the text of `/proc/meminfo`.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_allows_the_name_the_proxy_routes_to_it() {
        assert_eq!(aistack_gateway::MODELS_HOST, aistack_planner::MODELS_HOST);
    }

    #[test]
    fn engines_run_past_the_default_sandbox_range() {
        let range = aistack_sandbox::idmap::IdRange { base: DEFAULT_BASE };
        assert_eq!(range.host_id(SANDBOX_IDS - 1), Some(ENGINE_ID - 1));
        assert_eq!(range.host_id(SANDBOX_IDS), None);
    }

    fn spec(listen: &str, cors: &[&str], key: Option<&str>) -> GatewayPlan {
        GatewayPlan {
            listen: listen.parse().unwrap(),
            cors_origins: cors.iter().map(|c| (*c).to_owned()).collect(),
            api_key_env: key.map(str::to_owned),
            memory_budget: None,
        }
    }

    #[test]
    fn projects_on_one_address_must_agree_on_its_settings() {
        let mut joined = BTreeMap::new();
        joined.insert("a".to_owned(), spec("127.0.0.1:12434", &[], None));
        // Same settings: joins.
        assert!(conflict(&joined, "b", &spec("127.0.0.1:12434", &[], None)).is_none());
        // Another address is another listener.
        assert!(conflict(&joined, "b", &spec("127.0.0.1:12435", &["x"], None)).is_none());
        // The project itself may change its own listener's settings.
        assert!(conflict(&joined, "a", &spec("127.0.0.1:12434", &["x"], Some("K"))).is_none());
        // Anyone else must agree, and is told with whom and on what.
        let e = conflict(&joined, "b", &spec("127.0.0.1:12434", &["x"], Some("K"))).unwrap();
        assert_eq!(
            e.message,
            "The gateway on `127.0.0.1:12434` is shared with project `a`, whose settings \
             differ: api_key_env, cors_origins"
        );
        assert!(e.help.unwrap().contains("project `a`"));
    }

    #[test]
    fn the_default_budget_is_three_quarters_of_memtotal() {
        let text = "MemTotal:       16384000 kB\nMemFree:         1000 kB\n";
        assert_eq!(mem_total(text), Some(16_384_000 * 1024));
        assert_eq!(mem_total("nothing"), None);
        assert!(default_memory_budget() > 0);
    }
}
