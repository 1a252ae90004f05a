//! The engine's errors. Messages follow DESIGN §9: capitalised, one line, no trailing period,
//! the fix in [`EngineError::help`], source errors chained rather than repeated inline.

use std::path::PathBuf;

/// Everything that can go wrong loading a model, rendering a chat or generating.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The model file is not there.
    #[error("Model file `{}` does not exist", path.display())]
    ModelNotFound {
        /// The path that was given.
        path: PathBuf,
    },
    /// llama.cpp could not be initialised.
    #[error("Could not initialise llama.cpp")]
    Backend(#[source] llama_cpp_2::LlamaCppError),
    /// llama.cpp refused the model file.
    #[error("Could not load the model `{}`", path.display())]
    Load {
        /// The model file.
        path: PathBuf,
        /// What llama.cpp said.
        #[source]
        source: llama_cpp_2::LlamaModelLoadError,
    },
    /// A context (KV cache and compute buffers) could not be created.
    #[error("Could not create a llama.cpp context of {context_size} tokens")]
    Context {
        /// The requested context size.
        context_size: u32,
        /// What llama.cpp said.
        #[source]
        source: llama_cpp_2::LlamaContextLoadError,
    },
    /// The prompt tokenised to nothing.
    #[error("The prompt is empty")]
    EmptyPrompt,
    /// The prompt does not fit in the context. Worded as Anthropic's API words it, which
    /// Claude Code reads as context overflow.
    #[error("The prompt is too long: {tokens} tokens > {context_size}, the context size")]
    PromptTooLong {
        /// Tokens in the prompt.
        tokens: usize,
        /// The context size.
        context_size: u32,
    },
    /// llama.cpp failed to evaluate a batch (its message: the error is shared by every
    /// generation in the batch).
    #[error("llama.cpp could not evaluate the batch: {0}")]
    Decode(String),
    /// A grammar or JSON schema could not be turned into a sampler.
    #[error("The output constraint is not valid: {0}")]
    Grammar(String),
    /// This engine does not serve embeddings, or serves only embeddings.
    #[error("This model is served in `{mode}` mode")]
    WrongMode {
        /// The mode it is served in.
        mode: &'static str,
    },
    /// The chat template failed to parse or render.
    #[error("Could not render the model's chat template")]
    Template(#[source] minijinja::Error),
}

impl EngineError {
    /// The `help:` line: what the user should do next.
    #[must_use]
    pub fn help(&self) -> Option<String> {
        Some(match self {
            Self::ModelNotFound { .. } => {
                "Check the path, or pull the model again with `aistack pull`".to_owned()
            }
            Self::Backend(_) => {
                "Set `AISTACK_ENGINE_LOG=1` to see llama.cpp's own log, then report the problem"
                    .to_owned()
            }
            Self::Load { .. } => "Check that the file is a complete GGUF model this llama.cpp \
                                  supports; pull it again if the download was cut short"
                .to_owned(),
            Self::Context { .. } => {
                "Lower `context_size`: the KV cache for this context may not fit in memory"
                    .to_owned()
            }
            Self::EmptyPrompt => "Send a prompt or at least one message with content".to_owned(),
            Self::PromptTooLong { tokens, .. } => {
                format!("Raise `context_size` to more than {tokens}, or shorten the prompt")
            }
            Self::Decode(_) => "Raise `context_size` or lower `parallel`; set \
                                `AISTACK_ENGINE_LOG=1` to see llama.cpp's own log"
                .to_owned(),
            Self::Grammar(_) => "Check the JSON schema in `response_format`, or the tool \
                                 parameters: they must be valid JSON Schema"
                .to_owned(),
            Self::WrongMode { mode } => format!(
                "Set `mode: {}` on the model in aistack.yaml to serve this API, or use a model \
                 served in that mode",
                if *mode == "chat" { "embedding" } else { "chat" }
            ),
            Self::Template(_) => "The chat template rejected these messages or uses a feature \
                                  minijinja lacks; check the roles and their order, or supply a \
                                  `chat.template.jinja`"
                .to_owned(),
        })
    }
}
