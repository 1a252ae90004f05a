//! `aistack run MODEL [PROMPT]`: chat with one of the project's models through its gateway,
//! as `docker model run` and `ollama run` do.

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;

use aistack_daemon::client::{Client, ClientError};
use aistack_spec::values::ModelMode;
use serde_json::{Value, json};

use super::home;
use crate::load::SpecArgs;
use crate::report::{Failure, Report};

/// `aistack run`: one reply to `prompt` (`-`, or no prompt with stdin not a terminal, reads
/// the prompt from stdin), else an interactive conversation that keeps its history until
/// `/bye` or end of input.
pub async fn run(
    spec: &SpecArgs,
    model: &str,
    prompt: Option<String>,
) -> Result<ExitCode, Failure> {
    let home = home()?;
    let loaded = spec.load()?;
    let s = &loaded.document.spec;
    let Some(declared) = s.models.get(model) else {
        let names: Vec<String> = s.models.keys().map(|k| format!("`{k}`")).collect();
        let help = if names.is_empty() {
            "Declare it under `models:` in the spec and run `aistack up`".to_owned()
        } else {
            format!("Use one of {} (the keys under `models:`)", names.join(", "))
        };
        return Err(Report::new(
            format!("Model `{model}` is not in project `{}`", loaded.project),
            Some(help),
        )
        .into());
    };
    if declared.mode != ModelMode::Chat {
        return Err(Report::new(
            format!(
                "Model `{model}` is a `{}` model, not a chat model",
                declared.mode
            ),
            Some("Call it through the gateway's API (`/v1/embeddings`) instead".to_owned()),
        )
        .into());
    }
    let not_running = || {
        Report::new(
            format!("The gateway of project `{}` is not running", loaded.project),
            Some("Run `aistack up` first".to_owned()),
        )
    };
    let status = match Client::new(&home.socket()).status(&loaded.project).await {
        Ok(status) => status,
        Err(ClientError::Connect { .. }) => return Err(not_running().into()),
        Err(e) => return Err(e.into()),
    };
    let Some(url) = status.gateway else {
        return Err(not_running().into());
    };
    let key = match &s.gateway.api_key_env {
        Some(name) => Some(std::env::var(name).map_err(|_| {
            Report::new(
                format!("`{name}`, named by `gateway.api_key_env`, is not set"),
                Some(format!("Export `{name}` with the gateway's bearer token")),
            )
        })?),
        None => None,
    };
    // reqwest is built without a default TLS crypto provider (see the store's registry
    // client); the gateway is plain HTTP, but a client cannot be built without one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder().no_proxy().build().map_err(|e| {
        Report::new(
            format!("Cannot make an HTTP client: {e}"),
            Some("This is a bug; please report it".to_owned()),
        )
    })?;
    let chat = Chat {
        http,
        url: format!("{url}/v1/chat/completions"),
        model: model.to_owned(),
        key,
    };
    let stdin_prompt = || -> Result<String, Failure> {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map_err(|e| {
            Report::new(
                format!("Cannot read the prompt from stdin: {e}"),
                Some("Pass the prompt as an argument instead".to_owned()),
            )
        })?;
        Ok(text)
    };
    let prompt = match prompt.as_deref() {
        Some("-") => Some(stdin_prompt()?),
        Some(text) => Some(text.to_owned()),
        None if !std::io::stdin().is_terminal() => Some(stdin_prompt()?),
        None => None,
    };
    match prompt {
        Some(prompt) => {
            chat.reply(&[json!({"role": "user", "content": prompt})])
                .await?;
        }
        None => chat.converse().await?,
    }
    Ok(ExitCode::SUCCESS)
}

struct Chat {
    http: reqwest::Client,
    url: String,
    model: String,
    key: Option<String>,
}

impl Chat {
    /// Reads a line at a time, keeping the conversation, until `/bye` or end of input.
    async fn converse(&self) -> Result<(), Failure> {
        println!("Chatting with `{}`; `/bye` or Ctrl-D ends", self.model);
        let mut messages: Vec<Value> = Vec::new();
        loop {
            print!(">>> ");
            let _ = std::io::stdout().flush();
            // A blocking read off the async threads (tokio's stdin is not built here).
            let read = tokio::task::spawn_blocking(|| {
                let mut line = String::new();
                let n = std::io::stdin().read_line(&mut line)?;
                Ok::<_, std::io::Error>((n > 0).then_some(line))
            });
            let Ok(Ok(Some(line))) = read.await else {
                println!();
                return Ok(());
            };
            let line = line.trim();
            if line == "/bye" {
                return Ok(());
            }
            if line.is_empty() {
                continue;
            }
            messages.push(json!({"role": "user", "content": line}));
            match self.reply(&messages).await {
                Ok(answer) => messages.push(json!({"role": "assistant", "content": answer})),
                Err(failure) => {
                    // The conversation goes on without the turn that failed.
                    messages.pop();
                    failure.eprint();
                }
            }
        }
    }

    /// Streams the model's reply to `messages` to stdout and returns it.
    async fn reply(&self, messages: &[Value]) -> Result<String, Failure> {
        let body = json!({"model": self.model, "messages": messages, "stream": true});
        let mut request = (self.http.post(&self.url))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(key) = &self.key {
            request = request.bearer_auth(key);
        }
        let unreachable = |e: reqwest::Error| {
            Report::new(
                format!("Cannot reach the gateway at `{}`: {e}", self.url),
                Some("Run `aistack up`; `aistack logs` shows what the daemon saw".to_owned()),
            )
        };
        let mut response = request.send().await.map_err(unreachable)?;
        if !response.status().is_success() {
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| format!("HTTP {}", status.as_u16()));
            return Err(Report::new(
                format!("The gateway refused the request: {message}"),
                Some("`aistack status` shows the model; `aistack logs` the details".to_owned()),
            )
            .into());
        }
        let mut answer = String::new();
        let mut pending: Vec<u8> = Vec::new();
        let mut stdout = std::io::stdout();
        'stream: while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                let Some(data) = line.trim().strip_prefix("data:") else {
                    continue;
                };
                let data = data.trim();
                if data == "[DONE]" {
                    break 'stream;
                }
                let Ok(event) = serde_json::from_str::<Value>(data) else {
                    continue;
                };
                if let Some(message) = event["error"]["message"].as_str() {
                    let _ = writeln!(stdout);
                    return Err(Report::new(
                        format!("The model stopped with an error: {message}"),
                        Some("`aistack logs` shows the engine's side".to_owned()),
                    )
                    .into());
                }
                if let Some(text) = event["choices"][0]["delta"]["content"].as_str() {
                    answer.push_str(text);
                    if stdout
                        .write_all(text.as_bytes())
                        .and_then(|()| stdout.flush())
                        .is_err()
                    {
                        // The reader went away (`aistack run ... | head`): stop asking.
                        return Ok(answer);
                    }
                }
            }
        }
        let _ = writeln!(stdout);
        Ok(answer)
    }
}
