//! The store against synthetic GGUF files.

mod common;

use std::path::Path;
use std::sync::Arc;

use aistack_store::{DigestCache, LocalFile, Store, StoreError, local_shards};
use common::{Gguf, V, blobs, ingest, no_progress, tree, write_file};
use serde_json::Value as Json;

fn store(dir: &Path) -> Store {
    Store::open(&dir.join("models")).unwrap()
}

fn blob_json(store: &Store, digest: &str) -> Json {
    serde_json::from_slice(&std::fs::read(store.blob_path(digest).unwrap()).unwrap()).unwrap()
}

fn index(store: &Store) -> Json {
    serde_json::from_slice(&std::fs::read(store.root().join("index.json")).unwrap()).unwrap()
}

#[test]
fn open_creates_the_layout_and_clears_ingest() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let s = Store::open(&models).unwrap();
    assert_eq!(
        std::fs::read_to_string(models.join("oci-layout")).unwrap(),
        r#"{"imageLayoutVersion":"1.0.0"}"#
    );
    assert_eq!(index(&s)["schemaVersion"], 2);
    assert_eq!(index(&s)["manifests"], serde_json::json!([]));
    std::fs::write(models.join("ingest/.tmpleftover"), b"partial").unwrap();
    std::fs::create_dir(models.join("ingest/dir")).unwrap();
    Store::open(&models).unwrap();
    assert!(ingest(&models).is_empty());
    assert!(s.list().unwrap().is_empty());
}

#[test]
fn import_writes_a_dmr_artifact() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let file = Gguf::llama("one").write(&dir.path().join("one.gguf"));
    let mut calls = Vec::new();
    let imported = s
        .import_local(std::slice::from_ref(&file), &mut |d, t| calls.push((d, t)))
        .unwrap();
    assert_eq!(calls.first(), Some(&(0, file.size)));
    assert_eq!(calls.last(), Some(&(file.size, file.size)));
    assert_eq!(imported.size, file.size);
    assert!(s.contains(&imported.manifest_digest));

    let manifest = blob_json(&s, &imported.manifest_digest);
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.docker.ai.model.config.v0.1+json"
    );
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    assert_eq!(layers[0]["mediaType"], "application/vnd.docker.ai.gguf.v3");
    assert_eq!(layers[0]["digest"], file.digest.as_str());
    assert_eq!(layers[0]["size"], file.size);
    let annotations = &layers[0]["annotations"];
    assert_eq!(annotations["org.cncf.model.filepath"], "one.gguf");
    assert_eq!(
        annotations["org.cncf.model.file.mediatype.untested"],
        "false"
    );
    let meta: Json = serde_json::from_str(
        annotations["org.cncf.model.file.metadata+json"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(meta["name"], "one.gguf");
    assert_eq!(meta["mtime"], "2023-11-14T22:13:20Z");

    // Field order and escaping as Go's encoding/json writes DMR's structs.
    let raw_manifest =
        std::fs::read_to_string(s.blob_path(&imported.manifest_digest).unwrap()).unwrap();
    let prefix = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.docker.ai.model.config.v0.1+json","size":{},"digest":"{}"}},"layers":[{{"mediaType":"application/vnd.docker.ai.gguf.v3","size":{},"digest":"{}","annotations":{{"org.cncf.model.file.mediatype.untested":"false","org.cncf.model.file.metadata+json":"{{\"name\":\"one.gguf\",\"mode\":420,"#,
        manifest["config"]["size"],
        manifest["config"]["digest"].as_str().unwrap(),
        file.size,
        file.digest
    );
    assert!(raw_manifest.starts_with(&prefix), "{raw_manifest}");
    assert_eq!(
        s.gguf_paths(&imported.manifest_digest).unwrap(),
        vec![s.blob_path(&file.digest).unwrap()]
    );

    let config = blob_json(&s, manifest["config"]["digest"].as_str().unwrap());
    let c = &config["config"];
    assert_eq!(c["format"], "gguf");
    assert_eq!(c["architecture"], "llama");
    assert_eq!(c["quantization"], "Q4_1");
    assert_eq!(c["parameters"], "4.67K");
    assert_eq!(c["context_size"], 4096);
    assert_eq!(c["gguf"]["general.name"], "one");
    assert!(c["gguf"].get("tokenizer.ggml.tokens").is_none());
    assert_eq!(config["descriptor"]["created"], "2023-11-14T22:13:20Z");
    assert_eq!(config["rootfs"]["type"], "rootfs");
    assert_eq!(config["rootfs"]["diff_ids"][0], file.digest.as_str());
    // Go's encoding/json escapes `<`, `>` and `&`.
    let raw = std::fs::read_to_string(
        s.blob_path(manifest["config"]["digest"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert!(raw.contains(r#""tokenizer.chat_template":"\u003c|im_start|\u003e{{ m }}\u0026""#));
    assert!(raw.starts_with(r#"{"config":{"format":"gguf","quantization":"Q4_1","parameters":"4.67K","architecture":"llama","size":"#));

    let entries = s.list().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].manifest_digest, imported.manifest_digest);
    assert_eq!(entries[0].size, file.size);
    assert_eq!(entries[0].config, imported.config);
    assert_eq!(
        entries[0].annotations["io.aistack.source"],
        file.path.to_str().unwrap()
    );
    assert!(
        !entries[0]
            .annotations
            .contains_key("org.opencontainers.image.ref.name")
    );
    for digest in [&imported.manifest_digest, &file.digest] {
        s.verify(digest).unwrap();
    }
    assert!(ingest(s.root()).is_empty());
}

#[test]
fn reimport_is_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let file = Gguf::llama("same").write(&dir.path().join("same.gguf"));
    let first = s
        .import_local(std::slice::from_ref(&file), &mut no_progress())
        .unwrap();
    let before = tree(s.root());
    let index_before = std::fs::read(s.root().join("index.json")).unwrap();
    let second = s
        .import_local(std::slice::from_ref(&file), &mut no_progress())
        .unwrap();
    assert_eq!(first, second);
    assert_eq!(tree(s.root()), before);
    assert_eq!(
        std::fs::read(s.root().join("index.json")).unwrap(),
        index_before
    );
    // Rewriting the same bytes with the same mtime gives the same artifact.
    let again = Gguf::llama("same").write(&dir.path().join("same.gguf"));
    let third = s.import_local(&[again], &mut no_progress()).unwrap();
    assert_eq!(third.manifest_digest, first.manifest_digest);
}

#[test]
fn sharded_models_have_one_layer_per_shard_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let mut files = Vec::new();
    for i in 1..=3u32 {
        let mut g = Gguf::llama("sharded");
        if i > 1 {
            g.metadata = vec![("split.no".into(), V::U16(i as u16 - 1))];
        }
        g.tensors = vec![(format!("blk.{i}.w"), vec![32, u64::from(i)], 0)];
        let name = format!("big-{i:05}-of-00003.gguf");
        files.push(g.write(&dir.path().join(name)));
    }
    let shards = local_shards(&files[0].path).unwrap();
    assert_eq!(
        shards,
        files.iter().map(|f| f.path.clone()).collect::<Vec<_>>()
    );
    // Naming a later shard finds them all too.
    assert_eq!(local_shards(&files[1].path).unwrap(), shards);

    let imported = s.import_local(&files, &mut no_progress()).unwrap();
    let manifest = s.manifest(&imported.manifest_digest).unwrap();
    let digests: Vec<_> = manifest.layers.iter().map(|l| l.digest.clone()).collect();
    assert_eq!(
        digests,
        files.iter().map(|f| f.digest.clone()).collect::<Vec<_>>()
    );
    let names: Vec<_> = manifest
        .layers
        .iter()
        .map(|l| l.annotations["org.cncf.model.filepath"].clone())
        .collect();
    assert_eq!(
        names,
        [
            "big-00001-of-00003.gguf",
            "big-00002-of-00003.gguf",
            "big-00003-of-00003.gguf"
        ]
    );
    assert_eq!(imported.config.parameters, (32 * (1 + 2 + 3)).to_string());
    assert_eq!(imported.config.architecture, "llama");
    assert!(!imported.config.gguf.contains_key("split.no"));
    assert_eq!(imported.size, files.iter().map(|f| f.size).sum::<u64>());

    std::fs::remove_file(&files[1].path).unwrap();
    let e = local_shards(&files[0].path).unwrap_err();
    assert!(matches!(e, StoreError::ShardMissing { .. }), "{e:?}");
    assert!(e.to_string().contains("big-00002-of-00003.gguf"), "{e}");
    assert!(e.help().is_some());
    // A plain name is just itself.
    let plain = dir.path().join("plain.gguf");
    assert_eq!(local_shards(&plain).unwrap(), vec![plain]);
}

fn assert_untouched(s: &Store) {
    assert!(blobs(s.root()).is_empty(), "{:?}", blobs(s.root()));
    assert!(ingest(s.root()).is_empty(), "{:?}", ingest(s.root()));
    assert!(s.list().unwrap().is_empty());
}

#[test]
fn non_gguf_files_are_refused_before_copying() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let file = write_file(&dir.path().join("model.safetensors"), b"\x08\x00\x00\x00{}");
    let e = s.import_local(&[file], &mut no_progress()).unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::Gguf(aistack_store::GgufError::NotGguf { .. })
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("is not a GGUF file"), "{e}");
    assert_eq!(
        e.help().unwrap(),
        format!(
            "Check that `{}` is a GGUF model file; Docker Model Runner artifacts can be pulled by reference instead",
            dir.path().join("model.safetensors").display()
        )
    );
    assert_untouched(&s);
    let e = s.import_local(&[], &mut no_progress()).unwrap_err();
    assert!(matches!(e, StoreError::NoFiles));
}

#[test]
fn truncated_files_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let bytes = Gguf::llama("cut").bytes();
    let path = dir.path().join("cut.gguf");
    let offsets: Vec<usize> = (1..bytes.len())
        .step_by(41)
        .chain([4, 8, 24, bytes.len() - 1])
        .collect();
    for len in offsets {
        let file = write_file(&path, &bytes[..len]);
        let e = s.import_local(&[file], &mut no_progress()).unwrap_err();
        match &e {
            StoreError::Gguf(
                aistack_store::GgufError::Truncated { .. }
                | aistack_store::GgufError::TruncatedData { .. },
            ) => {}
            other => panic!("{len}: {other:?}"),
        }
        assert!(e.help().unwrap().contains("download"), "{e}");
        assert_untouched(&s);
    }
}

#[test]
fn a_changed_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let path = dir.path().join("m.gguf");
    let planned = Gguf::llama("before").write(&path);
    // Same size, different content.
    Gguf::llama("after_").write(&path);
    let e = s
        .import_local(std::slice::from_ref(&planned), &mut no_progress())
        .unwrap_err();
    assert!(matches!(e, StoreError::SourceChanged { .. }), "{e:?}");
    assert!(
        e.to_string().contains("changed since the plan was made"),
        "{e}"
    );
    assert!(e.help().unwrap().contains("Run the command again"));
    assert_untouched(&s);
    // A different size is caught before reading.
    let mut g = Gguf::llama("after");
    g.tensors.pop();
    g.write(&path);
    let e = s.import_local(&[planned], &mut no_progress()).unwrap_err();
    assert!(matches!(e, StoreError::SourceChanged { .. }), "{e:?}");
    assert_untouched(&s);
}

#[test]
fn remove_collects_only_unshared_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let shared = Gguf::llama("shared").write(&dir.path().join("a.gguf"));
    let a = s
        .import_local(std::slice::from_ref(&shared), &mut no_progress())
        .unwrap();
    // The same bytes under another name: a different manifest sharing the layer.
    let copy = Gguf::llama("shared").write(&dir.path().join("b.gguf"));
    let b = s.import_local(&[copy], &mut no_progress()).unwrap();
    assert_ne!(a.manifest_digest, b.manifest_digest);
    let other = Gguf::llama("other").write(&dir.path().join("c.gguf"));
    let c = s.import_local(&[other], &mut no_progress()).unwrap();
    assert_eq!(s.list().unwrap().len(), 3);

    s.remove(&a.manifest_digest).unwrap();
    assert!(!s.contains(&a.manifest_digest));
    assert!(s.contains(&b.manifest_digest));
    assert!(s.contains(&c.manifest_digest));
    assert!(s.blob_path(&shared.digest).unwrap().exists());
    assert!(!s.blob_path(&a.manifest_digest).unwrap().exists());

    s.remove(&b.manifest_digest).unwrap();
    assert!(!s.blob_path(&shared.digest).unwrap().exists());
    assert!(s.contains(&c.manifest_digest));
    // Removing what is not there succeeds.
    s.remove(&b.manifest_digest).unwrap();
    s.remove(&c.manifest_digest).unwrap();
    assert_untouched(&s);
    let e = s.remove("sha256:nope").unwrap_err();
    assert!(matches!(e, StoreError::InvalidDigest { .. }));
}

#[test]
fn verify_and_contains_notice_damage() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let file = Gguf::llama("v").write(&dir.path().join("v.gguf"));
    let imported = s
        .import_local(std::slice::from_ref(&file), &mut no_progress())
        .unwrap();
    let blob = s.blob_path(&file.digest).unwrap();
    std::fs::write(&blob, b"damaged").unwrap();
    let e = s.verify(&file.digest).unwrap_err();
    assert!(matches!(e, StoreError::BlobCorrupt { .. }), "{e:?}");
    std::fs::remove_file(&blob).unwrap();
    assert!(matches!(
        s.verify(&file.digest),
        Err(StoreError::BlobMissing { .. })
    ));
    assert!(!s.contains(&imported.manifest_digest));
    // Importing again repairs it.
    s.import_local(&[file], &mut no_progress()).unwrap();
    assert!(s.contains(&imported.manifest_digest));
}

#[test]
fn concurrent_imports_both_land() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(store(dir.path()));
    let files: Vec<LocalFile> = (0..4)
        .map(|i| Gguf::llama(&format!("m{i}")).write(&dir.path().join(format!("m{i}.gguf"))))
        .collect();
    let handles: Vec<_> = files
        .iter()
        .cloned()
        .map(|file| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                s.import_local(&[file], &mut no_progress())
                    .unwrap()
                    .manifest_digest
            })
        })
        .collect();
    let digests: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let listed: Vec<String> = s
        .list()
        .unwrap()
        .into_iter()
        .map(|e| e.manifest_digest)
        .collect();
    assert_eq!(listed.len(), 4);
    for d in &digests {
        assert!(listed.contains(d));
    }
    // Two store handles (as two processes would have) on the same directory.
    let other = store(dir.path());
    let file = Gguf::llama("m9").write(&dir.path().join("m9.gguf"));
    let t = std::thread::spawn(move || other.import_local(&[file], &mut no_progress()).unwrap());
    s.remove(&digests[0]).unwrap();
    t.join().unwrap();
    assert_eq!(s.list().unwrap().len(), 4);
}

#[test]
fn digest_cache_hits_and_misses() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    let file = Gguf::llama("cache").write(&path);
    let cache_path = dir.path().join("cache.json");
    let mut cache = DigestCache::load(&cache_path);
    assert_eq!(cache.fact(&path).unwrap(), (file.size, file.digest.clone()));
    cache.save(&cache_path).unwrap();
    let mut loaded = DigestCache::load(&cache_path);
    assert_eq!(
        loaded.fact(&path).unwrap(),
        (file.size, file.digest.clone())
    );
    // The file changes: a miss, hashed again.
    let changed = Gguf::llama("other-size").write(&path);
    assert_eq!(loaded.fact(&path).unwrap(), (changed.size, changed.digest));
    // A corrupt cache is an empty one.
    std::fs::write(&cache_path, b"{not json").unwrap();
    let mut corrupt = DigestCache::load(&cache_path);
    assert_eq!(corrupt.fact(&path).unwrap().0, changed.size);
    assert!(
        DigestCache::load(&dir.path().join("absent.json"))
            .fact(&dir.path().join("absent"))
            .is_err()
    );
}

#[test]
fn digest_cache_does_not_keep_files_modified_just_now() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fresh.gguf");
    std::fs::write(&path, Gguf::llama("fresh").bytes()).unwrap();
    let cache_path = dir.path().join("cache.json");
    let mut cache = DigestCache::load(&cache_path);
    let (_, digest) = cache.fact(&path).unwrap();
    assert_eq!(digest, common::digest(&Gguf::llama("fresh").bytes()));
    cache.save(&cache_path).unwrap();
    // Nothing worth saving: the file's mtime is too recent to trust.
    assert!(!cache_path.exists());
}
