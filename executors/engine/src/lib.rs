//! The in-process llama.cpp core of the engine process (DESIGN §6): load a GGUF model, render
//! its chat template with minijinja, and generate text with streaming, stop strings and usage
//! counts. No HTTP here; the engine process and gateway build on this.

#![warn(missing_docs)]

mod batch;
pub mod confine;
mod embed;
mod error;
mod features;
mod grammar;
mod jinja;
pub mod serve;
mod stream;
mod template;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use aistack_spec::runtime_flags::{CacheType, FlashAttention, LlamaFlags};
use llama_cpp_2::context::params::{KvCacheType, LlamaContextParams};
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

pub use batch::{Batcher, Job, Output, Sink};
pub use embed::Embedder;
pub use error::EngineError;
pub use features::{cpu_features, unused_cpu_features};
pub use grammar::{
    Grammar, json_object_grammar, lazy_tool_call_grammar, schema_grammar, tool_call_grammar,
};
pub use template::{ChatContext, ChatMessage, SpecialTokens, render_chat};

fn kv_type(t: CacheType) -> KvCacheType {
    match t {
        CacheType::F32 => KvCacheType::F32,
        CacheType::F16 => KvCacheType::F16,
        CacheType::Bf16 => KvCacheType::BF16,
        CacheType::Q8_0 => KvCacheType::Q8_0,
        CacheType::Q4_0 => KvCacheType::Q4_0,
        CacheType::Q4_1 => KvCacheType::Q4_1,
        CacheType::Iq4Nl => KvCacheType::IQ4_NL,
        CacheType::Q5_0 => KvCacheType::Q5_0,
        CacheType::Q5_1 => KvCacheType::Q5_1,
    }
}

/// Context size used when neither the caller nor a smaller training context sets one.
pub const DEFAULT_CONTEXT_SIZE: u32 = 4096;
/// llama.cpp's `LLAMA_DEFAULT_SEED`: pick a random seed.
const RANDOM_SEED: u32 = u32::MAX;

static BACKEND: OnceLock<LlamaBackend> = OnceLock::new();
static BACKEND_INIT: Mutex<()> = Mutex::new(());

/// The process's one llama.cpp backend. llama.cpp logs to stderr unless `AISTACK_ENGINE_LOG` is
/// set.
fn backend() -> Result<&'static LlamaBackend, EngineError> {
    if let Some(backend) = BACKEND.get() {
        return Ok(backend);
    }
    let _guard = BACKEND_INIT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(backend) = BACKEND.get() {
        return Ok(backend);
    }
    let mut backend = LlamaBackend::init().map_err(EngineError::Backend)?;
    if std::env::var_os("AISTACK_ENGINE_LOG").is_none() {
        backend.void_logs();
    }
    Ok(BACKEND.get_or_init(|| backend))
}

/// How to load a model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadOptions {
    /// Tokens of context (KV cache) per generation; default: the model's training context,
    /// at most [`DEFAULT_CONTEXT_SIZE`].
    pub context_size: Option<u32>,
    /// CPU threads; default: the available parallelism.
    pub threads: Option<u32>,
    /// The model's `runtime_flags`.
    pub flags: LlamaFlags,
}

/// Sampling and stopping parameters for [`Model::generate`].
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateParams {
    /// The most tokens to generate; `None`: until the context is full.
    pub max_tokens: Option<u32>,
    /// 0 samples greedily.
    pub temperature: f32,
    /// Nucleus sampling; 1 disables.
    pub top_p: f32,
    /// Top-k sampling; 0 disables.
    pub top_k: i32,
    /// Min-p sampling; 0 disables.
    pub min_p: f32,
    /// `None`: a random seed.
    pub seed: Option<u32>,
    /// Generation ends before any of these strings, which are never emitted.
    pub stop: Vec<String>,
    /// 1 disables.
    pub repeat_penalty: f32,
    /// How many recent tokens the penalties look at; -1: the whole context.
    pub repeat_last_n: i32,
    /// 0 disables.
    pub frequency_penalty: f32,
    /// 0 disables.
    pub presence_penalty: f32,
}

impl GenerateParams {
    /// llama-server's defaults, with the model's `runtime_flags` over them.
    #[must_use]
    pub fn with_defaults(flags: &aistack_spec::runtime_flags::SamplingDefaults) -> Self {
        let d = Self::default();
        Self {
            max_tokens: flags.max_tokens,
            temperature: flags.temperature.unwrap_or(d.temperature),
            top_p: flags.top_p.unwrap_or(d.top_p),
            top_k: flags.top_k.unwrap_or(d.top_k),
            min_p: flags.min_p.unwrap_or(d.min_p),
            seed: flags.seed,
            stop: Vec::new(),
            repeat_penalty: flags.repeat_penalty.unwrap_or(d.repeat_penalty),
            repeat_last_n: flags.repeat_last_n.unwrap_or(d.repeat_last_n),
            frequency_penalty: flags.frequency_penalty.unwrap_or(d.frequency_penalty),
            presence_penalty: flags.presence_penalty.unwrap_or(d.presence_penalty),
        }
    }
}

impl Default for GenerateParams {
    /// llama-server's defaults.
    fn default() -> Self {
        Self {
            max_tokens: None,
            temperature: 0.8,
            top_p: 0.95,
            top_k: 40,
            min_p: 0.05,
            seed: None,
            stop: Vec::new(),
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-generation token, a stop string, or the callback asked to stop.
    Stop,
    /// `max_tokens` reached, or the context is full.
    Length,
}

/// Prompt and decode speed of one generation, from llama.cpp's own timings.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Timings {
    /// Milliseconds spent evaluating the prompt.
    pub prompt_ms: f64,
    /// Prompt tokens per second.
    pub prompt_tokens_per_second: f64,
    /// Milliseconds spent generating.
    pub decode_ms: f64,
    /// Generated tokens per second.
    pub decode_tokens_per_second: f64,
    /// Milliseconds from the request to its first token.
    pub time_to_first_token_ms: f64,
}

/// The result of [`Model::generate`].
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Everything emitted, without any stop string.
    pub text: String,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Leading prompt tokens found in the KV cache, not evaluated again.
    pub cached_tokens: usize,
    /// Tokens generated (the end-of-generation token not counted).
    pub completion_tokens: usize,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Speed.
    pub timings: Timings,
}

/// A loaded GGUF model.
#[derive(Debug)]
pub struct Model {
    model: LlamaModel,
    path: PathBuf,
    context_size: u32,
    threads: u32,
    flags: LlamaFlags,
}

impl Model {
    /// Loads the GGUF file at `path`.
    ///
    /// # Errors
    ///
    /// [`EngineError::ModelNotFound`], [`EngineError::Backend`], [`EngineError::Load`].
    pub fn load(path: &Path, options: &LoadOptions) -> Result<Self, EngineError> {
        if !path.is_file() {
            return Err(EngineError::ModelNotFound {
                path: path.to_owned(),
            });
        }
        let backend = backend()?;
        let params = LlamaModelParams::default()
            .with_use_mlock(options.flags.mlock)
            .with_use_mmap(!options.flags.no_mmap);
        let model = LlamaModel::load_from_file(backend, path, &params).map_err(|source| {
            EngineError::Load {
                path: path.to_owned(),
                source,
            }
        })?;
        let trained = model.n_ctx_train();
        let context_size = options
            .context_size
            .unwrap_or_else(|| match trained {
                0 => DEFAULT_CONTEXT_SIZE,
                n => n.min(DEFAULT_CONTEXT_SIZE),
            })
            .max(1);
        let threads = options
            .threads
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map_or(1, |n| u32::try_from(n.get()).unwrap_or(1))
            })
            .max(1);
        Ok(Self {
            model,
            path: path.to_owned(),
            context_size,
            threads,
            flags: options.flags.clone(),
        })
    }

    /// The model's `runtime_flags`.
    #[must_use]
    pub fn flags(&self) -> &LlamaFlags {
        &self.flags
    }

    /// Context parameters for `n_ctx` tokens with the model's threads and flags; the caller
    /// sets batch sizes and sequences.
    pub(crate) fn context_params(&self, n_ctx: u32) -> LlamaContextParams {
        let threads = i32::try_from(self.threads).unwrap_or(i32::MAX);
        let threads_batch = self
            .flags
            .threads_batch
            .map_or(threads, |n| i32::try_from(n).unwrap_or(i32::MAX));
        let mut params = LlamaContextParams::default()
            .with_n_ctx(std::num::NonZeroU32::new(n_ctx))
            .with_n_threads(threads)
            .with_n_threads_batch(threads_batch)
            // llama.cpp's own values (`llama_flash_attn_type`): -1 auto, 0 off, 1 on.
            .with_flash_attention_policy(match self.flags.flash_attention {
                FlashAttention::Auto => -1,
                FlashAttention::Off => 0,
                FlashAttention::On => 1,
            });
        if let Some(t) = self.flags.cache_type_k {
            params = params.with_type_k(kv_type(t));
        }
        if let Some(t) = self.flags.cache_type_v {
            params = params.with_type_v(kv_type(t));
        }
        if let Some(base) = self.flags.rope_freq_base {
            params = params.with_rope_freq_base(base);
        }
        if let Some(scale) = self.flags.rope_freq_scale {
            params = params.with_rope_freq_scale(scale);
        }
        params
    }

    /// The file this model was loaded from.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tokens of context each generation gets.
    #[must_use]
    pub fn context_size(&self) -> u32 {
        self.context_size
    }

    /// CPU threads used.
    #[must_use]
    pub fn threads(&self) -> u32 {
        self.threads
    }

    /// The GGUF's `tokenizer.chat_template`, if it has one.
    #[must_use]
    pub fn chat_template(&self) -> Option<String> {
        self.model
            .chat_template(None)
            .ok()
            .and_then(|t| t.to_string().ok())
    }

    /// The text of the model's BOS and EOS tokens, for templates.
    #[must_use]
    pub fn special_tokens(&self) -> SpecialTokens {
        let vocab = self.model.vocab();
        let text = |token: LlamaToken| {
            if token.0 < 0 {
                return String::new();
            }
            String::from_utf8_lossy(&vocab.token_to_piece(token, true, None)).into_owned()
        };
        SpecialTokens {
            bos: text(vocab.bos()),
            eos: text(vocab.eos()),
        }
    }

    /// Tokenises `text` as [`Model::generate`] does (special tokens parsed, BOS added when the
    /// model asks for it).
    #[must_use]
    pub fn tokenize(&self, text: &str) -> Vec<LlamaToken> {
        self.model.vocab().tokenize(text.as_bytes(), true, true)
    }

    /// Checks that `tokens` can be generated from: not empty, and shorter than the context.
    ///
    /// # Errors
    ///
    /// [`EngineError::EmptyPrompt`], [`EngineError::PromptTooLong`].
    pub fn check_prompt(&self, tokens: &[LlamaToken]) -> Result<(), EngineError> {
        if tokens.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        if tokens.len() >= self.context_size as usize {
            return Err(EngineError::PromptTooLong {
                tokens: tokens.len(),
                context_size: self.context_size,
            });
        }
        Ok(())
    }

    /// Generates a continuation of `prompt` on its own, calling `on_token` with each piece of
    /// text as it becomes final (whole UTF-8 characters, never part of a stop string).
    /// `on_token` returning `false` stops generation. The same batching code the engine process
    /// runs, with one sequence.
    ///
    /// # Errors
    ///
    /// [`EngineError::EmptyPrompt`], [`EngineError::PromptTooLong`], [`EngineError::Context`],
    /// [`EngineError::Decode`].
    pub fn generate(
        &self,
        prompt: &str,
        params: &GenerateParams,
        on_token: &mut (dyn FnMut(&str) -> bool + Send),
    ) -> Result<Generation, EngineError> {
        let tokens = self.tokenize(prompt);
        self.check_prompt(&tokens)?;
        let mut outcome = None;
        let mut batcher = Batcher::new(self, 1)?;
        let sink: Sink<'_> = Box::new(|output| match output {
            Output::Text(text) => on_token(text),
            Output::Done(generation) => {
                outcome = Some(Ok(generation));
                true
            }
            Output::Failed(error) => {
                outcome = Some(Err(error));
                true
            }
            Output::Listening => true,
        });
        let job = Job {
            tokens,
            params: params.clone(),
            grammar: None,
            sink,
            received: std::time::Instant::now(),
        };
        if batcher.admit(job).is_err() {
            unreachable!("a new batcher has a free sequence");
        }
        while !batcher.is_idle() {
            batcher.step();
        }
        drop(batcher);
        outcome.unwrap_or_else(|| unreachable!("a finished batcher reported its generation"))
    }

    /// Greedy when `temperature <= 0`, else llama-server's chain order: penalties, top-k,
    /// top-p, min-p, temperature, then a seeded draw.
    ///
    /// A grammar goes first, so every later stage only sees tokens the grammar allows.
    ///
    /// # Errors
    ///
    /// [`EngineError::Grammar`] when `grammar` does not parse.
    pub fn sampler(
        &self,
        params: &GenerateParams,
        grammar: Option<&Grammar>,
    ) -> Result<LlamaSampler, EngineError> {
        let mut chain = Vec::new();
        if let Some(grammar) = grammar {
            let sampler = if grammar.triggers.is_empty() {
                LlamaSampler::grammar(&self.model, &grammar.rules, "root")
            } else {
                LlamaSampler::grammar_lazy_patterns(
                    &self.model,
                    &grammar.rules,
                    "root",
                    &grammar.triggers,
                    &[],
                )
            };
            chain.push(sampler.map_err(|e| EngineError::Grammar(e.to_string()))?);
        }
        if params.repeat_penalty != 1.0
            || params.frequency_penalty != 0.0
            || params.presence_penalty != 0.0
        {
            let last_n = if params.repeat_last_n < 0 {
                i32::try_from(self.context_size).unwrap_or(i32::MAX)
            } else {
                params.repeat_last_n
            };
            chain.push(LlamaSampler::penalties(
                self.model.n_vocab(),
                last_n,
                params.repeat_penalty,
                params.frequency_penalty,
                params.presence_penalty,
            ));
        }
        if params.temperature <= 0.0 {
            chain.push(LlamaSampler::greedy());
        } else {
            if params.top_k > 0 {
                chain.push(LlamaSampler::top_k(params.top_k));
            }
            if params.top_p < 1.0 {
                chain.push(LlamaSampler::top_p(params.top_p, 1));
            }
            if params.min_p > 0.0 {
                chain.push(LlamaSampler::min_p(params.min_p, 1));
            }
            chain.push(LlamaSampler::temp(params.temperature));
            chain.push(LlamaSampler::dist(params.seed.unwrap_or(RANDOM_SEED)));
        }
        Ok(LlamaSampler::chain(chain, false))
    }

    /// The llama.cpp model.
    pub(crate) fn llama(&self) -> &LlamaModel {
        &self.model
    }

    /// Bytes the weights take.
    #[must_use]
    pub fn weights_bytes(&self) -> u64 {
        self.model.size()
    }

    /// Bytes a KV cache of `tokens` tokens takes, of the cache types the flags name (f16
    /// by default).
    #[must_use]
    pub fn kv_cache_bytes(&self, tokens: u64) -> u64 {
        let layers = u64::from(self.model.n_layer());
        let heads = u64::from(self.model.n_head().max(1));
        let kv_heads = u64::from(self.model.n_head_kv());
        let head_size = u64::try_from(self.model.n_embd()).unwrap_or(0) / heads;
        self.flags
            .kv_cache_bytes(tokens * layers * kv_heads * head_size)
    }

    /// Length of the model's embedding vectors.
    #[must_use]
    pub fn embedding_size(&self) -> u32 {
        u32::try_from(self.model.n_embd()).unwrap_or(0)
    }

    /// The context the model was trained with.
    #[must_use]
    pub fn trained_context(&self) -> u32 {
        self.model.n_ctx_train()
    }
}
