//! Continuous batching: up to `parallel` generations share one llama.cpp context, each in its
//! own KV-cache sequence, and every step decodes one batch holding the next token of every
//! running generation plus prompt tokens of newly admitted ones. A request that arrives while
//! others run joins the next step instead of waiting for them to finish, as llama-server's
//! slots do.
//!
//! A finished sequence keeps its KV cache, and a new request evaluates only the part of its
//! prompt that the cache of its sequence does not already hold ([`Batcher::admit`] says which
//! sequence). Agents send the whole conversation every turn, so a turn costs its new tokens,
//! not the conversation, as with llama-server's prompt cache.

use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use crate::stream::StreamText;
use crate::{EngineError, FinishReason, GenerateParams, Generation, Model, Timings, backend};

/// The most tokens evaluated in one llama.cpp batch.
const MAX_BATCH: u32 = 512;

/// What a generation reports while it runs.
pub enum Output<'a> {
    /// More text; the sink returns `false` when nobody listens any more, which ends the
    /// generation.
    Text(&'a str),
    /// The end.
    Done(Generation),
    /// It failed.
    Failed(EngineError),
    /// Asked before each batch of a generation's prompt, which reports nothing while it
    /// is evaluated: the sink returns `false` when nobody listens any more, which ends the
    /// generation there. Minutes of an agent's prompt are not spent on a client that left.
    Listening,
}

/// Receives a generation's output; called on the batching thread, so it must not block.
pub type Sink<'s> = Box<dyn for<'a> FnMut(Output<'a>) -> bool + Send + 's>;

/// A generation waiting for a slot.
pub struct Job<'s> {
    /// The prompt, tokenised; checked to fit the context.
    pub tokens: Vec<LlamaToken>,
    /// Sampling and stopping.
    pub params: GenerateParams,
    /// A grammar the output must follow; checked by the caller.
    pub grammar: Option<crate::Grammar>,
    /// Where output goes.
    pub sink: Sink<'s>,
    /// When the request arrived, for time to first token.
    pub received: Instant,
}

struct Slot<'s> {
    job: Job<'s>,
    sampler: LlamaSampler,
    stream: StreamText,
    /// Prompt tokens already in the KV cache.
    prompt_done: usize,
    /// Prompt tokens that were in the KV cache before this job started.
    cached: usize,
    /// Tokens of this sequence in the KV cache.
    n_past: usize,
    completion_tokens: usize,
    /// The token to feed next, once the prompt is done.
    next: Option<LlamaToken>,
    /// Where this slot's logits are in the batch just decoded.
    logits_at: Option<i32>,
    prompt_finished_at: Option<Instant>,
    first_token_at: Option<Instant>,
}

/// A llama.cpp context with `parallel` sequences and the generations running in them.
pub struct Batcher<'m, 's> {
    model: &'m Model,
    ctx: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    n_batch: usize,
    slots: Vec<Option<Slot<'s>>>,
    /// The tokens whose keys and values each sequence's KV cache holds, in position order.
    cache: Vec<Vec<LlamaToken>>,
}

impl<'m, 's> Batcher<'m, 's> {
    /// A context for `parallel` sequences of the model's context size each.
    ///
    /// # Errors
    ///
    /// [`EngineError::Context`] when llama.cpp cannot allocate it.
    pub fn new(model: &'m Model, parallel: u32) -> Result<Self, EngineError> {
        let parallel = parallel.max(1);
        let per_sequence = model.context_size();
        let flags = model.flags();
        let n_batch = flags
            .batch_size
            .unwrap_or_else(|| per_sequence.min(MAX_BATCH))
            .max(parallel);
        let n_ubatch = flags.ubatch_size.unwrap_or(n_batch).min(n_batch);
        let params = model
            .context_params(per_sequence.saturating_mul(parallel))
            .with_n_seq_max(parallel)
            .with_kv_unified(false)
            .with_n_batch(n_batch)
            .with_n_ubatch(n_ubatch);
        let ctx = model
            .llama()
            .new_context(backend()?, params)
            .map_err(|source| EngineError::Context {
                context_size: per_sequence,
                source,
            })?;
        Ok(Batcher {
            model,
            ctx,
            batch: LlamaBatch::new(n_batch as usize, 1),
            n_batch: n_batch as usize,
            slots: (0..parallel).map(|_| None).collect(),
            cache: (0..parallel).map(|_| Vec::new()).collect(),
        })
    }

    /// Whether no generation is running.
    pub fn is_idle(&self) -> bool {
        self.slots.iter().all(Option::is_none)
    }

    /// Starts `job` in a free sequence, or hands it back when all are busy.
    ///
    /// The sequence is the one where starting costs least: the prompt tokens it must
    /// evaluate plus the cached tokens it must throw away (which another conversation may
    /// need again). A follow-up turn goes where its conversation is cached, and an unrelated
    /// prompt to an empty sequence rather than over a conversation it shares a system prompt
    /// with.
    ///
    /// # Errors
    ///
    /// The job itself when no sequence is free.
    pub fn admit(&mut self, mut job: Job<'s>) -> Result<(), Box<Job<'s>>> {
        let free = (0..self.slots.len()).filter(|&seq| self.slots[seq].is_none());
        let Some((index, shared)) = free
            .map(|seq| (seq, common_prefix(&self.cache[seq], &job.tokens)))
            .min_by_key(|&(seq, shared)| {
                let evaluate = job.tokens.len() - shared;
                let discard = self.cache[seq].len() - shared;
                (evaluate + discard, seq)
            })
        else {
            return Err(Box::new(job));
        };
        let sampler = match self.model.sampler(&job.params, job.grammar.as_ref()) {
            Ok(sampler) => sampler,
            Err(e) => {
                (job.sink)(Output::Failed(e));
                return Ok(());
            }
        };
        // The last prompt token is always evaluated: its logits give the first token.
        let keep = self.keep(index, shared.min(job.tokens.len().saturating_sub(1)));
        let stream = StreamText::new(job.params.stop.clone());
        self.slots[index] = Some(Slot {
            job,
            sampler,
            stream,
            prompt_done: keep,
            cached: keep,
            n_past: keep,
            completion_tokens: 0,
            next: None,
            logits_at: None,
            prompt_finished_at: None,
            first_token_at: None,
        });
        Ok(())
    }

    /// Cuts sequence `seq`'s cache to its first `keep` tokens; returns how many it kept (none
    /// when the cache cannot be cut there, as with recurrent models).
    fn keep(&mut self, seq: usize, keep: usize) -> usize {
        if keep == self.cache[seq].len() {
            return keep;
        }
        let cut = u32::try_from(keep).ok();
        if keep > 0
            && let Ok(true) = self
                .ctx
                .clear_kv_cache_seq(u32::try_from(seq).ok(), cut, None)
        {
            self.cache[seq].truncate(keep);
            return keep;
        }
        self.forget(seq);
        0
    }

    /// Decodes one batch: the next token of every generation past its prompt, then as many
    /// prompt tokens of the others as fit. Samples and reports every sequence that got logits.
    /// A failed decode is reported to each generation in the batch, which then ends.
    pub fn step(&mut self) {
        self.batch.clear();
        let mut budget = self.n_batch;
        let mut in_batch = vec![false; self.slots.len()];
        // Decoding sequences first, so a long new prompt never stalls running streams.
        for (seq, slot) in self.slots.iter_mut().enumerate() {
            let Some(slot) = slot else { continue };
            slot.logits_at = None;
            if let Some(token) = slot.next.take() {
                let at = self.batch.n_tokens();
                if self
                    .batch
                    .add(token, to_pos(slot.n_past), &[to_seq(seq)], true)
                    .is_ok()
                {
                    self.cache[seq].push(token);
                    in_batch[seq] = true;
                    slot.n_past += 1;
                    slot.logits_at = Some(at);
                    budget -= 1;
                }
            }
        }
        for (seq, entry) in self.slots.iter_mut().enumerate() {
            let Some(slot) = entry else { continue };
            let remaining = slot.job.tokens.len() - slot.prompt_done;
            if remaining == 0 || budget == 0 {
                continue;
            }
            if !(slot.job.sink)(Output::Listening) {
                // What is evaluated stays cached: the client may well send it again.
                *entry = None;
                continue;
            }
            let take = remaining.min(budget);
            in_batch[seq] = true;
            for i in 0..take {
                let pos = slot.prompt_done + i;
                let last = pos + 1 == slot.job.tokens.len();
                let at = self.batch.n_tokens();
                if self
                    .batch
                    .add(slot.job.tokens[pos], to_pos(pos), &[to_seq(seq)], last)
                    .is_err()
                {
                    break;
                }
                self.cache[seq].push(slot.job.tokens[pos]);
                if last {
                    slot.logits_at = Some(at);
                }
            }
            slot.prompt_done += take;
            slot.n_past += take;
            budget -= take;
        }
        if self.batch.n_tokens() == 0 {
            return;
        }
        if let Err(e) = self.ctx.decode(&mut self.batch) {
            let message = e.to_string();
            for (seq, _) in in_batch.iter().enumerate().filter(|(_, used)| **used) {
                self.fail(seq, EngineError::Decode(message.clone()));
            }
            return;
        }
        let now = Instant::now();
        for seq in 0..self.slots.len() {
            let Some(slot) = self.slots[seq].as_mut() else {
                continue;
            };
            let Some(at) = slot.logits_at else { continue };
            if slot.prompt_finished_at.is_none() {
                slot.prompt_finished_at = Some(now);
            }
            if let Some(reason) = Self::sample(self.model, &self.ctx, slot, at, now) {
                self.finish(seq, reason);
            }
        }
    }

    /// Samples one token for `slot`; `Some` when its generation ends.
    fn sample(
        model: &Model,
        ctx: &LlamaContext<'_>,
        slot: &mut Slot<'_>,
        at: i32,
        now: Instant,
    ) -> Option<FinishReason> {
        let context = model.context_size() as usize;
        let max_tokens = slot
            .job
            .params
            .max_tokens
            .map_or(usize::MAX, |n| n as usize);
        if slot.completion_tokens >= max_tokens {
            return Some(FinishReason::Length);
        }
        let token = slot.sampler.sample(ctx, at);
        let vocab = model.llama().vocab();
        if vocab.is_eog(token) {
            return Some(FinishReason::Stop);
        }
        slot.first_token_at.get_or_insert(now);
        slot.completion_tokens += 1;
        let mut piece = Vec::new();
        vocab.token_to_piece_into(token, &mut piece, false, None);
        let sink = &mut slot.job.sink;
        if slot
            .stream
            .push(&piece, &mut |text| sink(Output::Text(text)))
        {
            return Some(FinishReason::Stop);
        }
        if slot.completion_tokens >= max_tokens || slot.n_past >= context {
            return Some(FinishReason::Length);
        }
        slot.next = Some(token);
        None
    }

    fn finish(&mut self, seq: usize, finish_reason: FinishReason) {
        let Some(mut slot) = self.slots[seq].take() else {
            return;
        };
        let sink = &mut slot.job.sink;
        let text = slot.stream.finish(&mut |text| sink(Output::Text(text)));
        let end = Instant::now();
        let prompt_end = slot.prompt_finished_at.unwrap_or(end);
        let first = slot.first_token_at.unwrap_or(end);
        let ms =
            |from: Instant, to: Instant| to.saturating_duration_since(from).as_secs_f64() * 1e3;
        let per_second = |n: usize, ms: f64| if ms > 0.0 { n as f64 * 1e3 / ms } else { 0.0 };
        let prompt_ms = ms(slot.job.received, prompt_end);
        // Decode time runs from the first token; the first token's own cost is the prompt's.
        let decode_ms = ms(first, end);
        let timings = Timings {
            prompt_ms,
            prompt_tokens_per_second: per_second(slot.job.tokens.len() - slot.cached, prompt_ms),
            decode_ms,
            decode_tokens_per_second: per_second(
                slot.completion_tokens.saturating_sub(1),
                decode_ms,
            ),
            time_to_first_token_ms: ms(slot.job.received, first),
        };
        (slot.job.sink)(Output::Done(Generation {
            text,
            prompt_tokens: slot.job.tokens.len(),
            cached_tokens: slot.cached,
            completion_tokens: slot.completion_tokens,
            finish_reason,
            timings,
        }));
    }

    fn fail(&mut self, seq: usize, error: EngineError) {
        if let Some(mut slot) = self.slots[seq].take() {
            self.forget(seq);
            (slot.job.sink)(Output::Failed(error));
        }
    }

    /// Empties sequence `seq`'s KV cache.
    fn forget(&mut self, seq: usize) {
        let _ = self
            .ctx
            .clear_kv_cache_seq(u32::try_from(seq).ok(), None, None);
        self.cache[seq].clear();
    }
}

/// How many leading tokens `a` and `b` share.
fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn to_pos(pos: usize) -> i32 {
    i32::try_from(pos).unwrap_or(i32::MAX)
}

fn to_seq(seq: usize) -> i32 {
    i32::try_from(seq).unwrap_or(i32::MAX)
}
