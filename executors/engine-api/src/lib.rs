//! The protocol between the gateway and an engine process (DESIGN §6): HTTP/1.1 with JSON
//! bodies over the engine's unix socket. Generation streams NDJSON [`Event`]s. Dialects
//! (OpenAI, Ollama, Anthropic) are the gateway's business; this protocol is dialect-neutral.

#![warn(missing_docs)]

mod client;
mod protocol;
pub mod tools;

pub use client::{ClientError, EngineClient, EventStream};
pub use protocol::*;
