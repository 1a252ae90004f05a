//! What was applied for a project, recorded under `projects/<name>/state.json`.
//!
//! Written after every finished step, atomically (temporary file, fsync, rename), so a
//! killed daemon leaves either the old or the new record, never a torn one, and the record
//! never claims a resource that was not applied.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use aistack_planner::{Applied, Observed, ResourceId};
use serde::{Deserialize, Serialize};

use crate::home::Home;

const FORMAT_VERSION: u32 = 1;

/// The applied resources of one project.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProjectState {
    /// Format of this file.
    pub format_version: u32,
    /// Project name.
    pub project: String,
    /// Applied resources, sorted by id.
    pub resources: Vec<Applied>,
}

/// Reading or writing a state file failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file exists but cannot be read.
    #[error("Cannot read the state of project `{project}` at `{}`", path.display())]
    Read {
        /// Project name.
        project: String,
        /// The state file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The file is not valid JSON of the expected shape.
    #[error("The state of project `{project}` at `{}` is corrupt", path.display())]
    Corrupt {
        /// Project name.
        project: String,
        /// The state file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// Writing failed.
    #[error("Cannot write the state of project `{project}` under `{}`", path.display())]
    Write {
        /// Project name.
        project: String,
        /// The project directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

impl StateError {
    /// What to do about it.
    pub fn help(&self) -> Option<String> {
        match self {
            StateError::Corrupt { path, .. } => Some(format!(
                "Move `{}` aside and run `aistack up` again; resources it recorded are then created anew",
                path.display()
            )),
            StateError::Read { .. } | StateError::Write { .. } => {
                Some("Check the permissions and free space of `AISTACK_HOME`".to_owned())
            }
        }
    }
}

impl ProjectState {
    /// An empty record for `project`.
    pub fn new(project: &str) -> Self {
        ProjectState {
            format_version: FORMAT_VERSION,
            project: project.to_owned(),
            resources: Vec::new(),
        }
    }

    /// The record of `project`, empty if nothing was applied.
    pub fn load(home: &Home, project: &str) -> Result<Self, StateError> {
        let path = state_file(home, project);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Self::new(project)),
            Err(source) => {
                return Err(StateError::Read {
                    project: project.to_owned(),
                    path,
                    source,
                });
            }
        };
        serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt {
            project: project.to_owned(),
            path,
            source,
        })
    }

    /// The names of every project with a record.
    pub fn projects(home: &Home) -> Vec<String> {
        let Ok(dir) = fs::read_dir(home.projects()) else {
            return Vec::new();
        };
        let mut names: Vec<String> = dir
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("state.json").is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        names
    }

    /// Records `applied`, replacing an earlier record of the same resource.
    pub fn record(&mut self, applied: Applied) {
        self.resources.retain(|r| r.id != applied.id);
        self.resources.push(applied);
        self.resources.sort_by(|a, b| a.id.cmp(&b.id));
    }

    /// Forgets `id`.
    pub fn forget(&mut self, id: &ResourceId) {
        self.resources.retain(|r| &r.id != id);
    }

    /// The applied resources as the planner's observed snapshot (facts about files and
    /// registries are added by the caller).
    pub fn observed(&self) -> Observed {
        Observed::from_applied(self.resources.iter().cloned())
    }

    /// Writes the record atomically; an empty record removes the project's directory.
    pub fn save(&self, home: &Home) -> Result<(), StateError> {
        let dir = home.project(&self.project);
        let write_err = |source| StateError::Write {
            project: self.project.clone(),
            path: dir.clone(),
            source,
        };
        if self.resources.is_empty() {
            return match fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(write_err(e)),
                _ => Ok(()),
            };
        }
        fs::create_dir_all(&dir).map_err(write_err)?;
        let json = serde_json::to_vec_pretty(self).expect("state serialises");
        write_atomically(&dir.join("state.json"), &json).map_err(write_err)
    }
}

fn state_file(home: &Home, project: &str) -> PathBuf {
    home.project(project).join("state.json")
}

/// Writes `bytes` to `path` through a temporary file in the same directory, fsynced and
/// renamed over the old file, then fsyncs the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aistack_planner::Kind;
    use std::collections::BTreeMap;

    fn applied(name: &str) -> Applied {
        Applied {
            id: ResourceId::new(Kind::Model, name),
            fields: BTreeMap::new(),
            hash: "h".into(),
            depends_on: vec![],
            outputs: BTreeMap::new(),
        }
    }

    #[test]
    fn round_trips_and_empty_state_removes_the_project() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let mut state = ProjectState::load(&home, "demo").unwrap();
        assert!(state.resources.is_empty());
        state.record(applied("b"));
        state.record(applied("a"));
        state.record(applied("a"));
        state.save(&home).unwrap();
        let loaded = ProjectState::load(&home, "demo").unwrap();
        assert_eq!(loaded, state);
        assert_eq!(loaded.resources.len(), 2);
        assert_eq!(ProjectState::projects(&home), vec!["demo".to_owned()]);
        let mut emptied = loaded;
        emptied.forget(&ResourceId::new(Kind::Model, "a"));
        emptied.forget(&ResourceId::new(Kind::Model, "b"));
        emptied.save(&home).unwrap();
        assert!(!home.project("demo").exists());
    }

    #[test]
    fn corrupt_state_is_an_error_with_help() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        fs::create_dir_all(home.project("demo")).unwrap();
        fs::write(home.project("demo").join("state.json"), b"{not json").unwrap();
        let err = ProjectState::load(&home, "demo").unwrap_err();
        assert!(matches!(err, StateError::Corrupt { .. }));
        assert!(err.help().unwrap().contains("aistack up"));
    }
}
