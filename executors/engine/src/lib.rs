//! The in-process llama.cpp core of the engine process (DESIGN §6): load a GGUF model, render
//! its chat template with minijinja, and generate text with streaming, stop strings and usage
//! counts. No HTTP here; the engine process and gateway build on this.

mod error;
mod features;
mod template;

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

pub use error::EngineError;
pub use features::{cpu_features, unused_cpu_features};
pub use template::{ChatMessage, SpecialTokens, render_chat};

/// Context size used when neither the caller nor a smaller training context sets one.
pub const DEFAULT_CONTEXT_SIZE: u32 = 4096;
/// The most prompt tokens evaluated in one llama.cpp batch.
const MAX_BATCH: u32 = 512;
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Tokens of context (KV cache) per generation; default: the model's training context,
    /// at most [`DEFAULT_CONTEXT_SIZE`].
    pub context_size: Option<u32>,
    /// CPU threads; default: the available parallelism.
    pub threads: Option<u32>,
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
}

/// The result of [`Model::generate`].
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Everything emitted, without any stop string.
    pub text: String,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
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
        let model = LlamaModel::load_from_file(backend, path, &LlamaModelParams::default())
            .map_err(|source| EngineError::Load {
                path: path.to_owned(),
                source,
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
        })
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

    /// Generates a continuation of `prompt`, calling `on_token` with each piece of text as it
    /// becomes final (whole UTF-8 characters, never part of a stop string). `on_token`
    /// returning `false` stops generation.
    ///
    /// # Errors
    ///
    /// [`EngineError::EmptyPrompt`], [`EngineError::PromptTooLong`], [`EngineError::Context`],
    /// [`EngineError::Decode`].
    pub fn generate(
        &self,
        prompt: &str,
        params: &GenerateParams,
        on_token: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation, EngineError> {
        let tokens = self.tokenize(prompt);
        if tokens.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        let n_ctx = self.context_size as usize;
        if tokens.len() >= n_ctx {
            return Err(EngineError::PromptTooLong {
                tokens: tokens.len(),
                context_size: self.context_size,
            });
        }
        let n_batch = self.context_size.min(MAX_BATCH);
        let threads = i32::try_from(self.threads).unwrap_or(i32::MAX);
        let ctx_params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(self.context_size))
            .with_n_batch(n_batch)
            .with_n_ubatch(n_batch)
            .with_n_threads(threads)
            .with_n_threads_batch(threads)
            .with_no_perf(false);
        let mut ctx = self
            .model
            .new_context(backend()?, ctx_params)
            .map_err(|source| EngineError::Context {
                context_size: self.context_size,
                source,
            })?;

        // The prompt, in batches; logits only for its last token.
        let mut batch = LlamaBatch::new(n_batch as usize, 1);
        let last = tokens.len() - 1;
        for (chunk_index, chunk) in tokens.chunks(n_batch as usize).enumerate() {
            batch.clear();
            for (i, &token) in chunk.iter().enumerate() {
                let pos = chunk_index * n_batch as usize + i;
                batch
                    .add(token, to_pos(pos), &[0], pos == last)
                    .map_err(EngineError::Batch)?;
            }
            ctx.decode(&mut batch).map_err(EngineError::Decode)?;
        }

        let mut sampler = self.sampler(params);
        let vocab = self.model.vocab();
        let mut output = StreamText::new(&params.stop);
        let mut n_past = tokens.len();
        let mut logits_index = batch.n_tokens() - 1;
        let mut completion_tokens = 0usize;
        let max_tokens = params.max_tokens.map_or(usize::MAX, |n| n as usize);
        let mut piece = Vec::new();

        let finish_reason = loop {
            if completion_tokens >= max_tokens || n_past >= n_ctx {
                break FinishReason::Length;
            }
            let token = sampler.sample(&ctx, logits_index);
            if vocab.is_eog(token) {
                break FinishReason::Stop;
            }
            completion_tokens += 1;
            piece.clear();
            vocab.token_to_piece_into(token, &mut piece, false, None);
            if output.push(&piece, on_token) {
                break FinishReason::Stop;
            }
            if completion_tokens >= max_tokens {
                break FinishReason::Length;
            }
            batch.clear();
            batch
                .add(token, to_pos(n_past), &[0], true)
                .map_err(EngineError::Batch)?;
            ctx.decode(&mut batch).map_err(EngineError::Decode)?;
            n_past += 1;
            logits_index = 0;
        };
        let text = output.finish(on_token);

        let t = ctx.timings();
        let per_second = |n: i32, ms: f64| {
            if ms > 0.0 {
                f64::from(n) * 1000.0 / ms
            } else {
                0.0
            }
        };
        Ok(Generation {
            text,
            prompt_tokens: tokens.len(),
            completion_tokens,
            finish_reason,
            timings: Timings {
                prompt_ms: t.t_p_eval_ms(),
                prompt_tokens_per_second: per_second(t.n_p_eval(), t.t_p_eval_ms()),
                decode_ms: t.t_eval_ms(),
                decode_tokens_per_second: per_second(t.n_eval(), t.t_eval_ms()),
            },
        })
    }

    /// Greedy when `temperature <= 0`, else llama-server's chain order: penalties, top-k,
    /// top-p, min-p, temperature, then a seeded draw.
    fn sampler(&self, params: &GenerateParams) -> LlamaSampler {
        let mut chain = Vec::new();
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
        LlamaSampler::chain(chain, false)
    }
}

fn to_pos(pos: usize) -> i32 {
    i32::try_from(pos).unwrap_or(i32::MAX)
}

/// Turns token bytes into emitted text: holds back bytes of an unfinished UTF-8 character and
/// any tail that could be the start of a stop string; cuts at the first stop string.
struct StreamText<'a> {
    stop: &'a [String],
    pending: Vec<u8>,
    text: String,
    emitted: usize,
    cancelled: bool,
}

impl<'a> StreamText<'a> {
    fn new(stop: &'a [String]) -> Self {
        Self {
            stop,
            pending: Vec::new(),
            text: String::new(),
            emitted: 0,
            cancelled: false,
        }
    }

    /// Adds a token's bytes; returns true when generation should end (stop string or the
    /// callback said so).
    fn push(&mut self, bytes: &[u8], on_token: &mut dyn FnMut(&str) -> bool) -> bool {
        self.pending.extend_from_slice(bytes);
        let complete = match std::str::from_utf8(&self.pending) {
            Ok(s) => s.len(),
            Err(e) if e.error_len().is_some() => {
                // Invalid, not merely unfinished: keep going with replacement characters.
                let lossy = String::from_utf8_lossy(&self.pending).into_owned();
                self.pending.clear();
                self.text.push_str(&lossy);
                return self.after_append(on_token);
            }
            Err(e) => e.valid_up_to(),
        };
        let rest = self.pending.split_off(complete);
        let done = std::mem::replace(&mut self.pending, rest);
        self.text
            .push_str(std::str::from_utf8(&done).unwrap_or_default());
        self.after_append(on_token)
    }

    fn after_append(&mut self, on_token: &mut dyn FnMut(&str) -> bool) -> bool {
        let longest = self.stop.iter().map(String::len).max().unwrap_or(0);
        // A stop string can only begin in the part not yet emitted.
        let search_from = self.emitted;
        let found = self
            .stop
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.text[search_from..].find(s.as_str()))
            .min();
        if let Some(at) = found {
            let end = search_from + at;
            self.text.truncate(end);
            self.emit(end, on_token);
            return true;
        }
        // Hold back the longest tail that is a proper prefix of a stop string.
        let mut safe = self.text.len();
        for k in (1..longest.min(self.text.len() - self.emitted + 1)).rev() {
            let start = self.text.len() - k;
            if !self.text.is_char_boundary(start) {
                continue;
            }
            let tail = &self.text[start..];
            if self.stop.iter().any(|s| s.len() > k && s.starts_with(tail)) {
                safe = start;
                break;
            }
        }
        self.emit(safe, on_token);
        self.cancelled
    }

    fn emit(&mut self, end: usize, on_token: &mut dyn FnMut(&str) -> bool) {
        if end > self.emitted {
            if !on_token(&self.text[self.emitted..end]) {
                self.cancelled = true;
            }
            self.emitted = end;
        }
    }

    /// Flushes what was held back (no stop string can complete any more) and returns the text.
    fn finish(mut self, on_token: &mut dyn FnMut(&str) -> bool) -> String {
        if !self.pending.is_empty() {
            let lossy = String::from_utf8_lossy(&self.pending).into_owned();
            self.text.push_str(&lossy);
            self.pending.clear();
        }
        if self.cancelled {
            // The caller stopped listening: the text is what it was given.
            self.text.truncate(self.emitted);
        } else {
            let end = self.text.len();
            self.emit(end, on_token);
        }
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pieces: &[&[u8]], stop: &[&str]) -> (Vec<String>, String, bool) {
        let stop: Vec<String> = stop.iter().map(|s| (*s).to_owned()).collect();
        let mut out = Vec::new();
        let mut cb = |s: &str| {
            out.push(s.to_owned());
            true
        };
        let mut stream = StreamText::new(&stop);
        let mut stopped = false;
        for p in pieces {
            if stream.push(p, &mut cb) {
                stopped = true;
                break;
            }
        }
        let text = stream.finish(&mut cb);
        (out, text, stopped)
    }

    #[test]
    fn split_utf8_is_never_emitted_broken() {
        let euro = "€".as_bytes();
        let (out, text, _) = run(&[b"a", &euro[..1], &euro[1..], b"b"], &[]);
        assert_eq!(text, "a€b");
        assert_eq!(out, ["a", "€", "b"]);
    }

    #[test]
    fn stop_string_across_pieces_is_not_emitted() {
        let (out, text, stopped) = run(&[b"Hello ", b"wor", b"ld", b" again"], &["world"]);
        assert!(stopped);
        assert_eq!(text, "Hello ");
        assert_eq!(out.concat(), "Hello ");
    }

    #[test]
    fn cancelled_text_is_what_was_emitted() {
        let stop = vec!["world".to_owned()];
        let mut out = String::new();
        let mut cb = |s: &str| {
            out.push_str(s);
            false
        };
        let mut stream = StreamText::new(&stop);
        assert!(stream.push(b"Hello wor", &mut cb));
        assert_eq!(stream.finish(&mut cb), "Hello ");
        assert_eq!(out, "Hello ");
    }

    #[test]
    fn held_back_prefix_is_flushed_at_the_end() {
        let (out, text, stopped) = run(&[b"Hello ", b"wor"], &["world"]);
        assert!(!stopped);
        assert_eq!(text, "Hello wor");
        assert_eq!(out, ["Hello ", "wor"]);
    }
}
