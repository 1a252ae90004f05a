//! Request and response bodies of the engine socket.
//!
//! Routes: `GET /health` → [`EngineInfo`]; `POST /generate` [`GenerateRequest`] → NDJSON
//! [`Event`]s; `POST /embed` [`EmbedRequest`] → [`EmbedResponse`]; `POST /tokenize`
//! [`TokenizeRequest`] → [`TokenizeResponse`]. A request refused before any work starts gets
//! a non-2xx status with an [`ErrorBody`].

use serde::{Deserialize, Serialize};

/// What an engine serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Text generation.
    #[default]
    Chat,
    /// Embeddings.
    Embedding,
}

/// An engine's answer to `GET /health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineInfo {
    /// The engine process's pid.
    pub pid: u32,
    /// The GGUF file it serves.
    pub model_path: String,
    /// Chat or embedding.
    pub mode: Mode,
    /// Tokens of context each sequence gets.
    pub context_size: u32,
    /// Sequences decoded together.
    pub parallel: u32,
    /// CPU threads.
    pub threads: u32,
    /// ggml's CPU feature line, e.g. `CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | ...`.
    pub cpu_features: String,
    /// SIMD features this CPU has that the build does not use.
    pub unused_cpu_features: Vec<String>,
    /// Bytes the weights, KV cache and compute buffers take, as estimated at load.
    pub memory_bytes: u64,
    /// Length of an embedding vector.
    pub embedding_size: u32,
    /// The context the model was trained with.
    pub trained_context: u32,
    /// Whether the chat template renders `tools` itself.
    pub template_supports_tools: bool,
}

/// A message of a chat, dialect-neutral.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Message {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text.
    #[serde(default)]
    pub content: String,
    /// Tool calls an assistant message made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// For a `tool` message: the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// For a `tool` message: the tool's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Message {
    /// A plain text message.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
            ..Message::default()
        }
    }
}

/// A function the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    /// The function name.
    pub name: String,
    /// What it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON Schema of its arguments.
    #[serde(default = "empty_object")]
    pub parameters: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::json!({"type": "object", "properties": {}})
}

/// One call of a tool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// An id the answer refers back to.
    pub id: String,
    /// The function name.
    pub name: String,
    /// The arguments, as a JSON object in text.
    pub arguments: String,
}

/// What to generate from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Input {
    /// Raw text, tokenised as is (special tokens parsed).
    Text {
        /// The prompt.
        prompt: String,
    },
    /// A chat, rendered through the model's chat template.
    Chat {
        /// The messages.
        messages: Vec<Message>,
        /// Tools offered to the model.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tools: Vec<Tool>,
    },
}

/// Constraints on the output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Format {
    /// Any JSON object.
    JsonObject,
    /// JSON matching this schema.
    JsonSchema {
        /// The schema.
        schema: serde_json::Value,
    },
    /// At least one call of one of these tools, in the tool-call syntax of [`crate::tools`].
    ToolCall {
        /// The tools that may be called (all offered ones when `tool_choice` is `required`).
        names: Vec<String>,
    },
}

/// Sampling parameters; `None` takes llama-server's default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Sampling {
    /// 0: greedy. Default 0.8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Default 0.95.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// Default 40.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<i32>,
    /// Default 0.05.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f32>,
    /// Default: random.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u32>,
    /// Default 1 (off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_penalty: Option<f32>,
    /// Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f32>,
    /// Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f32>,
}

/// `POST /generate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    /// The prompt or chat.
    pub input: Input,
    /// Sampling.
    #[serde(default)]
    pub sampling: Sampling,
    /// The most tokens to generate; `None`: until the context is full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Generation ends before any of these strings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// Output constraint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// End of generation token or a stop string.
    Stop,
    /// `max_tokens` or the context is full.
    Length,
}

/// Token counts and speed of one generation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: u32,
    /// Leading prompt tokens the engine found in its cache and did not evaluate again.
    #[serde(default)]
    pub cached_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
    /// Milliseconds from the request reaching the engine to the first token.
    pub time_to_first_token_ms: f64,
    /// Milliseconds spent evaluating the prompt.
    pub prompt_ms: f64,
    /// Milliseconds spent generating after the first token.
    pub decode_ms: f64,
}

/// One line of a `/generate` stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// More text (whole UTF-8 characters, never part of a stop string).
    Text {
        /// The text.
        text: String,
    },
    /// The end.
    Done {
        /// Why.
        finish_reason: FinishReason,
        /// Counts.
        usage: Usage,
    },
    /// Generation failed after it started.
    Error {
        /// What happened.
        error: ErrorBody,
    },
}

/// `POST /embed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbedRequest {
    /// Texts to embed.
    pub input: Vec<String>,
}

/// The answer to `/embed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbedResponse {
    /// One normalised vector per input, in order.
    pub embeddings: Vec<Vec<f32>>,
    /// Tokens over all inputs.
    pub prompt_tokens: u32,
}

/// `POST /tokenize`: count what an input costs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizeRequest {
    /// The prompt or chat, rendered as `/generate` would.
    pub input: Input,
}

/// The answer to `/tokenize`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizeResponse {
    /// Tokens the input takes.
    pub tokens: u32,
}

/// Why a request failed; the gateway turns it into each dialect's error shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request is malformed or asks for something impossible (400).
    InvalidRequest,
    /// The prompt does not fit in the context (400).
    PromptTooLong,
    /// This engine does not do that, e.g. embeddings from a chat engine (400).
    Unsupported,
    /// Too many requests waiting (503).
    Overloaded,
    /// The engine failed (500).
    Internal,
}

impl ErrorKind {
    /// The HTTP status code.
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::InvalidRequest | ErrorKind::PromptTooLong | ErrorKind::Unsupported => 400,
            ErrorKind::Overloaded => 503,
            ErrorKind::Internal => 500,
        }
    }
}

/// An error from the engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The class.
    pub kind: ErrorKind,
    /// One line, capitalised (DESIGN §9).
    pub message: String,
    /// What to do about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

impl ErrorBody {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ErrorBody {
            kind,
            message: message.into(),
            help: None,
        }
    }

    /// With a help line.
    #[must_use]
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}
