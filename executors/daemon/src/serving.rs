//! What the gateway needs to serve a model, built from the model's applied record and its
//! artifact in the store: the same function for a fresh apply and for re-adoption after a
//! daemon restart, so both serve a model identically.

use std::collections::BTreeMap;

use aistack_apply::HostError;
use aistack_gateway::{KeepAlive, Mode, ModelConfig};
use aistack_planner::{EngineOptions, MANIFEST_OUTPUT, ModelSettings};
use aistack_spec::runtime_flags::{self, LlamaFlags};
use aistack_spec::values::{EngineKind, KeepAlive as SpecKeepAlive, ModelMode, is_path};
use aistack_store::Store;
use aistack_store::artifact::{CHAT_TEMPLATE_MEDIA_TYPE, GGUF_MEDIA_TYPE};
use aistack_store::gguf::{Header, Value as GgufValue, read_header};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The context window of a model whose spec sets none: its training context, capped where
/// the KV cache of small machines still fits.
pub const DEFAULT_CONTEXT: u64 = 4096;

/// The context size to run with: the spec's, else the training context capped at
/// [`DEFAULT_CONTEXT`].
pub fn context_size(header: &Header, wanted: Option<u32>) -> u32 {
    if let Some(n) = wanted {
        return n;
    }
    let trained = header
        .architecture()
        .and_then(|arch| header.get(&format!("{arch}.context_length")))
        .and_then(GgufValue::as_u64)
        .filter(|&n| n > 0)
        .unwrap_or(DEFAULT_CONTEXT);
    trained.min(DEFAULT_CONTEXT) as u32
}

/// Bytes a model needs loaded: its weights plus a KV cache of `context` tokens for each of
/// `parallel` sequences — `n_layer × n_head_kv × head_dim` values each for K and V per
/// token, with `head_dim = n_embd / n_head`, of the cache types the flags name (f16 by
/// default). The gateway admits models against its memory budget with it.
pub fn memory_estimate(
    header: &Header,
    weights: u64,
    context: u32,
    parallel: u32,
    flags: &LlamaFlags,
) -> u64 {
    let Some(arch) = header.architecture() else {
        return weights;
    };
    let key = |name: &str| {
        header
            .get(&format!("{arch}.{name}"))
            .and_then(GgufValue::as_u64)
    };
    let layers = key("block_count").unwrap_or(0);
    let heads = key("attention.head_count").unwrap_or(0);
    let kv_heads = key("attention.head_count_kv").unwrap_or(heads);
    let head_dim = match (key("embedding_length"), heads) {
        (Some(embd), h) if h > 0 => embd / h,
        _ => 0,
    };
    let elements = (u64::from(context) * u64::from(parallel.max(1)))
        .saturating_mul(layers * kv_heads * head_dim);
    weights.saturating_add(flags.kv_cache_bytes(elements))
}

/// A store error as a step's error, with its fix.
pub(crate) fn store_error(e: aistack_store::StoreError) -> HostError {
    HostError::from_error(&e, e.help())
}

/// The gateway's view of model `name` of `project`, from its recorded `settings` and
/// `outputs` (the manifest digest) and the artifact in `store`. Reads the first shard's
/// GGUF header.
pub fn model_config(
    store: &Store,
    project: &str,
    name: &str,
    settings: &ModelSettings,
    outputs: &BTreeMap<String, String>,
) -> Result<ModelConfig, HostError> {
    let serving = &settings.serving;
    // The planner gives llama.cpp models their `parallel`; other engines have no
    // executor yet.
    let (EngineKind::LlamaCpp, EngineOptions::LlamaCpp { threads, .. }, Some(parallel)) =
        (serving.engine, &serving.options, serving.parallel)
    else {
        return Err(HostError::new(format!(
            "Engine `{}` of model `{name}` is not supported yet",
            serving.engine
        ))
        .with_help("Use a GGUF model served by `llama.cpp`"));
    };
    let mode = match serving.mode {
        ModelMode::Embedding => Mode::Embedding,
        ModelMode::Chat => Mode::Chat,
        other => {
            return Err(HostError::new(format!(
                "Mode `{other}` of model `{name}` is not supported yet"
            ))
            .with_help("Use `mode: chat` or `mode: embedding`"));
        }
    };
    let digest = outputs.get(MANIFEST_OUTPUT).ok_or_else(|| {
        HostError::new(format!("Model `{name}` has no artifact recorded"))
            .with_help("Run `aistack up` again")
    })?;
    let manifest = store.manifest(digest).map_err(store_error)?;
    let config = store.config(&manifest).map_err(store_error)?;
    let blob = |media_type: &str| {
        (manifest.layers.iter())
            .find(|l| l.media_type == media_type)
            .map(|l| store.blob_path(&l.digest))
            .transpose()
            .map_err(store_error)
    };
    let model_path = blob(GGUF_MEDIA_TYPE)?.ok_or_else(|| {
        HostError::new(format!("Model `{name}` has no GGUF layer"))
            .with_help("Only GGUF models are served so far; use a GGUF source")
    })?;
    let chat_template = blob(CHAT_TEMPLATE_MEDIA_TYPE)?;
    let header = read_header(&model_path).map_err(|e| HostError::from_error(&e, e.help()))?;
    let weights: u64 = (manifest.layers.iter())
        .filter(|l| l.media_type == GGUF_MEDIA_TYPE)
        .map(|l| l.size)
        .sum();
    let context = context_size(&header, serving.context_size);
    let keep_alive = match serving.keep_alive {
        SpecKeepAlive::Forever => KeepAlive::Never,
        SpecKeepAlive::After(d) => KeepAlive::After(d),
    };
    let runtime_flags = serving.runtime_flags.clone();
    let flags = runtime_flags::parse(&runtime_flags).map_err(|errors| {
        HostError::new(format!("Model `{name}`: {}", errors[0].message))
            .with_help(errors[0].help.clone())
    })?;
    let source = &settings.source;
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    Ok(ModelConfig {
        name: name.to_owned(),
        project: project.to_owned(),
        reference: (!source.is_empty() && !is_path(source)).then(|| source.to_owned()),
        digest: digest.clone(),
        size: manifest.layers.iter().map(|l| l.size).sum(),
        created: config
            .descriptor
            .created
            .as_deref()
            .and_then(unix_seconds)
            .unwrap_or(0),
        model_path,
        chat_template,
        mode,
        context_size: Some(context),
        parallel,
        threads: *threads,
        keep_alive,
        memory_estimate: memory_estimate(&header, weights, context, parallel, &flags),
        runtime_flags,
        architecture: non_empty(&config.config.architecture),
        quantization: non_empty(&config.config.quantization),
        parameters: non_empty(&config.config.parameters),
    })
}

/// Seconds since the epoch of an RFC 3339 time (`2025-02-07T10:11:12.5Z`,
/// `2025-02-07T11:11:12+01:00`); the fraction is dropped.
pub fn unix_seconds(text: &str) -> Option<i64> {
    OffsetDateTime::parse(text, &Rfc3339)
        .ok()
        .map(OffsetDateTime::unix_timestamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_is_weights_plus_the_kv_cache_of_its_types() {
        let header = read_header(&aistack_tests::test_model()).expect("a GGUF header");
        // SmolLM2-135M: 30 layers, 3 KV heads, 576 / 9 = 64 dimensions per head, trained
        // on 8192 tokens.
        let per_token = 30 * 3 * 64 * 2 * 2;
        assert_eq!(context_size(&header, None), 4096);
        assert_eq!(context_size(&header, Some(512)), 512);
        let f16 = LlamaFlags::default();
        assert_eq!(
            memory_estimate(&header, 1000, 4096, 4, &f16),
            1000 + 4096 * 4 * per_token
        );
        assert_eq!(
            memory_estimate(&header, 1000, 2048, 1, &f16),
            1000 + 2048 * per_token
        );
        // q8_0 stores 32 values in 34 bytes.
        let q8 = runtime_flags::parse(&["-ctk=q8_0".into(), "-ctv=q8_0".into()]).unwrap();
        assert_eq!(
            memory_estimate(&header, 1000, 2048, 1, &q8),
            1000 + 2 * (2048 * 30 * 3 * 64 / 32 * 34)
        );
    }

    #[test]
    fn rfc3339_times_read_as_unix_seconds() {
        assert_eq!(unix_seconds("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(unix_seconds("2025-02-07T10:11:12.5Z"), Some(1_738_923_072));
        assert_eq!(
            unix_seconds("2025-02-07T11:11:12+01:00"),
            Some(1_738_923_072)
        );
        assert_eq!(unix_seconds("yesterday"), None);
    }
}
