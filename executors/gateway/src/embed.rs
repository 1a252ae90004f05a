//! Embeddings on a model's engine, which the OpenAI and Ollama routes each shape their own
//! way. Not generation: one request, one answer, no stream, so no driver.

use aistack_engine_api::{EmbedRequest, Mode};
use serde_json::Value;

use crate::error::{ApiError, from_client};
use crate::request::Call;
use crate::state::Shared;

/// Texts to embed from `input`: a string or an array of strings.
pub(crate) fn inputs(value: Option<&Value>) -> Result<Vec<String>, ApiError> {
    match value {
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|v| {
                v.as_str().map(str::to_owned).ok_or_else(|| {
                    ApiError::bad_request("`input` must be a string or an array of strings")
                })
            })
            .collect(),
        _ => Err(ApiError::bad_request(
            "`input` is required: a string or a non-empty array of strings",
        )),
    }
}

/// Embeds `texts` with the model `call` names: a vector for each, and the tokens they took
/// (counted in the metrics under the model's registered name).
pub(crate) async fn embed(
    shared: &Shared,
    call: &Call,
    texts: Vec<String>,
) -> Result<(Vec<Vec<f32>>, u32), ApiError> {
    let lease = call.lease(shared, Mode::Embedding).await?;
    let response = lease
        .client
        .embed(&EmbedRequest { input: texts })
        .await
        .map_err(|e| from_client(&e))?;
    shared
        .metrics
        .prompt_tokens(&lease.entry.config.name, response.prompt_tokens);
    Ok((response.embeddings, response.prompt_tokens))
}
