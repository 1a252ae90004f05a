//! Template trees: built once per hash of their inputs and shared by projects.
//!
//! A template is a list of overlay lower directories, top first, kept in
//! `templates/<hash>/layers` and linked by each project that uses it
//! (`projects/<p>/templates/<name>`): its base (`rootfs/`, a directory imported or an
//! image's layers applied), a parent template's layers, and `layer/`, what its `run:`
//! steps wrote in a build sandbox. `layers` is written last, so a killed build is redone
//! whole.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aistack_apply::HostError;
use aistack_planner::TemplatePlan;
use aistack_proxy::Entrance;
use aistack_sandbox::backend::{Backend, Layout, Spec};
use aistack_sandbox::client::GuestClient;
use aistack_sandbox::idmap::IdRange;
use aistack_sandbox::namespace::Namespace;
use aistack_sandbox::protocol::Exec;
use aistack_sandbox::rootfs;
use aistack_sandbox::setup::{CA_BUNDLE, CA_FILE, SYSTEM_BUNDLE};

use crate::channels::{self, Channels};
use crate::home::Home;
use crate::sandboxes::{STOP_GRACE, guest_binary};
use crate::state::write_atomically;

/// Where a template's tree starts.
pub enum Tree {
    /// A directory holding a root filesystem, imported.
    Dir(PathBuf),
    /// An image's layer blobs, bottom first, and whether each is gzip-compressed.
    Image(Vec<(PathBuf, bool)>),
    /// Another template's layers, top first.
    Layers(Vec<PathBuf>),
}

/// The built templates of this home.
pub struct Templates {
    home: Home,
    range: IdRange,
    /// A build's way out, when its template has a policy.
    channels: Arc<Channels>,
}

impl Templates {
    /// The templates of `home`, their owners moved into `range`.
    pub fn new(home: Home, range: IdRange, channels: Arc<Channels>) -> Templates {
        Templates {
            home,
            range,
            channels,
        }
    }

    /// Which layers a project's template uses: `projects/<p>/templates/<name>`, a file
    /// holding their paths, top first, one per line, written when the template is built
    /// (the project's state records the step only after it, and the sandbox steps that
    /// follow need it at once).
    fn link(&self, project: &str, name: &str) -> PathBuf {
        link_in(&self.home, project, name)
    }

    /// A template's layers, top first, if it is built and they are all there.
    pub fn layers(&self, project: &str, name: &str) -> Option<Vec<PathBuf>> {
        Templates::layers_in(&self.home, project, name)
    }

    /// The layers of `project`'s template `name` under `home`, top first, if it is built.
    pub fn layers_in(home: &Home, project: &str, name: &str) -> Option<Vec<PathBuf>> {
        read_layers(&link_in(home, project, name))
    }

    /// The layers of the template built from inputs hashing to `hash`, if it is built;
    /// they are linked to the project's template `name` too.
    pub fn cached(
        &self,
        project: &str,
        name: &str,
        hash: &str,
    ) -> Result<Option<Vec<PathBuf>>, HostError> {
        let Some(layers) = read_layers(&self.dir(hash).join("layers")) else {
            return Ok(None);
        };
        self.link_to(project, name, &layers)?;
        Ok(Some(layers))
    }

    fn dir(&self, hash: &str) -> PathBuf {
        self.home.root().join("templates").join(hash)
    }

    fn link_to(&self, project: &str, name: &str, layers: &[PathBuf]) -> Result<(), HostError> {
        write_layers(&self.link(project, name), layers)
            .map_err(|e| HostError::new(format!("Cannot record template `{name}`: {e}")))
    }

    /// Builds a template whose inputs hash to `hash`: its base tree, then its `run:` steps
    /// in a build sandbox (their changes become a layer of its own). `build` is the
    /// sandbox's way out (the template's policy), if it has one. The layers are recorded
    /// only once all of them are there, so a killed build is done again, whole.
    pub async fn build(
        &self,
        project: &str,
        name: &str,
        hash: &str,
        base: Tree,
        template: &TemplatePlan,
        build: Option<Entrance>,
    ) -> Result<Vec<PathBuf>, HostError> {
        let dir = self.dir(hash);
        let mut layers = match base {
            Tree::Dir(source) => {
                let rootfs = dir.join("rootfs");
                if !rootfs.is_dir() {
                    self.import(&rootfs, source).await?;
                }
                vec![rootfs]
            }
            Tree::Image(blobs) => {
                let rootfs = dir.join("rootfs");
                if !rootfs.is_dir() {
                    self.unpack(&rootfs, blobs).await?;
                }
                vec![rootfs]
            }
            Tree::Layers(layers) => layers,
        };
        if !template.settings.run.is_empty() {
            let layer = (self.run_steps(project, name, &dir, &layers, template, build)).await?;
            layers.insert(0, layer);
        }
        write_layers(&dir.join("layers"), &layers)
            .map_err(|e| HostError::new(format!("Cannot record template `{name}`: {e}")))?;
        self.link_to(project, name, &layers)?;
        Ok(layers)
    }

    async fn import(&self, dest: &Path, source: PathBuf) -> Result<(), HostError> {
        if !source.join("bin").is_dir() && !source.join("usr/bin").is_dir() {
            return Err(HostError {
                message: format!(
                    "`{}` is not a root filesystem (it has no `bin/`)",
                    source.display()
                ),
                help: Some(
                    "Point `from:` at a directory holding a whole root filesystem".to_owned(),
                ),
            });
        }
        let range = self.range;
        let target = dest.to_path_buf();
        tokio::task::spawn_blocking(move || rootfs::import(&source, &target, range))
            .await
            .map_err(|e| HostError::new(format!("The template import stopped: {e}")))?
            .map_err(|e| HostError::new(format!("Cannot import the template: {e}")))
    }

    /// Applies an image's layers (blob files, gzip or not), bottom first, into `dest`,
    /// made beside it and renamed into place.
    async fn unpack(&self, dest: &Path, blobs: Vec<(PathBuf, bool)>) -> Result<(), HostError> {
        let range = self.range;
        let target = dest.to_path_buf();
        let unpacked = tokio::task::spawn_blocking(move || {
            let staging = target.with_extension("unpacking");
            if staging.exists() {
                fs::remove_dir_all(&staging)?;
            }
            fs::create_dir_all(&staging)?;
            for (blob, gzip) in &blobs {
                let file = fs::File::open(blob)?;
                aistack_sandbox::layers::apply(
                    std::io::BufReader::new(file),
                    *gzip,
                    &staging,
                    range,
                )?;
            }
            fs::rename(&staging, &target)
        });
        unpacked
            .await
            .map_err(|e| HostError::new(format!("The image unpacking stopped: {e}")))?
            .map_err(|e| {
                HostError::new(format!("Cannot unpack the template's image: {e}"))
                    .with_help("Check that `from:` names a Linux container image")
            })
    }

    /// Runs a template's steps, as root, in a sandbox of its layers, and returns the
    /// layer they wrote. A failed step fails the build with its output's last lines.
    async fn run_steps(
        &self,
        project: &str,
        name: &str,
        dir: &Path,
        lower: &[PathBuf],
        template: &TemplatePlan,
        build: Option<Entrance>,
    ) -> Result<PathBuf, HostError> {
        let steps = &template.settings.run;
        let staging = dir.join("build");
        if staging.exists() {
            fs::remove_dir_all(&staging).map_err(|e| {
                HostError::new(format!("Cannot clear an earlier build of `{name}`: {e}"))
            })?;
        }
        let hash = dir
            .file_name()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        let short = &hash[..hash.len().min(12)];
        let layout = Layout::new(&staging, &self.home.run().join(format!("build-{short}")));
        let key = format!("template:{name}");
        let channels = &self.channels;
        channels.close(project, &key);
        let network = match build {
            Some(proxy) => {
                channels.forward(project, &key, &layout, proxy)?;
                Some(channels::network(&self.home, project)?)
            }
            None => None,
        };
        let env = (template.settings.env.iter())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let log = self
            .home
            .logs()
            .join(format!("template-{project}-{name}.log"));
        let spec = Spec {
            guest: guest_binary()?,
            layout: layout.clone(),
            lower: lower.to_vec(),
            workspace: None,
            hostname: format!("build-{name}"),
            range: self.range,
            limits: crate::sandboxes::limits(&template.limits),
            tmp_bytes: template.limits.tmp,
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            cgroup_id: format!("aistack-build-{short}"),
            log: log.clone(),
            network,
            env,
        };
        let _ = fs::create_dir_all(self.home.logs());
        // A build runs on the namespace backend whatever its sandboxes use: its result is
        // a directory, the layer every backend starts from.
        let mut running = Namespace.start(&spec).await.map_err(|e| {
            let help = (e.help()).unwrap_or_else(|| {
                format!("What the build's agent said is in `{}`", log.display())
            });
            HostError::from_error(&e, Some(help))
        })?;
        let client = GuestClient::new(&layout.socket());
        let mut failure = None;
        for (number, step) in steps.iter().enumerate() {
            let exec = Exec {
                argv: vec!["sh".to_owned(), "-c".to_owned(), step.clone()],
                env: BTreeMap::new(),
                cwd: Some("/".to_owned()),
                user: Some("root".to_owned()),
                tty: None,
                detach: false,
            };
            let output = client.output(exec).await;
            let mut record = format!("$ {step}\n");
            let ok = match &output {
                Ok(out) => {
                    record.push_str(&String::from_utf8_lossy(&out.stdout));
                    record.push_str(&String::from_utf8_lossy(&out.stderr));
                    out.status.is_some_and(|s| s.shell_code() == 0)
                }
                Err(e) => {
                    record.push_str(&format!("{e}\n"));
                    false
                }
            };
            append(&log, &record);
            if !ok {
                let code = (output.as_ref().ok().and_then(|o| o.status))
                    .map_or("no exit status".to_owned(), |s| {
                        format!("exit {}", s.shell_code())
                    });
                let tail = last_lines(&record, 5);
                failure = Some(
                    HostError::new(format!(
                        "Step {} of template `{name}` failed ({code}): `{step}`: {tail}",
                        number + 1
                    ))
                    .with_help(format!(
                        "Fix the step in `templates.{name}.run`; its whole output is in `{}`",
                        log.display()
                    )),
                );
                break;
            }
        }
        let _ = client.shutdown(STOP_GRACE).await;
        let _ = running.child.wait().await;
        let _ = running.cgroup.remove();
        channels.close(project, &key);
        if let Some(failure) = failure {
            return Err(failure);
        }
        let layer = dir.join("layer");
        let ca = spec.network.as_ref().map(|n| n.ca_pem.clone());
        let finished = (|| {
            if layer.exists() {
                fs::remove_dir_all(&layer)?;
            }
            let upper = staging.join("upper");
            if let Some(pem) = &ca {
                scrub_ca(&upper, pem)?;
            }
            // The agent's home the build's guest made (empty): each sandbox makes its own,
            // owned by its agent, which a template's copy could not be.
            let _ = fs::remove_dir(upper.join("home/agent"));
            fs::rename(upper, &layer)?;
            fs::remove_dir_all(&staging)
        })();
        finished.map_err(|e| HostError::new(format!("Cannot keep the layer of `{name}`: {e}")))?;
        Ok(layer)
    }
}

/// Which layers a project's template uses: `projects/<p>/templates/<name>`.
fn link_in(home: &Home, project: &str, name: &str) -> PathBuf {
    home.project(project).join("templates").join(name)
}

/// Writes a list of layers, one path a line, top first, as [`read_layers`] reads it.
fn write_layers(path: &Path, layers: &[PathBuf]) -> std::io::Result<()> {
    let text: String = layers
        .iter()
        .map(|l| format!("{}\n", l.display()))
        .collect();
    fs::create_dir_all(path.parent().expect("a parent"))?;
    write_atomically(path, text.as_bytes())
}

fn read_layers(path: &Path) -> Option<Vec<PathBuf>> {
    let text = fs::read_to_string(path).ok()?;
    let layers: Vec<PathBuf> = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(PathBuf::from)
        .collect();
    (!layers.is_empty() && layers.iter().all(|l| l.is_dir())).then_some(layers)
}

/// Takes the build project's CA out of a template layer: the template may serve other
/// projects, which must not trust it. Each sandbox adds its own project's CA at start.
fn scrub_ca(layer: &Path, pem: &str) -> std::io::Result<()> {
    for path in [CA_FILE, CA_BUNDLE] {
        if let Some(file) = in_layer(layer, path) {
            match fs::remove_file(file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
    }
    let Some(system) = in_layer(layer, SYSTEM_BUNDLE) else {
        return Ok(());
    };
    if !fs::symlink_metadata(&system).is_ok_and(|m| m.is_file()) {
        return Ok(());
    }
    if let Ok(bundle) = fs::read_to_string(&system)
        && bundle.contains(pem.trim())
    {
        fs::write(
            &system,
            bundle.replace(pem.trim(), "").replace("\n\n\n", "\n"),
        )?;
    }
    Ok(())
}

/// `path` (absolute, as the sandbox sees it) in `layer`, if each directory on its way is a
/// directory of the layer and not a link: a build step may have made one a link to a host
/// path, which the daemon, root of the host, must not follow. The last component is not
/// followed by whoever acts on it (removing) or is checked (rewriting).
fn in_layer(layer: &Path, path: &str) -> Option<PathBuf> {
    let relative = Path::new(path.trim_start_matches('/'));
    let mut at = layer.to_path_buf();
    if let Some(parent) = relative.parent() {
        for component in parent.components() {
            at.push(component);
            if !fs::symlink_metadata(&at).ok()?.is_dir() {
                return None;
            }
        }
    }
    Some(at.join(relative.file_name()?))
}

fn append(log: &Path, text: &str) {
    use std::io::Write as _;
    if let Ok(mut file) = fs::OpenOptions::new().create(true).append(true).open(log) {
        let _ = file.write_all(text.as_bytes());
    }
}

/// The last `n` non-empty lines of `text`, joined by ` | ` for a one-line message.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}
