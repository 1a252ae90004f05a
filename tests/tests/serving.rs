//! The model gateway end to end: `aistack up` serves the real SmolLM2 GGUF through engine
//! processes, and clients nobody here wrote (the `openai`, `ollama`, `anthropic` and
//! `google-genai` Python packages, curl) talk to it. One thread per engine: the CI machine
//! has two cores.

use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use aistack_tests::{TestEnv, terminate, wait_for, wait_gone};
use rustix::process::Signal;
use serde_json::{Value, json};

const SPEC: &str = "version: 1
name: serving
engines:
  llama.cpp: { threads: 1 }
models:
  chat: { source: ./models/smollm2.gguf, context_size: 2048, parallel: 4 }
  embed: { source: ./models/smollm2.gguf, mode: embedding, context_size: 512 }
";

/// A project serving `spec` (with the test model linked), converged.
fn serve(spec: &str) -> TestEnv {
    let env = TestEnv::new();
    env.write("aistack.yaml", &env.spec(spec));
    env.link_model("smollm2.gguf");
    env.ok(&["up", "-q"]);
    env
}

/// An HTTP exchange with curl: status code and body.
fn curl(
    env: &TestEnv,
    method: &str,
    path: &str,
    body: Option<&Value>,
    headers: &[&str],
) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "-N",
        "--max-time",
        "60",
        "-X",
        method,
        "-w",
        "\n%{http_code}",
    ]);
    for header in headers {
        cmd.args(["-H", header]);
    }
    if let Some(body) = body {
        cmd.args([
            "-H",
            "content-type: application/json",
            "--data-binary",
            &body.to_string(),
        ]);
    }
    cmd.arg(format!("http://127.0.0.1:{}{path}", env.gateway_port()));
    let out = cmd.output().expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn post(env: &TestEnv, path: &str, body: &Value) -> (u16, Value) {
    let (code, text) = curl(env, "POST", path, Some(body), &[]);
    (
        code,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")),
    )
}

fn chat_request(question: &str, max_tokens: u32) -> Value {
    json!({"model": "chat", "temperature": 0, "max_tokens": max_tokens,
           "messages": [{"role": "user", "content": question}]})
}

/// The `data:` payloads of an SSE body, asserting the framing.
fn sse_events(body: &str) -> Vec<String> {
    let frames: Vec<&str> = body
        .split("\n\n")
        .filter(|f| !f.trim().is_empty())
        .collect();
    frames
        .iter()
        .map(|f| {
            f.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not an SSE data frame: {f:?}"))
                .to_owned()
        })
        .collect()
}

fn engine_pid(env: &TestEnv, model: &str) -> Option<u64> {
    let status = env.status();
    status["models"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == model)?["engine"]["pid"]
        .as_u64()
}

fn python() -> String {
    std::env::var("AISTACK_PYTHON").unwrap_or_else(|_| {
        panic!("AISTACK_PYTHON must name a Python with the `openai`, `ollama`, `anthropic` and `google-genai` packages: run scripts/test, which sets it up")
    })
}

#[test]
fn openai_and_ollama_clients_chat_stream_embed_and_list() {
    let env = serve(SPEC);
    let script = aistack_tests::repo_root().join("tests/python/clients.py");
    let out = aistack_tests::succeed(
        Command::new(python())
            .arg(script)
            .arg(format!("127.0.0.1:{}", env.gateway_port()))
            .args(["chat", "embed"]),
        "tests/python/clients.py",
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["openai_chat"]["finish_reason"], "length");
    assert_eq!(r["openai_chat"]["completion_tokens"], 12);
    assert!(!r["openai_chat"]["text"].as_str().unwrap().is_empty());
    assert_eq!(
        r["openai_stream"]["text"], r["openai_chat"]["text"],
        "greedy stream = greedy reply"
    );
    assert!(r["openai_stream"]["chunks"].as_u64().unwrap() > 3);
    assert_eq!(r["openai_completion"]["tokens"], 5);
    assert_eq!(r["openai_embeddings"]["count"], 2);
    assert_eq!(r["openai_embeddings"]["dims"], 576);
    assert!((r["openai_embeddings"]["norm"].as_f64().unwrap() - 1.0).abs() < 1e-3);
    assert_eq!(r["openai_models"], json!(["chat", "embed"]));
    assert_eq!(
        r["ollama_chat"]["text"], r["openai_chat"]["text"],
        "same model, same greedy text"
    );
    assert_eq!(r["ollama_chat"]["eval_count"], 12);
    assert_eq!(r["ollama_stream"]["text"], r["ollama_chat"]["text"]);
    assert_eq!(r["ollama_generate"]["done_reason"], "length");
    assert_eq!(r["ollama_embed"]["dims"], 576);
    assert_eq!(r["ollama_list"], json!(["chat:latest", "embed:latest"]));
    assert!(
        r["ollama_show"]["capabilities"]
            .as_array()
            .unwrap()
            .contains(&json!("completion"))
    );
    assert_eq!(r["ollama_ps"], json!(["chat:latest", "embed:latest"]));

    // curl: SSE framing, the usage chunk, and `[DONE]` last.
    let mut streaming = chat_request("Name a colour.", 8);
    streaming["stream"] = json!(true);
    streaming["stream_options"] = json!({"include_usage": true});
    let (code, body) = curl(
        &env,
        "POST",
        "/engines/llama.cpp/v1/chat/completions",
        Some(&streaming),
        &[],
    );
    assert_eq!(code, 200);
    let events = sse_events(&body);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    let usage = &chunks.last().unwrap()["usage"];
    assert!(usage["completion_tokens"].as_u64().unwrap() <= 8, "{usage}");
    // Ollama's NDJSON: every line an object, the last one `done`.
    let (code, body) = curl(
        &env,
        "POST",
        "/api/generate",
        Some(&json!({"model": "chat", "prompt": "Hi", "options": {"num_predict": 4}})),
        &[],
    );
    assert_eq!(code, 200);
    let lines: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.last().unwrap()["done"], true);
    assert_eq!(lines.last().unwrap()["eval_count"], 4);

    // Anthropic: a message, its streaming events, and token counting.
    let message =
        json!({"model": "chat", "max_tokens": 6, "messages": [{"role": "user", "content": "Hi"}]});
    let (code, reply) = post(&env, "/v1/messages", &message);
    assert_eq!(code, 200, "{reply}");
    assert_eq!(reply["stop_reason"], "max_tokens");
    assert_eq!(reply["usage"]["output_tokens"], 6);
    let mut stream = message.clone();
    stream["stream"] = json!(true);
    let (_, body) = curl(&env, "POST", "/v1/messages", Some(&stream), &[]);
    let names: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(names.last(), Some(&"message_stop"));
    assert!(names.contains(&"content_block_delta"));
    let (code, counted) = post(&env, "/v1/messages/count_tokens", &message);
    assert_eq!(code, 200);
    // Anthropic counts prompt tokens read from the cache apart from `input_tokens`.
    let usage = &reply["usage"];
    assert_eq!(
        counted["input_tokens"].as_u64().unwrap(),
        usage["input_tokens"].as_u64().unwrap()
            + usage["cache_read_input_tokens"].as_u64().unwrap()
    );

    let (code, metrics) = curl(&env, "GET", "/metrics", None, &[]);
    assert_eq!(code, 200);
    for name in [
        "aistack_requests_total{model=\"chat\",api=\"openai\",code=\"200\"}",
        "aistack_completion_tokens_total{model=\"chat\"}",
        "aistack_time_to_first_token_seconds_count{model=\"chat\"}",
        "aistack_queue_depth{model=\"chat\"} 0",
        "aistack_models_loaded 2",
        "aistack_model_memory_bytes{model=\"chat\"}",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }

    let chat_pid = engine_pid(&env, "chat").expect("chat is loaded");
    env.ok(&["down"]);
    assert!(
        wait_gone(chat_pid as i32, Duration::from_secs(10)),
        "down stops the engine"
    );
    let (code, _) = curl(&env, "GET", "/v1/models", None, &[]);
    assert_eq!(code, 0, "down closes the listener");
}

/// What Claude Code sends, through the official `anthropic` client: blocks the engine cannot
/// read are dropped (the answer is the one without them), server tools stay with Anthropic,
/// the beta endpoint answers, and a forced tool call comes back as `tool_use`.
#[test]
fn anthropic_client_sends_what_claude_code_sends() {
    let env = serve(SPEC);
    let script = aistack_tests::repo_root().join("tests/python/anthropic_client.py");
    let out = aistack_tests::succeed(
        Command::new(python())
            .arg(script)
            .arg(format!("127.0.0.1:{}", env.gateway_port()))
            .arg("chat"),
        "tests/python/anthropic_client.py",
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let plain = &r["plain"]["text"];
    assert!(!plain.as_str().unwrap().is_empty(), "{r}");
    let stop = &r["plain"]["stop_reason"];
    assert!(stop == "end_turn" || stop == "max_tokens", "{r}");
    let tokens = r["plain"]["output_tokens"].as_u64().unwrap();
    assert!((1..=12).contains(&tokens), "{r}");
    assert_eq!(
        &r["with_image"], plain,
        "image dropped, system message read"
    );
    assert_eq!(r["thought"], r["history"], "thinking blocks dropped");
    assert_eq!(&r["stream"]["text"], plain, "greedy stream = greedy reply");
    assert_eq!(&r["stream"]["final_text"], plain);
    assert_eq!(&r["stream"]["stop_reason"], stop);
    assert_eq!(&r["beta"], plain, "`?beta=true` is the same route");

    assert_eq!(r["tool"]["stop_reason"], "tool_use", "{r}");
    assert_eq!(r["tool"]["name"], "get_weather");
    assert!(r["tool"]["input"]["city"].is_string(), "{r}");
    assert_eq!(r["tool_stream"]["stop_reason"], "tool_use");
    assert_eq!(
        r["tool_stream"]["input"], r["tool"]["input"],
        "streamed call = whole call"
    );
    // Claude Code drops a `tool_use` whose id an earlier turn used.
    assert_ne!(
        r["tool_stream"]["id"], r["tool"]["id"],
        "each reply's calls have ids of their own"
    );
    assert!(
        r["tool"]["id"].as_str().unwrap().starts_with("toolu_"),
        "{r}"
    );
    assert!(
        !r["tool_result"]["text"].as_str().unwrap().is_empty(),
        "the model answers from the tool's result: {r}"
    );
    assert_eq!(
        r["count"], r["plain_input"],
        "count_tokens = the prompt the reply read"
    );
}

/// The events of a named-SSE body (`event:` then `data:`), each name checked against its
/// payload's `type`.
fn named_sse_events(body: &str) -> Vec<Value> {
    body.split("\n\n")
        .filter(|f| !f.trim().is_empty())
        .map(|frame| {
            let (name, data) = frame
                .strip_prefix("event: ")
                .and_then(|f| f.split_once("\ndata: "))
                .unwrap_or_else(|| panic!("not a named SSE frame: {frame:?}"));
            let event: Value = serde_json::from_str(data).unwrap();
            assert_eq!(event["type"], name, "{frame}");
            event
        })
        .collect()
}

#[test]
fn the_openai_client_creates_streams_and_calls_tools_through_the_responses_api() {
    let env = serve(SPEC);
    let script = aistack_tests::repo_root().join("tests/python/responses.py");
    let out = aistack_tests::succeed(
        Command::new(python())
            .arg(script)
            .arg(format!("127.0.0.1:{}", env.gateway_port()))
            .arg("chat"),
        "tests/python/responses.py",
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();

    let create = &r["create"];
    assert!(
        create["id"].as_str().unwrap().starts_with("resp_"),
        "{create}"
    );
    assert_eq!(create["types"], json!(["message"]));
    assert_eq!(create["instructions"], "Answer in one short sentence.");
    assert!(!create["text"].as_str().unwrap().is_empty(), "{create}");
    let output_tokens = create["output_tokens"].as_u64().unwrap();
    match create["status"].as_str() {
        Some("completed") => assert!(output_tokens <= 12, "{create}"),
        Some("incomplete") => {
            assert_eq!(create["incomplete_reason"], "max_output_tokens");
            assert_eq!(output_tokens, 12);
        }
        _ => panic!("{create}"),
    }

    let stream = &r["stream"];
    assert_eq!(
        stream["text"], create["text"],
        "greedy stream = greedy reply"
    );
    assert_eq!(stream["final_text"], stream["text"]);
    assert_eq!(stream["final_status"], create["status"]);
    assert_eq!(stream["output_tokens"], create["output_tokens"]);
    let events = stream["events"].as_array().unwrap();
    for (n, event) in events.iter().enumerate() {
        assert_eq!(event["sequence_number"], n, "{event}");
    }
    let names: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    let deltas = names
        .iter()
        .filter(|&&n| n == "response.output_text.delta")
        .count();
    assert!(deltas > 1, "{names:?}");
    let last = if create["status"] == "completed" {
        "response.completed"
    } else {
        "response.incomplete"
    };
    let mut expected = vec![
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ];
    expected.extend(std::iter::repeat_n("response.output_text.delta", deltas));
    expected.extend([
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        last,
    ]);
    assert_eq!(names, expected);

    // A required function call, streamed through the SDK's helper.
    let tool = &r["tool_stream"];
    assert_eq!(tool["status"], "completed", "{tool}");
    assert_eq!(tool["calls"][0]["name"], "get_weather", "{tool}");
    assert!(tool["calls"][0]["arguments"]["city"].is_string(), "{tool}");
    let names: Vec<&str> = (tool["events"].as_array().unwrap().iter())
        .map(|e| e.as_str().unwrap())
        .collect();
    for name in [
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
    ] {
        assert!(names.contains(&name), "{names:?}");
    }
    assert_eq!(names.last(), Some(&"response.completed"));

    // The call's output sent back: a second turn that reads the longer history.
    let turn = &r["tool_turn"];
    assert_eq!(turn["status"], "completed", "{turn}");
    assert_eq!(turn["name"], "get_weather");
    assert!(turn["arguments"]["city"].is_string(), "{turn}");
    assert!(turn["call_id"].as_str().unwrap().starts_with("call_"));
    assert!(
        !turn["second_types"].as_array().unwrap().is_empty(),
        "{turn}"
    );
    assert!(
        turn["second_input_tokens"].as_u64() > turn["first_input_tokens"].as_u64(),
        "{turn}"
    );

    assert_eq!(
        r["namespace"],
        json!({"namespace": "weather", "name": "forecast"})
    );

    // A JSON schema holds.
    let schema = &r["schema"];
    let text = schema["text"].as_str().unwrap();
    let city: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {schema}"));
    assert!(
        city["name"].is_string() && city["population"].is_i64(),
        "{city}"
    );

    // Reasoning, includes, storing and hosted tools are ignored: the same greedy answer.
    let ignored = &r["ignored"];
    assert_eq!(ignored["text"], create["text"], "{ignored}");
    assert_eq!(ignored["status"], create["status"]);
    assert_eq!(ignored["store"], false, "nothing is stored");

    // curl: Docker Model Runner's routes, and the raw events, each named by its type.
    let request = json!({"model": "chat", "input": "Hi", "max_output_tokens": 4, "stream": true});
    for path in ["/engines/v1/responses", "/engines/llama.cpp/v1/responses"] {
        let (code, body) = curl(&env, "POST", path, Some(&request), &[]);
        assert_eq!(code, 200, "{body}");
        let events = named_sse_events(&body);
        assert_eq!(events[0]["type"], "response.created");
        let done = events.last().unwrap();
        assert_eq!(done["type"], "response.incomplete", "{done}");
        assert_eq!(done["response"]["usage"]["output_tokens"], 4);
    }

    // Mistakes get OpenAI's error shape, with the fix.
    let (code, body) = post(&env, "/v1/responses", &json!({"model": "chat", "input": 3}));
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("help:"),
        "{body}"
    );
    let (code, body) = post(
        &env,
        "/v1/responses",
        &json!({"model": "nope", "input": "Hi"}),
    );
    assert_eq!(code, 404, "{body}");
    assert_eq!(body["error"]["code"], "model_not_found");
}

/// Google's `google-genai` SDK on the Gemini routes (`v1`, its default, and `v1beta`, which
/// Gemini CLI speaks): a reply whole and streamed, a schema through the grammar, a forced
/// function call and the turn that answers it, token counts, the listing and embeddings;
/// then the bare `alt=sse` framing with curl.
#[test]
fn the_google_genai_sdk_generates_streams_calls_functions_and_counts() {
    let env = serve(SPEC);
    let out = aistack_tests::succeed(
        Command::new(python())
            .arg(aistack_tests::repo_root().join("tests/python/gemini.py"))
            .arg(format!("127.0.0.1:{}", env.gateway_port()))
            .args(["any-key", "chat", "embed"]),
        "tests/python/gemini.py",
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let generated = &r["generate"];
    assert_eq!(generated["finish_reason"], "MAX_TOKENS", "{r}");
    assert_eq!(generated["candidates_tokens"], 12);
    assert_eq!(
        generated["total_tokens"].as_u64().unwrap(),
        generated["prompt_tokens"].as_u64().unwrap() + 12
    );
    assert_eq!(generated["role"], "model");
    assert_eq!(generated["model_version"], "chat");
    assert_eq!(generated["has_response_id"], true);
    assert!(!generated["text"].as_str().unwrap().is_empty());
    assert_eq!(r["v1beta"], generated["text"], "`v1beta` is `v1`");
    let streamed = &r["stream"];
    assert_eq!(
        streamed["text"], generated["text"],
        "greedy stream = greedy reply"
    );
    assert!(streamed["chunks"].as_u64().unwrap() > 3, "{streamed}");
    assert_eq!(streamed["finish_reason"], "MAX_TOKENS");
    assert_eq!(streamed["candidates_tokens"], 12);
    assert_eq!(r["count_tokens"], generated["prompt_tokens"], "{r}");
    assert_eq!(r["models"], json!(["models/chat", "models/embed"]));
    assert_eq!(r["model"]["name"], "models/chat");
    assert_eq!(r["model"]["input_token_limit"], 2048);
    assert!(
        r["json"]["name"].is_string() && r["json"]["population"].is_i64(),
        "{r}"
    );
    assert_eq!(r["function_call"]["name"], "get_weather", "{r}");
    assert!(r["function_call"]["args"]["city"].is_string(), "{r}");
    assert_eq!(r["function_call"]["finish_reason"], "STOP");
    assert!(r["function_answer"]["parts"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(r["embed"], json!({"count": 2, "dims": 576}));
    assert_eq!(r["unknown_model"]["code"], 404, "{r}");
    assert_eq!(r["unknown_model"]["status"], "NOT_FOUND");

    // Every frame JSON, as the SDKs read them: no `[DONE]`, the last with the reason.
    let request = json!({"contents": [{"parts": [{"text": "Hi"}]}],
                         "generationConfig": {"maxOutputTokens": 4}});
    let path = "/v1beta/models/chat:streamGenerateContent?alt=sse";
    let (code, body) = curl(&env, "POST", path, Some(&request), &[]);
    assert_eq!(code, 200, "{body}");
    let frames: Vec<Value> = (sse_events(&body).iter())
        .map(|e| serde_json::from_str(e).unwrap_or_else(|e| panic!("{e}: {body}")))
        .collect();
    let last = frames.last().unwrap();
    assert_eq!(
        last["candidates"][0]["finishReason"], "MAX_TOKENS",
        "{body}"
    );
    assert_eq!(last["usageMetadata"]["candidatesTokenCount"], 4);
    let path = "/v1beta/models/chat:streamGenerateContent";
    let (code, refused) = post(&env, path, &request);
    assert_eq!(
        (code, &refused["error"]["status"]),
        (400, &json!("INVALID_ARGUMENT"))
    );
    env.ok(&["down"]);
}

#[test]
fn bad_requests_get_their_dialects_errors_and_the_model_keeps_serving() {
    let env = serve(SPEC);
    let openai_error = |code: u16, body: &Value, status: u16| {
        assert_eq!(code, status, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        assert!(body["error"]["type"].is_string(), "{body}");
    };
    let (code, text) = curl(
        &env,
        "POST",
        "/v1/chat/completions",
        None,
        &["content-type: application/json"],
    );
    openai_error(code, &serde_json::from_str(&text).unwrap(), 400);
    let (code, body) = post(
        &env,
        "/v1/chat/completions",
        &json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
    );
    openai_error(code, &body, 404);
    assert!(
        body["error"]["message"].as_str().unwrap().contains("chat"),
        "lists the models: {body}"
    );
    let (code, body) = post(&env, "/v1/chat/completions", &json!({"model": "chat"}));
    openai_error(code, &body, 400);
    let (code, body) = post(
        &env,
        "/v1/chat/completions",
        &chat_request(&"word ".repeat(3000), 4),
    );
    openai_error(code, &body, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("context_size"),
        "{body}"
    );
    let (code, body) = post(
        &env,
        "/v1/chat/completions",
        &chat_request("Hi", 0)
            .as_object()
            .map(|o| {
                let mut o = o.clone();
                o.insert("max_tokens".into(), json!(-3));
                Value::Object(o)
            })
            .unwrap(),
    );
    openai_error(code, &body, 400);
    let mut bad_schema = chat_request("Hi", 4);
    bad_schema["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}}});
    let (code, body) = post(&env, "/v1/chat/completions", &bad_schema);
    openai_error(code, &body, 400);
    let (code, body) = post(&env, "/api/chat", &json!({"model": "nope", "messages": []}));
    assert_eq!(code, 404);
    assert!(body["error"].is_string(), "Ollama's shape: {body}");
    let (code, body) = post(
        &env,
        "/v1/messages",
        &json!({"model": "chat", "messages": [{"role": "user", "content": "x"}]}),
    );
    assert_eq!(code, 400);
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "invalid_request_error");

    // Still serving, and greedy output is the same each time.
    let (code, first) = post(
        &env,
        "/v1/chat/completions",
        &chat_request("What is 2 + 2?", 10),
    );
    assert_eq!(code, 200, "{first}");
    let (_, second) = post(
        &env,
        "/v1/chat/completions",
        &chat_request("What is 2 + 2?", 10),
    );
    assert_eq!(
        first["choices"][0]["message"]["content"],
        second["choices"][0]["message"]["content"]
    );

    // Output constraints: a named tool is called with schema-valid arguments; a JSON schema holds.
    let mut tool = chat_request("What is the weather in Paris?", 60);
    tool["tools"] = json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    tool["tool_choice"] = json!({"type": "function", "function": {"name": "get_weather"}});
    let (code, body) = post(&env, "/v1/chat/completions", &tool);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls", "{body}");
    let call = &body["choices"][0]["message"]["tool_calls"][0]["function"];
    assert_eq!(call["name"], "get_weather");
    let arguments: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
    assert!(arguments["city"].is_string(), "{arguments}");
    let anthropic_tool = json!({"model": "chat", "max_tokens": 60,
        "messages": [{"role": "user", "content": "What is the weather in Oslo?"}],
        "tools": [{"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}],
        "tool_choice": {"type": "tool", "name": "get_weather"}});
    let (code, body) = post(&env, "/v1/messages", &anthropic_tool);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["stop_reason"], "tool_use", "{body}");
    let block = body["content"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["type"] == "tool_use")
        .unwrap();
    assert!(block["input"]["city"].is_string(), "{block}");
    let mut schema = chat_request("Describe Paris.", 60);
    schema["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "city", "schema":
        {"type": "object", "properties": {"name": {"type": "string"}, "population": {"type": "integer"}}, "required": ["name", "population"]}}});
    let (_, body) = post(&env, "/v1/chat/completions", &schema);
    let content: Value =
        serde_json::from_str(body["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert!(
        content["name"].is_string() && content["population"].is_i64(),
        "{content}"
    );
    env.ok(&["down"]);
}

#[test]
fn thirty_two_concurrent_streams_complete_and_a_killed_engine_is_restarted() {
    let env = serve(SPEC);
    let results: Vec<(u32, u16, String)> = thread::scope(|s| {
        let handles: Vec<_> = (0..32u32)
            .map(|i| {
                let env = &env;
                s.spawn(move || {
                    let max_tokens = 8 + i;
                    let mut request = chat_request(
                        &format!("Tell me fact number {i} about the sea."),
                        max_tokens,
                    );
                    request["stream"] = json!(true);
                    request["stream_options"] = json!({"include_usage": true});
                    let (code, body) =
                        curl(env, "POST", "/v1/chat/completions", Some(&request), &[]);
                    (max_tokens, code, body)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (max_tokens, code, body) in &results {
        assert_eq!(*code, 200, "{body}");
        let events = sse_events(body);
        assert_eq!(events.last().unwrap(), "[DONE]", "{body}");
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        let finish = chunks
            .iter()
            .find_map(|c| c["choices"][0]["finish_reason"].as_str())
            .unwrap();
        let used = chunks.last().unwrap()["usage"]["completion_tokens"]
            .as_u64()
            .unwrap() as u32;
        assert!(!text.is_empty());
        assert!(used <= *max_tokens, "{used} > {max_tokens}");
        assert_eq!(
            finish == "length",
            used == *max_tokens,
            "{finish} with {used} of {max_tokens}"
        );
    }

    // kill -9 of the engine mid-stream: the stream ends with an error event, never hangs, and
    // the next request gets a new engine.
    let pid = engine_pid(&env, "chat").expect("chat is loaded");
    let env_ref = &env;
    let started = Instant::now();
    let (code, body) = thread::scope(|s| {
        let stream = s.spawn(move || {
            let mut request = chat_request("Write a very long story about the sea.", 1500);
            request["temperature"] = json!(0.8);
            request["stream"] = json!(true);
            curl(env_ref, "POST", "/v1/chat/completions", Some(&request), &[])
        });
        thread::sleep(Duration::from_millis(1500));
        terminate(pid as i32, Signal::KILL);
        stream.join().unwrap()
    });
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the stream ended promptly"
    );
    assert_eq!(code, 200);
    let last = sse_events(&body).pop().unwrap();
    let error: Value = serde_json::from_str(&last).unwrap_or_else(|_| panic!("{last}"));
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("engine"),
        "{error}"
    );
    let (code, body) = post(&env, "/v1/chat/completions", &chat_request("Hi", 4));
    assert_eq!(code, 200, "{body}");
    let new_pid = engine_pid(&env, "chat").unwrap();
    assert_ne!(new_pid, pid);
    env.ok(&["down"]);
}

/// `runtime_flags` reach the engine: sampling defaults for requests that set none, the KV
/// cache type (in the memory the engine reports), flash attention off. And a finished
/// request's cache serves the next turn: `cached_tokens` counts the reused prefix, and with
/// flash attention off the same request gives the same text from the cache.
#[test]
fn runtime_flags_reach_the_engine_and_the_next_turn_reuses_the_cache() {
    let env = serve(
        "version: 1
name: flags
engines:
  llama.cpp: { threads: 1 }
models:
  plain: { source: ./models/smollm2.gguf, context_size: 1024, parallel: 1, preload: true }
  tuned:
    source: ./models/smollm2.gguf
    context_size: 1024
    parallel: 1
    preload: true
    runtime_flags: [--temp=0, --n-predict=6, --flash-attn=off, --cache-type-k=q8_0, -ub=64]
",
    );
    let status = env.status();
    let memory = |name: &str| {
        status["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap()["engine"]["memory_bytes"]
            .as_u64()
            .unwrap()
    };
    // SmolLM2: 30 layers × 3 KV heads × 64 = 5,760 K values a token; q8_0 keeps 32 in 34
    // bytes where f16 takes 64.
    let per_token = 30 * 3 * 64;
    assert_eq!(
        memory("plain") - memory("tuned"),
        1024 * per_token * 2 - 1024 * per_token / 32 * 34
    );

    let ask = |messages: Value| {
        let (code, reply) = post(
            &env,
            "/v1/chat/completions",
            &json!({"model": "tuned", "messages": messages}),
        );
        assert_eq!(code, 200, "{reply}");
        reply
    };
    let question = json!([{"role": "user", "content": "What is the capital of France?"}]);
    let first = ask(question.clone());
    assert_eq!(first["usage"]["completion_tokens"], 6, "--n-predict=6");
    // A request that asks for more is capped, as llama-server caps it.
    let (code, asked) = post(
        &env,
        "/v1/chat/completions",
        &json!({"model": "tuned", "messages": question, "max_tokens": 40}),
    );
    assert_eq!(code, 200, "{asked}");
    assert_eq!(
        asked["usage"]["completion_tokens"], 6,
        "capped by --n-predict=6"
    );
    assert_eq!(first["choices"][0]["finish_reason"], "length");
    assert_eq!(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let text = first["choices"][0]["message"]["content"].as_str().unwrap();

    let again = ask(question.clone());
    assert_eq!(again["choices"][0]["message"]["content"], text, "--temp=0");
    assert_eq!(
        again["usage"]["prompt_tokens_details"]["cached_tokens"],
        first["usage"]["prompt_tokens"].as_u64().unwrap() - 1,
        "all but the last prompt token from the cache"
    );

    let mut turn = question.as_array().unwrap().clone();
    turn.push(json!({"role": "assistant", "content": text}));
    turn.push(json!({"role": "user", "content": "And of Italy?"}));
    let next = ask(Value::Array(turn));
    let cached = next["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert!(
        cached >= first["usage"]["prompt_tokens"].as_u64().unwrap(),
        "the first turn is reused: {cached} of {} cached",
        next["usage"]["prompt_tokens"]
    );
    let (code, metrics) = curl(&env, "GET", "/metrics", None, &[]);
    assert_eq!(code, 200);
    assert!(
        metrics.contains("aistack_prompt_cached_tokens_total{model=\"tuned\"}"),
        "{metrics}"
    );
}

#[test]
fn auth_cors_memory_budget_keep_alive_and_preload() {
    let mut env = TestEnv::new();
    env.set_var("TEST_GATEWAY_KEY", "s3cret-key");
    let port = env.gateway_port();
    env.write(
        "aistack.yaml",
        &format!(
            "version: 1
name: guarded
gateway:
  listen: 127.0.0.1:{port}
  api_key_env: TEST_GATEWAY_KEY
  cors_origins: [\"http://localhost:3000\"]
engines:
  llama.cpp: {{ threads: 1 }}
models:
  chat: {{ source: ./models/smollm2.gguf, context_size: 512, parallel: 1, keep_alive: 0 }}
  warm: {{ source: ./models/smollm2.gguf, context_size: 512, parallel: 1, preload: true, keep_alive: -1 }}
"
        ),
    );
    env.link_model("smollm2.gguf");
    env.ok(&["up", "-q"]);
    assert!(engine_pid(&env, "warm").is_some(), "preload loads at up");
    assert!(engine_pid(&env, "chat").is_none(), "others load on demand");

    let request =
        json!({"model": "chat", "max_tokens": 3, "messages": [{"role": "user", "content": "Hi"}]});
    let (code, body) = curl(&env, "POST", "/v1/chat/completions", Some(&request), &[]);
    assert_eq!(code, 401, "{body}");
    let (code, body) = curl(
        &env,
        "POST",
        "/v1/chat/completions",
        Some(&request),
        &["authorization: Bearer wrong"],
    );
    assert_eq!(code, 401, "{body}");
    let (code, body) = curl(
        &env,
        "POST",
        "/v1/chat/completions",
        Some(&request),
        &["authorization: Bearer s3cret-key"],
    );
    assert_eq!(code, 200, "{body}");
    gemini_keys(&env);
    // keep_alive: 0 unloads after the request.
    assert!(
        wait_for(Duration::from_secs(5), || engine_pid(&env, "chat")
            .is_none()),
        "keep_alive 0 unloads"
    );
    assert!(engine_pid(&env, "warm").is_some(), "keep_alive -1 stays");
    let preflight = |origin: &str| {
        curl(
            &env,
            "OPTIONS",
            "/v1/chat/completions",
            None,
            &[
                &format!("origin: {origin}"),
                "access-control-request-method: POST",
            ],
        )
    };
    let (code, _) = preflight("http://localhost:3000");
    assert_eq!(code, 204);
    let (code, _) = preflight("http://evil.example");
    assert_eq!(code, 403);
    let state = std::fs::read_to_string(env.home().join("projects/guarded/state.json")).unwrap();
    assert!(
        !state.contains("s3cret-key"),
        "the key never reaches the state"
    );
    let logs = env.ok(&["logs"]) + &env.ok(&["logs", "chat"]);
    assert!(!logs.contains("s3cret-key"), "nor the logs");

    // A budget smaller than the model: 503 saying what is needed and what to change.
    env.write(
        "aistack.yaml",
        &std::fs::read_to_string(env.project().join("aistack.yaml"))
            .unwrap()
            .replace(
                "api_key_env: TEST_GATEWAY_KEY",
                "api_key_env: TEST_GATEWAY_KEY\n  memory_budget: 50MiB",
            ),
    );
    env.ok(&["up", "-q"]);
    let (code, body) = curl(
        &env,
        "POST",
        "/v1/chat/completions",
        Some(&request),
        &["authorization: Bearer s3cret-key"],
    );
    assert_eq!(code, 503, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("needs") && message.contains("MiB") && message.contains("memory_budget"),
        "{message}"
    );
    env.ok(&["down"]);
}

/// The Gemini routes take the key as Google's clients send it, `x-goog-api-key` or `?key=`
/// (the preloaded `warm` model answers without a load), and refuse a wrong one in Google's
/// error shape. The query is read on the Gemini routes only.
fn gemini_keys(env: &TestEnv) {
    let count = json!({"contents": [{"parts": [{"text": "Hi"}]}]});
    let path = "/v1beta/models/warm:countTokens";
    let (code, body) = post_with(env, path, &count, &["x-goog-api-key: s3cret-key"]);
    assert_eq!(code, 200, "{body}");
    assert!(body["totalTokens"].as_u64().unwrap() > 0, "{body}");
    let (code, body) = post_with(env, &format!("{path}?key=s3cret-key"), &count, &[]);
    assert_eq!(code, 200, "{body}");
    let (code, body) = curl(env, "GET", "/v1beta/models?key=s3cret-key", None, &[]);
    assert_eq!(code, 200, "{body}");
    for (query, headers) in [
        ("", &[][..]),
        ("?key=wrong", &[][..]),
        ("", &["x-goog-api-key: wrong"][..]),
    ] {
        let (code, body) = post_with(env, &format!("{path}{query}"), &count, headers);
        assert_eq!(code, 401, "{query} {headers:?}: {body}");
        assert_eq!(body["error"]["code"], 401);
        assert_eq!(body["error"]["status"], "UNAUTHENTICATED");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("x-goog-api-key"), "{message}");
    }
    let chat =
        json!({"model": "warm", "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}]});
    let (code, _) = post_with(env, "/v1/chat/completions?key=s3cret-key", &chat, &[]);
    assert_eq!(code, 401, "OpenAI's routes take no key in the query");
}

/// DNS rebinding (issue 16): a page on `evil.example` that re-points its name at 127.0.0.1
/// sends requests the browser holds same-origin, with `Host: evil.example`. A gateway
/// without a key refuses them, in each dialect's shape and before any engine loads, and
/// keeps serving requests to its own address and `localhost` (the Python clients of the
/// first test are served too).
#[test]
fn a_gateway_without_a_key_refuses_requests_to_other_host_names() {
    let env = serve(SPEC);
    let port = env.gateway_port();
    let (code, body) = curl(&env, "GET", "/v1/models", None, &["Host: evil.example"]);
    assert_eq!(code, 403, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("Host `evil.example` is refused"),
        "{message}"
    );
    assert!(
        message.contains(&format!("help: call it at `http://127.0.0.1:{port}`")),
        "{message}"
    );
    assert!(message.contains("gateway.api_key_env"), "{message}");
    let (code, body) = post_with(
        &env,
        "/api/chat",
        &json!({"model": "chat", "messages": [{"role": "user", "content": "Hi"}]}),
        &[&format!("Host: evil.example:{port}")],
    );
    assert_eq!(code, 403);
    assert!(body["error"].is_string(), "Ollama's shape: {body}");
    let (code, body) = post_with(
        &env,
        "/v1/messages",
        &json!({"model": "chat", "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]}),
        &["Host: evil.example"],
    );
    assert_eq!(code, 403);
    assert_eq!(body["error"]["type"], "permission_error", "{body}");
    assert_eq!(
        engine_pid(&env, "chat"),
        None,
        "nothing refused loads a model"
    );

    for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
        let (code, body) = curl(&env, "GET", "/v1/models", None, &[&format!("Host: {host}")]);
        assert_eq!(code, 200, "{host}: {body}");
    }
    let out = aistack_tests::succeed(
        Command::new("curl").args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://localhost:{port}/api/tags"),
        ]),
        "curl localhost",
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    env.ok(&["down"]);
}

fn post_with(env: &TestEnv, path: &str, body: &Value, headers: &[&str]) -> (u16, Value) {
    let (code, text) = curl(env, "POST", path, Some(body), headers);
    (
        code,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")),
    )
}

/// The fields of `/proc/PID/status` named `name`, split on whitespace.
fn proc_status(pid: u64, name: &str) -> Vec<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no `{name}` in:\n{status}"))
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Engines parse model files nobody here wrote (issue 16): started by a root daemon, an
/// engine runs as a user that owns nothing on the host (the first id past the default
/// sandbox range), with no groups, `no_new_privs` and seccomp, confined by Landlock; it
/// gets an environment of its own, not the daemon's; and it still loads its model from a
/// home only root can search, and answers.
#[test]
fn engines_run_confined_as_nobody_with_an_environment_of_their_own() {
    const SECRET: &str = "engine-must-not-see-3c1f";
    let mut env = TestEnv::new();
    env.set_var("AISTACK_TEST_DAEMON_SECRET", SECRET);
    std::fs::create_dir_all(env.home()).unwrap();
    std::fs::set_permissions(
        env.home(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    env.write(
        "aistack.yaml",
        &env.spec(
            "version: 1
name: confined
engines:
  llama.cpp: { threads: 1 }
models:
  chat: { source: ./models/smollm2.gguf, context_size: 512, parallel: 1 }
",
        ),
    );
    env.link_model("smollm2.gguf");
    env.ok(&["up", "-q"]);
    let (code, reply) = post(&env, "/v1/chat/completions", &chat_request("Hi", 4));
    assert_eq!(code, 200, "{reply}");
    assert!(
        !reply["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .is_empty()
    );
    let pid = engine_pid(&env, "chat").expect("chat is loaded");

    let root = rustix::process::geteuid().is_root();
    if root {
        let engine_id = (aistack_sandbox::idmap::DEFAULT_BASE
            + aistack_sandbox::idmap::SANDBOX_IDS)
            .to_string();
        for name in ["Uid", "Gid"] {
            assert_eq!(proc_status(pid, name), [engine_id.as_str(); 4], "{name}");
        }
        assert!(proc_status(pid, "Groups").is_empty(), "no groups");
        let model = std::fs::read_dir(env.home().join("models/blobs/sha256"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| std::fs::metadata(p).unwrap().len() > 50 << 20)
            .unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(model).unwrap().permissions(),
        );
        assert_eq!(mode & 0o222, 0o200, "the model stays writable by root only");
    }
    assert_eq!(proc_status(pid, "NoNewPrivs"), ["1"]);
    assert_eq!(proc_status(pid, "Seccomp"), ["2"], "a seccomp filter");
    let logs = env.ok(&["logs", "chat"]);
    let confined = logs
        .lines()
        .find(|l| l.starts_with("Engine confined: "))
        .unwrap_or_else(|| panic!("{logs}"));
    assert!(confined.contains("no_new_privs, seccomp"), "{confined}");
    if root {
        assert!(
            confined.contains("user 2000065536:2000065536"),
            "{confined}"
        );
    }

    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    let names: Vec<&str> = environ
        .split('\0')
        .filter_map(|v| v.split_once('=').map(|(k, _)| k))
        .collect();
    assert!(
        !environ.contains(SECRET),
        "the daemon's environment leaked: {names:?}"
    );
    assert!(!names.contains(&"AISTACK_HOME"), "{names:?}");
    assert!(names.contains(&"PATH"), "{names:?}");
    env.ok(&["down"]);
    assert!(
        wait_gone(pid as i32, Duration::from_secs(10)),
        "down stops the engine"
    );
    assert_eq!(
        std::fs::read_dir(env.home().join("run"))
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("engine-"))
            .count(),
        0,
        "the daemon removes the socket the engine may not"
    );
}
