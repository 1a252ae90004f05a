//! Reading the spec: files, `.env`, the environment, and the project name.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use aistack_spec::{Document, SourceFile};

use crate::report::{Failure, Report};

/// The spec as the command line names it.
#[derive(Debug, Clone)]
pub struct SpecArgs {
    /// `-f` files, in order; `./aistack.yaml` when none.
    pub files: Vec<PathBuf>,
    /// `-p`.
    pub project: Option<String>,
}

/// A parsed, validated spec and what was read to make it.
pub struct Loaded {
    /// The spec.
    pub document: Document,
    /// The files, for rendering diagnostics found later (by the planner).
    pub sources: Vec<SourceFile>,
    /// Directory of the first file: relative paths in the spec start here.
    pub base_dir: PathBuf,
    /// The project name.
    pub project: String,
    /// The spec files, absolute.
    pub spec_files: Vec<PathBuf>,
    /// The `.env` beside the spec, absolute, when there is one.
    pub dotenv: Option<PathBuf>,
}

impl SpecArgs {
    fn paths(&self) -> Vec<PathBuf> {
        if self.files.is_empty() {
            vec![PathBuf::from("aistack.yaml")]
        } else {
            self.files.clone()
        }
    }

    /// The directory relative paths start from: the first file's.
    pub fn base_dir(&self) -> Result<PathBuf, Failure> {
        let first = self.paths().remove(0);
        let dir = match first.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
            _ => PathBuf::from("."),
        };
        fs::canonicalize(&dir).map_err(|e| {
            Failure::from(Report::new(
                format!("Cannot open the directory `{}`: {e}", dir.display()),
                Some("Check the path given with `-f`".to_owned()),
            ))
        })
    }

    /// The files whose change means the spec changed (for `up --watch`).
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let mut files = self.paths();
        if let Ok(dir) = self.base_dir() {
            files.push(dir.join(".env"));
        }
        files
    }

    /// Reads, interpolates, parses and validates the spec.
    pub fn load(&self) -> Result<Loaded, Failure> {
        let mut sources = Vec::new();
        for path in self.paths() {
            let text = fs::read_to_string(&path).map_err(|e| {
                let help = if e.kind() == std::io::ErrorKind::NotFound {
                    "Run the command in the directory holding `aistack.yaml`, or name the file with `-f FILE`"
                } else {
                    "Check that the file is readable UTF-8 text"
                };
                Report::new(format!("Cannot read `{}`: {e}", path.display()), Some(help.to_owned()))
            })?;
            sources.push(SourceFile {
                name: path.display().to_string(),
                text,
            });
        }
        let base_dir = self.base_dir()?;
        let spec_files = sources.len();
        let env = environment(&base_dir, &mut sources)?;
        let document =
            aistack_spec::parse(&sources[..spec_files], &env).map_err(|diagnostics| {
                Failure(
                    diagnostics
                        .iter()
                        .map(|d| Report::from_diagnostic(d, &sources))
                        .collect(),
                )
            })?;
        let project = self.project_name(document.spec.name.as_deref(), &base_dir)?;
        let spec_files = (self.paths().iter())
            .filter_map(|path| fs::canonicalize(path).ok())
            .collect();
        let dotenv = Some(base_dir.join(".env")).filter(|path| path.is_file());
        Ok(Loaded {
            document,
            sources,
            base_dir,
            project,
            spec_files,
            dotenv,
        })
    }

    /// The project for commands that work without a readable spec (`down`, `logs`,
    /// `network log`): `-p`, else `name:` of a spec that loads, else the directory name.
    pub fn project_without_spec(&self) -> Result<String, Failure> {
        let base_dir = self.base_dir()?;
        let spec_name = self
            .load()
            .ok()
            .and_then(|loaded| loaded.document.spec.name);
        self.project_name(spec_name.as_deref(), &base_dir)
    }

    /// `-p`, else the spec's `name:`, else the directory name, as Compose does.
    pub fn project_name(
        &self,
        spec_name: Option<&str>,
        base_dir: &Path,
    ) -> Result<String, Failure> {
        if let Some(name) = self.project.as_deref().or(spec_name) {
            return Ok(name.to_owned());
        }
        let dir = base_dir
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let name: String = dir
            .to_lowercase()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
            .collect();
        let name = name.trim_start_matches(['-', '_']).to_owned();
        if name.is_empty() {
            return Err(Report::new(
                format!(
                    "Cannot derive a project name from the directory `{}`",
                    base_dir.display()
                ),
                Some("Set `name:` in the spec or pass `-p NAME`".to_owned()),
            )
            .into());
        }
        Ok(name)
    }
}

/// The variables `${VAR}` reads: `.env` beside the spec, overridden by the environment.
/// `.env` joins `sources` after the spec files, so its diagnostics can point into it.
fn environment(
    base_dir: &Path,
    sources: &mut Vec<SourceFile>,
) -> Result<BTreeMap<String, String>, Failure> {
    let mut env = BTreeMap::new();
    let dotenv = base_dir.join(".env");
    if let Ok(text) = fs::read_to_string(&dotenv) {
        let parsed = aistack_spec::parse_dotenv(sources.len(), &text);
        sources.push(SourceFile {
            name: dotenv.display().to_string(),
            text,
        });
        env.extend(parsed.map_err(|d| Failure::from(Report::from_diagnostic(&d, sources)))?);
    }
    env.extend(std::env::vars());
    Ok(env)
}
