//! The engine process's socket protocol, served in-process on the real SmolLM2 GGUF at
//! `AISTACK_TEST_MODEL` and spoken to by the gateway's client.

use std::path::PathBuf;
use std::time::Duration;

use aistack_engine::serve::{ServeOptions, bind, serve};
use aistack_engine_api::{
    ClientError, EmbedRequest, EngineClient, ErrorKind, Event, FinishReason, Format,
    GenerateRequest, Input, Message, Mode, Sampling, TokenizeRequest, Tool, tools,
};

fn model_path() -> PathBuf {
    PathBuf::from(
        std::env::var_os("AISTACK_TEST_MODEL")
            .expect("AISTACK_TEST_MODEL names SmolLM2's GGUF (`scripts/fetch-model`)"),
    )
}

/// Serves the model in `mode` on a socket in `dir`; the server stops with the runtime.
async fn start(dir: &tempfile::TempDir, mode: Mode, parallel: u32) -> EngineClient {
    let socket = dir.path().join(format!("{mode:?}.sock"));
    let options = ServeOptions {
        model: model_path(),
        model_file: None,
        socket: socket.clone(),
        chat_template: None,
        context_size: Some(512),
        parallel,
        threads: Some(1),
        mode,
        flags: Default::default(),
    };
    let listener = bind(&socket).unwrap();
    tokio::spawn(async move {
        serve(options, listener, std::future::pending())
            .await
            .unwrap();
    });
    let client = EngineClient::new(&socket);
    for _ in 0..600 {
        if client.info().await.is_ok() {
            return client;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the engine did not answer within 30 s");
}

fn chat(question: &str, max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        input: Input::Chat {
            messages: vec![Message::new("user", question)],
            tools: Vec::new(),
        },
        sampling: Sampling {
            temperature: Some(0.0),
            ..Sampling::default()
        },
        max_tokens: Some(max_tokens),
        stop: Vec::new(),
        format: None,
    }
}

/// All text and the final event of a generation.
async fn collect(client: &EngineClient, request: &GenerateRequest) -> (String, Event) {
    let mut stream = client.generate(request).await.unwrap();
    let mut text = String::new();
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            Event::Text { text: t } => text.push_str(&t),
            last => return (text, last),
        }
    }
    panic!("the stream ended without a final event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_engine_streams_counts_and_refuses_bad_requests() {
    let dir = tempfile::tempdir().unwrap();
    let client = start(&dir, Mode::Chat, 2).await;
    let info = client.info().await.unwrap();
    assert_eq!(info.mode, Mode::Chat);
    assert_eq!(
        (info.context_size, info.parallel, info.threads),
        (512, 2, 1)
    );
    assert!(
        info.cpu_features.starts_with("CPU : "),
        "{}",
        info.cpu_features
    );
    assert!(info.memory_bytes > 50_000_000, "{}", info.memory_bytes);

    let (first, done) = collect(&client, &chat("What is the capital of France?", 12)).await;
    let Event::Done {
        finish_reason,
        usage,
    } = done
    else {
        panic!("{done:?}")
    };
    assert_eq!(finish_reason, FinishReason::Length);
    assert_eq!(usage.completion_tokens, 12);
    assert_eq!(
        usage.prompt_tokens, 37,
        "SmolLM2's default system prompt is rendered"
    );
    assert!(usage.time_to_first_token_ms > 0.0);
    let (second, _) = collect(&client, &chat("What is the capital of France?", 12)).await;
    assert_eq!(first, second, "greedy output is deterministic");

    let counted = client
        .tokenize(&TokenizeRequest {
            input: chat("What is the capital of France?", 1).input,
        })
        .await
        .unwrap();
    assert_eq!(counted.tokens, 37);

    // A prompt longer than the context.
    let long = chat(&"word ".repeat(600), 4);
    match client.generate(&long).await {
        Err(ClientError::Refused(e)) => {
            assert_eq!(e.kind, ErrorKind::PromptTooLong);
            assert!(e.help.unwrap().contains("context_size"));
        }
        other => panic!("{other:?}"),
    }
    // An invalid schema.
    let mut bad_schema = chat("Hi", 4);
    bad_schema.format = Some(Format::JsonSchema {
        schema: serde_json::json!({"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}),
    });
    match client.generate(&bad_schema).await {
        Err(ClientError::Refused(e)) => assert_eq!(e.kind, ErrorKind::InvalidRequest, "{e:?}"),
        other => panic!("{other:?}"),
    }
    // Embeddings from a chat engine.
    match client
        .embed(&EmbedRequest {
            input: vec!["x".into()],
        })
        .await
    {
        Err(ClientError::Refused(e)) => assert_eq!(e.kind, ErrorKind::Unsupported),
        other => panic!("{other:?}"),
    }
    // Still serving.
    let (again, _) = collect(&client, &chat("What is the capital of France?", 12)).await;
    assert_eq!(again, first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_tool_is_called_with_arguments_matching_its_schema() {
    let dir = tempfile::tempdir().unwrap();
    let client = start(&dir, Mode::Chat, 1).await;
    let weather = Tool {
        name: "get_weather".into(),
        description: Some("The current weather in a city".into()),
        parameters: serde_json::json!({
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"]
        }),
    };
    let mut request = chat("What is the weather in Paris?", 64);
    request.input = Input::Chat {
        messages: vec![Message::new("user", "What is the weather in Paris?")],
        tools: vec![weather.clone()],
    };
    request.format = Some(Format::ToolCall {
        names: vec!["get_weather".into()],
    });
    let (text, done) = collect(&client, &request).await;
    assert!(matches!(done, Event::Done { .. }), "{done:?}");
    let parsed = tools::parse(&text, &[weather], "call_");
    assert_eq!(parsed.calls.len(), 1, "{text}");
    assert_eq!(parsed.calls[0].name, "get_weather");
    let arguments: serde_json::Value = serde_json::from_str(&parsed.calls[0].arguments).unwrap();
    assert!(arguments["city"].is_string(), "{arguments}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedding_engine_returns_normalised_vectors() {
    let dir = tempfile::tempdir().unwrap();
    let client = start(&dir, Mode::Embedding, 1).await;
    let response = client
        .embed(&EmbedRequest {
            input: vec![
                "The cat sat on the mat.".into(),
                "Stock markets fell.".into(),
            ],
        })
        .await
        .unwrap();
    assert_eq!(response.embeddings.len(), 2);
    for vector in &response.embeddings {
        assert_eq!(vector.len(), 576);
        let norm: f32 = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "{norm}");
    }
    assert_ne!(response.embeddings[0], response.embeddings[1]);
    assert!(response.prompt_tokens > 6);
    match client.generate(&chat("Hi", 4)).await {
        Err(ClientError::Refused(e)) => assert_eq!(e.kind, ErrorKind::Unsupported),
        other => panic!("{other:?}"),
    }
}
