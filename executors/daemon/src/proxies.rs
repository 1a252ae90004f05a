//! The network-policy proxies this daemon runs: one per project and policy, on a loopback
//! TCP listener that serves only the daemon's user (host processes use it through
//! `HTTP_PROXY`), and one per sandbox or template build, with no TCP port at all: it serves
//! the `proxy.sock` it is handed ([`crate::channels`]). Each has the project's CA, network
//! log and credential values, which the project's proxies share until its last one stops.
//!
//! Credential values arrive with each apply, as the gateway's key does, and live only in
//! memory; the listeners read them at request time. After a daemon restart they are unknown
//! until the next `up`, so a request that needs one is refused (502, with the fix) rather
//! than sent without it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};

use aistack_apply::HostError;
use aistack_gateway::SCOPE_HEADER;
use aistack_planner::MODELS_HOST;
use aistack_proxy::authority::{Authority, upstream_config};
use aistack_proxy::netlog::{self, NetworkLog};
use aistack_proxy::resolve::SystemResolver;
use aistack_proxy::{Config, Destination, Entrance, Limits, OwnListeners, Proxy, Route, Settings};
use aistack_spec::model::{Credential, NetworkPolicy};
use tokio::sync::Mutex;

use crate::home::Home;

/// The variable naming a PEM file of extra CAs that intercepted upstreams may present
/// (besides the system's roots), as Node's `NODE_EXTRA_CA_CERTS` does.
pub const EXTRA_CA_ENV: &str = "AISTACK_EXTRA_CA_CERTS";

/// The running proxies.
pub struct Proxies {
    home: Home,
    /// Where this daemon listens, which no proxy dials; its listeners join it.
    own: OwnListeners,
    inner: Mutex<Inner>,
}

/// How clients reach a proxy.
#[derive(Debug, Clone, Copy)]
enum Door {
    /// A loopback TCP listener (on this port when re-adopting a recorded one).
    Loopback(Option<u16>),
    /// The listeners handed to its [`Entrance`]: a sandbox's `proxy.sock`.
    Handed,
}

#[derive(Default)]
struct Inner {
    /// By project, then policy name.
    running: BTreeMap<String, BTreeMap<String, Proxy>>,
    projects: BTreeMap<String, Project>,
    /// Credential values by project, then variable; kept apart so that a project with no
    /// proxy gets no CA.
    secrets: BTreeMap<String, Arc<RwLock<BTreeMap<String, String>>>>,
    /// How intercepted upstreams are verified, shared by every listener.
    upstream_tls: Option<Arc<aistack_proxy::ClientConfig>>,
    /// The policy each listener was last applied with, by project then policy name.
    policies: BTreeMap<String, BTreeMap<String, NetworkPolicy>>,
    /// How each sandbox with a listener of its own goes out, by project then sandbox.
    attached: BTreeMap<String, BTreeMap<String, Access>>,
}

/// A sandbox's way out: its policy (none: deny everything), and its models.
#[derive(Debug, Clone, PartialEq)]
pub struct Access {
    /// The network policy it goes out under; `None`: nothing but its models.
    pub policy: Option<String>,
    /// The models it reaches at [`MODELS_HOST`], if it lists any.
    pub models: Option<ModelAccess>,
}

/// The models a sandbox reaches at [`MODELS_HOST`], on its project's gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelAccess {
    /// Where this machine dials the gateway.
    pub gateway: SocketAddr,
    /// The variable holding the gateway's key, which the proxy sends (`x-api-key`).
    pub key_env: Option<String>,
    /// The names listed in the sandbox's `models:`.
    pub models: Vec<String>,
}

/// What a sandbox without a policy may reach: nothing but its models.
fn deny_all() -> NetworkPolicy {
    NetworkPolicy {
        default: aistack_spec::values::PolicyDefault::Deny,
        allow: Vec::new(),
        deny: Vec::new(),
        bypass: Vec::new(),
        credentials: Vec::new(),
    }
}

/// The listener's view of `policy` for `source`, with the models route of a sandbox that
/// lists models.
fn config(source: &str, policy: &NetworkPolicy, models: Option<&ModelAccess>) -> Config {
    let mut config = Config::new(source, policy);
    if let Some(access) = models {
        config.routes.push(Route {
            host: MODELS_HOST.to_owned(),
            address: access.gateway,
            headers: vec![(SCOPE_HEADER.to_owned(), access.models.join(","))],
        });
        if let Some(key_env) = &access.key_env {
            let credential = Credential {
                host: MODELS_HOST.to_owned(),
                header: "x-api-key".to_owned(),
                from_env: key_env.clone(),
            };
            let host = Destination::Name(MODELS_HOST.to_owned());
            config.credentials.push((host, credential));
        }
    }
    config
}

/// The key of a sandbox's own listener among a project's (policy names hold no `:`).
fn sandbox_key(sandbox: &str) -> String {
    format!("sandbox:{sandbox}")
}

/// What a project's listeners share.
struct Project {
    log: NetworkLog,
    authority: Arc<Authority>,
}

impl Proxies {
    /// No proxies yet; their TCP listeners join `own`, and none of them dials an address
    /// in it.
    pub fn new(home: Home, own: OwnListeners) -> Proxies {
        Proxies {
            home,
            own,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Keeps `project`'s credential values; its listeners use them from the next request.
    pub async fn set_secrets(&self, project: &str, secrets: &BTreeMap<String, String>) {
        let mut inner = self.inner.lock().await;
        let held = inner.secrets.entry(project.to_owned()).or_default();
        *held.write().unwrap_or_else(PoisonError::into_inner) = secrets.clone();
    }

    async fn project(&self, project: &str) -> Result<ProjectHandles, HostError> {
        let mut inner = self.inner.lock().await;
        let secrets = Arc::clone(inner.secrets.entry(project.to_owned()).or_default());
        if let Some(shared) = inner.projects.get(project) {
            return Ok(ProjectHandles::of(shared, secrets));
        }
        let dir = self.home.project(project);
        let authority = Authority::load_or_create(&dir).map_err(authority_error)?;
        let path = netlog::path(&self.home.logs(), project);
        let log = NetworkLog::open(path.clone(), netlog::DEFAULT_MAX_BYTES).map_err(|e| {
            HostError::new(format!(
                "Cannot open the network log `{}`: {e}",
                path.display()
            ))
            .with_help("Check the permissions of `AISTACK_HOME/logs`")
        })?;
        let shared = Project {
            log,
            authority: Arc::new(authority),
        };
        let handles = ProjectHandles::of(&shared, secrets);
        inner.projects.insert(project.to_owned(), shared);
        Ok(handles)
    }

    /// Makes `project`'s listener for policy `name` enforce `policy`: starts it on
    /// loopback (on `port` when re-adopting a recorded one, else any free port), or, when
    /// it runs, swaps its policy in place, and with it the policy of every sandbox attached
    /// to it. Returns where it listens.
    pub async fn apply(
        &self,
        project: &str,
        name: &str,
        policy: &NetworkPolicy,
        port: Option<u16>,
    ) -> Result<SocketAddr, HostError> {
        let (address, _) = self
            .listen(
                project,
                name,
                config(name, policy, None),
                Door::Loopback(port),
            )
            .await?;
        let sandboxes: Vec<(String, Access)> = {
            let mut inner = self.inner.lock().await;
            let policies = inner.policies.entry(project.to_owned()).or_default();
            policies.insert(name.to_owned(), policy.clone());
            (inner.attached.get(project).into_iter().flatten())
                .filter(|(_, access)| access.policy.as_deref() == Some(name))
                .map(|(sandbox, access)| (sandbox.clone(), access.clone()))
                .collect()
        };
        for (sandbox, access) in sandboxes {
            let config = config(&sandbox, policy, access.models.as_ref());
            (self.listen(project, &sandbox_key(&sandbox), config, Door::Handed)).await?;
        }
        address.ok_or_else(|| HostError::new(format!("The proxy of `{name}` has no listener")))
    }

    /// A proxy of `sandbox`'s own: the network log names the sandbox, a change of its
    /// policy reaches it, and its models are routed. It has no TCP port: it serves the
    /// sandbox's `proxy.sock`, handed to the returned entrance. The policy's proxy must run.
    pub async fn attach(
        &self,
        project: &str,
        sandbox: &str,
        access: Access,
    ) -> Result<Entrance, HostError> {
        let config = {
            let mut inner = self.inner.lock().await;
            let policy = match &access.policy {
                None => deny_all(),
                Some(policy) => (inner.policies.get(project))
                    .and_then(|p| p.get(policy))
                    .cloned()
                    .ok_or_else(|| {
                        HostError::new(format!(
                            "The proxy of `network_policies.{policy}` does not run"
                        ))
                        .with_help("Run `aistack up`")
                    })?,
            };
            let config = config(sandbox, &policy, access.models.as_ref());
            let attached = inner.attached.entry(project.to_owned()).or_default();
            attached.insert(sandbox.to_owned(), access);
            config
        };
        let door = Door::Handed;
        let (_, entrance) = self
            .listen(project, &sandbox_key(sandbox), config, door)
            .await?;
        Ok(entrance)
    }

    /// Stops `sandbox`'s own listener.
    pub async fn detach(&self, project: &str, sandbox: &str) {
        let mut inner = self.inner.lock().await;
        if let Some(attached) = inner.attached.get_mut(project) {
            attached.remove(sandbox);
        }
        drop(inner);
        self.stop(project, &sandbox_key(sandbox)).await;
    }

    /// Starts or updates the proxy `key` of `project` to enforce `config`; where it
    /// listens on loopback, if it does, and its entrance.
    async fn listen(
        &self,
        project: &str,
        key: &str,
        config: Config,
        door: Door,
    ) -> Result<(Option<SocketAddr>, Entrance), HostError> {
        let source = config.source.clone();
        let name = source.as_str();
        let handles = self.project(project).await?;
        let mut inner = self.inner.lock().await;
        if let Some(proxy) = inner.running.get(project).and_then(|p| p.get(key)) {
            let closed = proxy.update(config);
            if closed > 0 {
                tracing::info!(
                    project,
                    policy = name,
                    closed,
                    "connections the new policy denies were closed"
                );
            }
            return Ok((proxy.local_addr(), proxy.entrance()));
        }
        // The system's roots are read once per daemon, when its first listener starts.
        let upstream_tls = match &inner.upstream_tls {
            Some(config) => Arc::clone(config),
            None => {
                let extra = std::env::var_os(EXTRA_CA_ENV).map(PathBuf::from);
                let config = upstream_config(extra.as_deref()).map_err(authority_error)?;
                inner.upstream_tls = Some(Arc::clone(&config));
                config
            }
        };
        let secrets = Arc::clone(&handles.secrets);
        let settings = Settings {
            limits: Limits::default(),
            resolver: Arc::new(SystemResolver),
            log: handles.log,
            authority: handles.authority,
            upstream_tls,
            secrets: Arc::new(move |variable: &str| {
                (secrets.read().unwrap_or_else(PoisonError::into_inner))
                    .get(variable)
                    .cloned()
            }),
            own: self.own.clone(),
        };
        let proxy = match door {
            Door::Handed => Proxy::new(config, settings),
            Door::Loopback(port) => {
                let address = SocketAddr::from(([127, 0, 0, 1], port.unwrap_or(0)));
                let proxy = Proxy::bind(address, config, settings).await.map_err(|e| {
                    HostError::new(format!(
                        "The proxy for `network_policies.{name}` cannot listen on `{address}`: {e}"
                    ))
                    .with_help(
                        "Stop what uses that port, or run `aistack down` and `aistack up` to pick another",
                    )
                })?;
                if let Some(address) = proxy.local_addr() {
                    tracing::info!(project, policy = name, %address, "proxy listening");
                }
                proxy
            }
        };
        let started = (proxy.local_addr(), proxy.entrance());
        inner
            .running
            .entry(project.to_owned())
            .or_default()
            .insert(key.to_owned(), proxy);
        Ok(started)
    }

    /// Whether `project`'s listener for `name` runs.
    pub async fn is_running(&self, project: &str, name: &str) -> bool {
        let inner = self.inner.lock().await;
        inner
            .running
            .get(project)
            .is_some_and(|p| p.contains_key(name))
    }

    /// Where `project`'s TCP listeners are, by policy name.
    pub async fn endpoints(&self, project: &str) -> BTreeMap<String, SocketAddr> {
        let inner = self.inner.lock().await;
        (inner.running.get(project).into_iter().flatten())
            .filter_map(|(name, proxy)| Some((name.clone(), proxy.local_addr()?)))
            .collect()
    }

    /// Stops `project`'s proxy `name`, closing its connections. When it was the project's
    /// last, the project's CA and network log are let go: `down` removes the project's
    /// directory, CA included, and the next proxy of the project makes a new one on disk.
    pub async fn stop(&self, project: &str, name: &str) {
        let proxy = {
            let mut inner = self.inner.lock().await;
            let proxy = inner.running.get_mut(project).and_then(|p| p.remove(name));
            if inner.running.get(project).is_some_and(BTreeMap::is_empty) {
                inner.running.remove(project);
                inner.projects.remove(project);
            }
            proxy
        };
        if let Some(proxy) = proxy {
            proxy.shutdown().await;
            tracing::info!(project, policy = name, "proxy stopped");
        }
    }

    /// Stops every proxy.
    pub async fn shutdown(&self) {
        let running = {
            let mut inner = self.inner.lock().await;
            inner.projects.clear();
            std::mem::take(&mut inner.running)
        };
        for proxy in running.into_values().flat_map(BTreeMap::into_values) {
            proxy.shutdown().await;
        }
    }
}

struct ProjectHandles {
    log: NetworkLog,
    authority: Arc<Authority>,
    secrets: Arc<RwLock<BTreeMap<String, String>>>,
}

impl ProjectHandles {
    fn of(project: &Project, secrets: Arc<RwLock<BTreeMap<String, String>>>) -> ProjectHandles {
        ProjectHandles {
            log: project.log.clone(),
            authority: Arc::clone(&project.authority),
            secrets,
        }
    }
}

fn authority_error(e: aistack_proxy::authority::AuthorityError) -> HostError {
    let error = HostError::new(e.to_string());
    match e.help() {
        Some(help) => error.with_help(help),
        None => error,
    }
}
