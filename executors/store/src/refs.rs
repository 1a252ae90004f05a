//! Names in the store: each `index.json` entry of a pulled, tagged or packaged model carries
//! one reference in `org.opencontainers.image.ref.name` (normalised as Docker does,
//! `127.0.0.1:5000/ai/smollm2:135M-Q4_1`). A second name for the same manifest is a second
//! entry; tagging a name that another manifest had moves it, and the manifest it left keeps a
//! nameless entry (Docker's dangling image) unless another entry still lists it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use aistack_spec::values::OciRef;
use rustix::fs::FlockOperation;

use crate::artifact::{
    self, ANNOTATION_REF_NAME, ANNOTATION_SOURCE, CHAT_TEMPLATE_MEDIA_TYPE, ConfigFile, Descriptor,
    GGUF_MEDIA_TYPE, Index, LICENSE_MEDIA_TYPE, ModelConfig, Provenance, RootFs,
};
use crate::error::StoreError;
use crate::gguf;
use crate::store::{Imported, LocalFile, Store, digest_hex, hash_file, layer_descriptor};

impl Store {
    /// The manifest digest that the reference name `reference` (or a manifest digest) has in
    /// the store. A name is compared as written, then normalised (`ai/smollm2` is
    /// `docker.io/ai/smollm2:latest`).
    pub fn resolve(&self, reference: &str) -> Option<String> {
        let index = self.read_index().ok()?;
        find(&index, reference)
            .or_else(|| find(&index, &normalise(reference).ok()?))
            .map(|entry| entry.digest.clone())
    }

    /// Gives the model `source` (a name or manifest digest in the store) the name `target`;
    /// a model that had the name loses it.
    pub fn tag(&self, source: &str, target: &str) -> Result<(), StoreError> {
        let target = normalise(target)?;
        let _index = self.lock(".lock", FlockOperation::LockExclusive)?;
        let mut index = self.read_index()?;
        let entry = find(&index, source)
            .or_else(|| normalise(source).ok().and_then(|s| find(&index, &s)))
            .ok_or_else(|| StoreError::UnknownReference {
                reference: source.to_owned(),
            })?;
        let manifest = Descriptor {
            annotations: BTreeMap::new(),
            ..entry.clone()
        };
        name_manifest(&mut index, manifest, &target);
        self.write_index(&index)
    }

    /// Removes the name `reference` (or, given a manifest digest, every entry of that
    /// manifest); when no other entry lists its manifest, deletes the manifest and the blobs
    /// no other manifest uses.
    pub fn remove_reference(&self, reference: &str) -> Result<(), StoreError> {
        if digest_hex(reference).is_ok() {
            if self.resolve(reference).is_none() {
                return Err(StoreError::UnknownReference {
                    reference: reference.to_owned(),
                });
            }
            return self.remove(reference);
        }
        let _ingest = self.lock(".ingest.lock", FlockOperation::LockExclusive)?;
        let _index = self.lock(".lock", FlockOperation::LockExclusive)?;
        let mut index = self.read_index()?;
        let name = if find(&index, reference).is_some() {
            reference.to_owned()
        } else {
            normalise(reference)?
        };
        let Some(digest) = find(&index, &name).map(|e| e.digest.clone()) else {
            return Err(StoreError::UnknownReference {
                reference: reference.to_owned(),
            });
        };
        index
            .manifests
            .retain(|m| m.annotations.get(ANNOTATION_REF_NAME) != Some(&name));
        self.write_index(&index)?;
        if index.manifests.iter().any(|m| m.digest == digest) {
            return Ok(());
        }
        self.collect_garbage(&index, &digest)
    }

    /// Packages local files as a model named `reference`, as `docker model package` does:
    /// the GGUF shards in order, then the licenses, then the chat template, each a layer
    /// annotated with its file name. The config comes from the GGUF header; `context_size`
    /// overrides the header's. Packaging the same files again yields the same digest.
    pub fn package(
        &self,
        gguf_shards: &[LocalFile],
        licenses: &[PathBuf],
        chat_template: Option<&Path>,
        context_size: Option<u64>,
        reference: &str,
    ) -> Result<Imported, StoreError> {
        let Some(first) = gguf_shards.first() else {
            return Err(StoreError::NoFiles);
        };
        let name = normalise(reference)?;
        let context_size = context_size
            .map(|value| {
                u32::try_from(value).map_err(|_| StoreError::ContextSizeTooLarge { value })
            })
            .transpose()?;
        let _ingest = self.lock(".ingest.lock", FlockOperation::LockShared)?;

        let stat = |path: &Path| {
            fs::metadata(path).map_err(|source| StoreError::ReadSource {
                path: path.to_owned(),
                source,
            })
        };
        let mut headers = Vec::with_capacity(gguf_shards.len());
        let mut layers = Vec::new();
        let mut files = Vec::new();
        for shard in gguf_shards {
            let metadata = stat(&shard.path)?;
            if metadata.len() != shard.size {
                return Err(StoreError::SourceChanged {
                    path: shard.path.clone(),
                    expected: format!("{} bytes", shard.size),
                    found: format!("{} bytes", metadata.len()),
                });
            }
            headers.push(gguf::read_header(&shard.path)?);
            layers.push(layer_descriptor(
                &shard.path,
                &metadata,
                &shard.digest,
                shard.size,
                GGUF_MEDIA_TYPE,
            )?);
            files.push(shard.clone());
        }
        let extras = licenses
            .iter()
            .map(|p| (p.as_path(), LICENSE_MEDIA_TYPE))
            .chain(chat_template.map(|p| (p, CHAT_TEMPLATE_MEDIA_TYPE)));
        for (path, media_type) in extras {
            let metadata = stat(path)?;
            let (size, digest) = hash_file(path).map_err(|source| StoreError::ReadSource {
                path: path.to_owned(),
                source,
            })?;
            layers.push(layer_descriptor(
                path, &metadata, &digest, size, media_type,
            )?);
            files.push(LocalFile {
                path: path.to_owned(),
                size,
                digest,
            });
        }

        let total: u64 = files.iter().map(|f| f.size).sum();
        let mut done = 0;
        for file in &files {
            self.ingest_file(file, &mut done, total, &mut |_, _| {})?;
        }

        let summary = gguf::summarize(&headers);
        let mut config = ModelConfig::from_gguf(&summary);
        if context_size.is_some() {
            config.context_size = context_size;
        }
        let created = fs::metadata(&first.path)
            .and_then(|m| m.modified())
            .ok()
            .map(artifact::rfc3339);
        let config_file = ConfigFile {
            config,
            descriptor: Provenance { created },
            rootfs: RootFs {
                kind: "rootfs".to_owned(),
                diff_ids: layers.iter().map(|l| l.digest.clone()).collect(),
            },
        };
        let size = layers.iter().map(|l| l.size).sum();
        let descriptor = self.put_artifact(&config_file, layers)?;
        let manifest_digest = descriptor.digest.clone();
        self.add_reference(descriptor, &name)?;
        Ok(Imported {
            manifest_digest,
            size,
            config: config_file.config,
        })
    }

    /// Lists the manifest `manifest` (a descriptor without annotations) in the index under
    /// the name `name`, already normalised.
    pub(crate) fn add_reference(&self, manifest: Descriptor, name: &str) -> Result<(), StoreError> {
        let _index = self.lock(".lock", FlockOperation::LockExclusive)?;
        let mut index = self.read_index()?;
        name_manifest(&mut index, manifest, name);
        self.write_index(&index)
    }
}

/// `reference` normalised as a model reference (`ai/smollm2` is
/// `docker.io/ai/smollm2:latest`); a manifest digest stays as it is.
fn normalise(reference: &str) -> Result<String, StoreError> {
    if digest_hex(reference).is_ok() {
        return Ok(reference.to_owned());
    }
    OciRef::parse_model(reference)
        .map(|r| r.to_string())
        .map_err(|e| StoreError::InvalidReference {
            reference: reference.to_owned(),
            reason: e.reason,
            help: e.help,
        })
}

/// The entry named `name`, or the first entry of the manifest `name` when it is a digest.
fn find<'a>(index: &'a Index, name: &str) -> Option<&'a Descriptor> {
    if digest_hex(name).is_ok() {
        return index.manifests.iter().find(|m| m.digest == name);
    }
    index
        .manifests
        .iter()
        .find(|m| m.annotations.get(ANNOTATION_REF_NAME).map(String::as_str) == Some(name))
}

/// Moves `name` to `manifest` in `index`, then drops nameless entries of manifests that
/// another entry lists.
fn name_manifest(index: &mut Index, manifest: Descriptor, name: &str) {
    for entry in &mut index.manifests {
        if entry.digest != manifest.digest
            && entry
                .annotations
                .get(ANNOTATION_REF_NAME)
                .map(String::as_str)
                == Some(name)
        {
            entry.annotations.remove(ANNOTATION_REF_NAME);
        }
    }
    let named = |m: &Descriptor| {
        m.annotations.contains_key(ANNOTATION_REF_NAME)
            || m.annotations.contains_key(ANNOTATION_SOURCE)
    };
    if !index.manifests.iter().any(|m| {
        m.digest == manifest.digest
            && m.annotations.get(ANNOTATION_REF_NAME).map(String::as_str) == Some(name)
    }) {
        index.manifests.push(Descriptor {
            annotations: BTreeMap::from([(ANNOTATION_REF_NAME.to_owned(), name.to_owned())]),
            ..manifest
        });
    }
    let listed: BTreeSet<String> = index
        .manifests
        .iter()
        .filter(|m| named(m))
        .map(|m| m.digest.clone())
        .collect();
    let mut nameless = BTreeSet::new();
    index
        .manifests
        .retain(|m| named(m) || (!listed.contains(&m.digest) && nameless.insert(m.digest.clone())));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifact::MANIFEST_MEDIA_TYPE;

    fn descriptor(digest: char) -> Descriptor {
        Descriptor {
            media_type: MANIFEST_MEDIA_TYPE.to_owned(),
            size: 1,
            digest: format!("sha256:{}", digest.to_string().repeat(64)),
            annotations: BTreeMap::new(),
        }
    }

    fn names(index: &Index) -> Vec<(char, Option<&str>)> {
        index
            .manifests
            .iter()
            .map(|m| {
                (
                    m.digest.chars().last().unwrap(),
                    m.annotations.get(ANNOTATION_REF_NAME).map(String::as_str),
                )
            })
            .collect()
    }

    #[test]
    fn tags_add_entries_and_move_names() {
        let mut index = Index::default();
        name_manifest(&mut index, descriptor('a'), "r/m:1");
        name_manifest(&mut index, descriptor('a'), "r/m:2");
        name_manifest(&mut index, descriptor('a'), "r/m:2");
        assert_eq!(names(&index), [('a', Some("r/m:1")), ('a', Some("r/m:2"))]);
        // Moving `r/m:1` to `b` leaves `a` listed under `r/m:2`.
        name_manifest(&mut index, descriptor('b'), "r/m:1");
        assert_eq!(names(&index), [('a', Some("r/m:2")), ('b', Some("r/m:1"))]);
        // Moving its last name leaves `a` nameless but listed.
        name_manifest(&mut index, descriptor('b'), "r/m:2");
        assert_eq!(
            names(&index),
            [('a', None), ('b', Some("r/m:1")), ('b', Some("r/m:2"))]
        );
        // Naming `a` again drops its nameless entry.
        name_manifest(&mut index, descriptor('a'), "r/m:3");
        assert_eq!(
            names(&index),
            [
                ('b', Some("r/m:1")),
                ('b', Some("r/m:2")),
                ('a', Some("r/m:3"))
            ]
        );
    }

    #[test]
    fn references_are_normalised() {
        assert_eq!(
            normalise("ai/smollm2").unwrap(),
            "docker.io/ai/smollm2:latest"
        );
        let digest = format!("sha256:{}", "0".repeat(64));
        assert_eq!(normalise(&digest).unwrap(), digest);
        assert!(matches!(
            normalise("Bad/Name"),
            Err(StoreError::InvalidReference { .. })
        ));
    }
}
