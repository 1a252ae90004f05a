//! The real test model, SmolLM2-135M-Instruct (Q4_1), fetched by `scripts/fetch-model`.

mod common;

use std::path::PathBuf;
use std::time::Instant;

use aistack_store::{DigestCache, LocalFile, Store, gguf};

fn model() -> PathBuf {
    let path = std::env::var_os("AISTACK_TEST_MODEL").expect(
        "AISTACK_TEST_MODEL is not set: run `scripts/fetch-model` and set AISTACK_TEST_MODEL to the path it prints",
    );
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "AISTACK_TEST_MODEL names `{}`, which is not a file: run `scripts/fetch-model`",
        path.display()
    );
    path
}

#[test]
fn reads_and_imports_smollm2() {
    let path = model();
    let header = gguf::read_header(&path).unwrap();
    let summary = gguf::summarize(std::slice::from_ref(&header));
    assert_eq!(summary.architecture.as_deref(), Some("llama"));
    assert_eq!(summary.quantization.as_deref(), Some("Q4_1"));
    assert_eq!(summary.context_length, Some(8192));
    assert!(
        (134_000_000..135_000_000).contains(&summary.parameters),
        "{}",
        summary.parameters
    );

    let dir = tempfile::tempdir().unwrap();
    let mut cache = DigestCache::load(&dir.path().join("digests.json"));
    let (size, digest) = cache.fact(&path).unwrap();
    // A hit costs one stat: 50 models naming the same file.
    let started = Instant::now();
    for _ in 0..50 {
        assert_eq!(cache.fact(&path).unwrap().1, digest);
    }
    let hits = started.elapsed();
    println!("50 digest cache hits: {hits:?}");
    assert!(hits.as_millis() < 20, "{hits:?}");

    let store = Store::open(&dir.path().join("models")).unwrap();
    let file = LocalFile {
        path: path.clone(),
        size,
        digest,
    };
    let started = Instant::now();
    let imported = store
        .import_local(std::slice::from_ref(&file), &mut |_, _| {})
        .unwrap();
    let took = started.elapsed();
    println!("imported {} ({size} bytes) in {took:?}", path.display());
    assert_eq!(imported.config.architecture, "llama");
    assert_eq!(imported.config.quantization, "Q4_1");
    assert_eq!(imported.config.parameters, "134.52M");
    assert_eq!(imported.config.context_size, Some(8192));
    assert_eq!(imported.size, size);
    println!(
        "config: {}",
        serde_json::to_string(&imported.config)
            .unwrap()
            .chars()
            .take(300)
            .collect::<String>()
    );
    println!("size: {}", imported.config.size);

    let started = Instant::now();
    let again = store
        .import_local(std::slice::from_ref(&file), &mut |_, _| {})
        .unwrap();
    println!("re-import (no-op) in {:?}", started.elapsed());
    assert_eq!(again.manifest_digest, imported.manifest_digest);
    assert!(store.contains(&imported.manifest_digest));
}
