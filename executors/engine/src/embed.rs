//! Embeddings: one vector per input text, pooled as the model says (`<arch>.pooling_type`), or
//! by mean when a generative model says nothing, and L2-normalised as OpenAI's and Ollama's
//! embeddings are.

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaPoolingType;
use llama_cpp_2::llama_batch::LlamaBatch;

use crate::{EngineError, Model, backend};

/// A llama.cpp context that computes embeddings.
pub struct Embedder<'m> {
    model: &'m Model,
    ctx: LlamaContext<'m>,
}

impl<'m> Embedder<'m> {
    /// A context of the model's context size with embeddings on.
    ///
    /// # Errors
    ///
    /// [`EngineError::Context`] when llama.cpp cannot allocate it.
    pub fn new(model: &'m Model) -> Result<Self, EngineError> {
        let n_ctx = model.context_size();
        // Pooling needs a whole input in one micro-batch, whatever the batch flags say.
        let params = model
            .context_params(n_ctx)
            .with_n_batch(n_ctx)
            .with_n_ubatch(n_ctx)
            .with_embeddings(true)
            .with_pooling_type(pooling(model));
        let ctx = model
            .llama()
            .new_context(backend()?, params)
            .map_err(|source| EngineError::Context {
                context_size: n_ctx,
                source,
            })?;
        Ok(Embedder { model, ctx })
    }

    /// The normalised embedding of each text, and the tokens they took together.
    ///
    /// # Errors
    ///
    /// [`EngineError::EmptyPrompt`], [`EngineError::PromptTooLong`], [`EngineError::Decode`].
    pub fn embed(&mut self, texts: &[String]) -> Result<(Vec<Vec<f32>>, usize), EngineError> {
        let mut vectors = Vec::with_capacity(texts.len());
        let mut tokens_total = 0;
        for text in texts {
            let tokens = self.model.tokenize(text);
            self.model.check_prompt(&tokens)?;
            tokens_total += tokens.len();
            self.ctx.clear_kv_cache();
            let mut batch = LlamaBatch::new(tokens.len(), 1);
            batch
                .add_sequence(&tokens, 0, false)
                .map_err(|e| EngineError::Decode(e.to_string()))?;
            self.ctx
                .decode(&mut batch)
                .map_err(|e| EngineError::Decode(e.to_string()))?;
            let vector = self
                .ctx
                .embeddings_seq_ith(0)
                .map_err(|e| EngineError::Decode(e.to_string()))?;
            vectors.push(normalise(vector));
        }
        Ok((vectors, tokens_total))
    }
}

fn pooling(model: &Model) -> LlamaPoolingType {
    let llama = model.llama();
    let declared = llama
        .meta_val_str("general.architecture")
        .ok()
        .and_then(|arch| llama.meta_val_str(&format!("{arch}.pooling_type")).ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(LlamaPoolingType::from);
    match declared {
        Some(p) if !matches!(p, LlamaPoolingType::Unspecified | LlamaPoolingType::None) => p,
        _ => LlamaPoolingType::Mean,
    }
}

fn normalise(vector: &[f32]) -> Vec<f32> {
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter().map(|x| x / norm).collect()
    } else {
        vector.to_vec()
    }
}
