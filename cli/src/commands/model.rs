//! `aistack model …`: the shared store, as Docker Model Runner's `docker model` has it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use aistack_daemon::status::short_digest;
use aistack_spec::values::OciRef;
use aistack_spec::values::human_size;
use aistack_store::registry::{self, PullOptions, PullProgress};
use aistack_store::{DigestCache, LocalFile, Store, local_shards};
use clap::Subcommand;

use super::home;
use crate::progress::Progress;
use crate::report::{Failure, Report, chain};

/// The `model` subcommands.
#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Pull a model from a registry into the store.
    Pull {
        /// The reference, e.g. `ai/smollm2` or `127.0.0.1:5000/ai/smollm2:135M-Q4_1`.
        reference: String,
        /// Show no progress.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Push a model of the store to a registry.
    Push {
        /// The reference to push, as tagged in the store.
        reference: String,
        /// Show no progress.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Package a GGUF file (and its shards) as a model artifact, and tag it.
    Package {
        /// The GGUF file; for a sharded model, its first shard.
        #[arg(long, value_name = "FILE")]
        gguf: PathBuf,
        /// A license file to include; repeatable.
        #[arg(long, value_name = "FILE")]
        license: Vec<PathBuf>,
        /// A Jinja chat template to include.
        #[arg(long, value_name = "FILE")]
        chat_template: Option<PathBuf>,
        /// The context size to record in the config (default: the model's).
        #[arg(long, value_name = "N")]
        context_size: Option<u64>,
        /// Push the artifact after packaging.
        #[arg(long)]
        push: bool,
        /// Show no progress.
        #[arg(short, long)]
        quiet: bool,
        /// The reference to tag it with.
        reference: String,
    },
    /// List the models in the store.
    #[command(alias = "list")]
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a model's manifest and config.
    Inspect {
        /// The reference or manifest digest.
        reference: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a reference; the model goes when no reference is left.
    #[command(alias = "remove")]
    Rm {
        /// The reference.
        reference: String,
    },
    /// Give a model of the store another reference.
    Tag {
        /// The existing reference or manifest digest.
        source: String,
        /// The new reference.
        target: String,
    },
}

/// `aistack model …`.
pub async fn model(command: ModelCommand) -> Result<ExitCode, Failure> {
    let home = home()?;
    let store = Store::open(&home.models())?;
    match command {
        ModelCommand::Pull { reference, quiet } => {
            let oci = parse(&reference)?;
            let mut progress = Progress::new(quiet);
            let mut report =
                |p: PullProgress| progress.bytes(short_digest(&p.layer), p.done, p.total);
            let pulled = registry::pull(&store, &oci, &PullOptions::default(), &mut report)
                .await
                .map_err(|e| Report::new(chain(&e), e.help()))?;
            println!(
                "Pulled `{oci}`: {} ({}, {} transferred)",
                pulled.manifest_digest,
                human_size(pulled.size),
                human_size(pulled.transferred_bytes)
            );
        }
        ModelCommand::Push { reference, quiet } => push(&store, &reference, quiet).await?,
        ModelCommand::Package {
            gguf,
            license,
            chat_template,
            context_size,
            push: and_push,
            quiet,
            reference,
        } => {
            let oci = parse(&reference)?;
            let mut cache = DigestCache::load(&home.cache().join("digests.json"));
            let mut files = Vec::new();
            for path in local_shards(&gguf)? {
                let (size, digest) = cache.fact(&path).map_err(|e| {
                    Report::new(
                        format!("Cannot read `{}`: {e}", path.display()),
                        Some("Check the path given with `--gguf`".to_owned()),
                    )
                })?;
                files.push(LocalFile { path, size, digest });
            }
            let name = oci.to_string();
            let imported = store.package(
                &files,
                &license,
                chat_template.as_deref(),
                context_size,
                &name,
            )?;
            println!(
                "Packaged `{name}`: {} ({})",
                imported.manifest_digest,
                human_size(imported.size)
            );
            if and_push {
                push(&store, &name, quiet).await?;
            }
        }
        ModelCommand::Ls { json } => list(&store, json)?,
        ModelCommand::Inspect { reference, json } => inspect(&store, &reference, json)?,
        ModelCommand::Rm { reference } => {
            let name = store_name(&store, &reference)?;
            store.remove_reference(&name)?;
            println!("Removed `{name}`");
        }
        ModelCommand::Tag { source, target } => {
            let source = store_name(&store, &source)?;
            let target = parse(&target)?.to_string();
            store.tag(&source, &target)?;
            println!("Tagged `{source}` as `{target}`");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn push(store: &Store, reference: &str, quiet: bool) -> Result<(), Failure> {
    let oci = parse(reference)?;
    let name = store_name(store, reference)?;
    let mut progress = Progress::new(quiet);
    let mut report = |p: PullProgress| progress.bytes(short_digest(&p.layer), p.done, p.total);
    let pushed = registry::push(store, &name, &oci, &mut report)
        .await
        .map_err(|e| Report::new(chain(&e), e.help()))?;
    println!("Pushed `{oci}`: {}", pushed.manifest_digest);
    Ok(())
}

fn parse(reference: &str) -> Result<OciRef, Failure> {
    OciRef::parse_model(reference).map_err(|e| {
        Report::new(
            format!("Invalid reference `{reference}`: {}", e.reason),
            Some(e.help),
        )
        .into()
    })
}

/// The name a reference has in the store (normalised as Docker does), or a manifest digest
/// given as it is; an error when the store has neither.
fn store_name(store: &Store, reference: &str) -> Result<String, Failure> {
    let name = if reference.starts_with("sha256:") {
        reference.to_owned()
    } else {
        parse(reference)?.to_string()
    };
    let known =
        name.starts_with("sha256:") && store.contains(&name) || store.resolve(&name).is_some();
    if !known {
        return Err(Report::new(
            format!("No model `{name}` in the store"),
            Some(
                "List the models with `aistack model ls`, or pull it with `aistack model pull`"
                    .to_owned(),
            ),
        )
        .into());
    }
    Ok(name)
}

fn list(store: &Store, json: bool) -> Result<(), Failure> {
    let mut models: BTreeMap<String, (Vec<String>, aistack_store::Entry)> = BTreeMap::new();
    for entry in store.list()? {
        let reference = entry
            .annotations
            .get(aistack_store::artifact::ANNOTATION_REF_NAME)
            .cloned();
        let slot = models
            .entry(entry.manifest_digest.clone())
            .or_insert_with(|| (Vec::new(), entry));
        slot.0.extend(reference);
    }
    if json {
        let rows: Vec<_> = models
            .iter()
            .map(|(id, (references, entry))| {
                serde_json::json!({
                    "id": id,
                    "references": references,
                    "size": entry.size,
                    "format": entry.config.format,
                    "architecture": entry.config.architecture,
                    "parameters": entry.config.parameters,
                    "quantization": entry.config.quantization,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
        return Ok(());
    }
    println!(
        "{:<50}  {:<19}  {:>10}  {:<10}  QUANTIZATION",
        "REFERENCE", "ID", "SIZE", "PARAMETERS"
    );
    for (id, (references, entry)) in &models {
        let shown = if references.is_empty() {
            vec!["<none>".to_owned()]
        } else {
            references.clone()
        };
        for reference in shown {
            println!(
                "{reference:<50}  {:<19}  {:>10}  {:<10}  {}",
                short_digest(id),
                human_size(entry.size),
                entry.config.parameters,
                entry.config.quantization
            );
        }
    }
    Ok(())
}

fn inspect(store: &Store, reference: &str, json: bool) -> Result<(), Failure> {
    let name = store_name(store, reference)?;
    let digest = if name.starts_with("sha256:") {
        name.clone()
    } else {
        store.resolve(&name).unwrap_or_default()
    };
    let manifest = store.manifest(&digest)?;
    let config = store.config(&manifest)?;
    let references: Vec<String> = store
        .list()?
        .into_iter()
        .filter(|e| e.manifest_digest == digest)
        .filter_map(|e| {
            e.annotations
                .get(aistack_store::artifact::ANNOTATION_REF_NAME)
                .cloned()
        })
        .collect();
    let size: u64 = manifest.layers.iter().map(|l| l.size).sum();
    let value = serde_json::json!({
        "id": digest,
        "references": references,
        "size": size,
        "manifest": manifest,
        "config": config,
    });
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
    } else {
        println!("ID:           {digest}");
        println!("References:   {}", references.join(", "));
        println!("Size:         {}", human_size(size));
        for (key, field) in [
            ("format", "Format"),
            ("architecture", "Architecture"),
            ("parameters", "Parameters"),
            ("quantization", "Quantization"),
            ("context_size", "Context size"),
        ] {
            if let Some(v) = value["config"]["config"].get(key).filter(|v| !v.is_null()) {
                println!(
                    "{:<13} {}",
                    format!("{field}:"),
                    v.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| v.to_string())
                );
            }
        }
        for layer in &manifest.layers {
            println!(
                "Layer:        {} {} ({})",
                layer.media_type,
                short_digest(&layer.digest),
                human_size(layer.size)
            );
        }
    }
    Ok(())
}
