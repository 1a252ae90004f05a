//! The engine against the real SmolLM2-135M-Instruct GGUF at `AISTACK_TEST_MODEL`
//! (`scripts/fetch-model` prints its path). One thread: the CI machine has two cores and
//! llama.cpp's OpenMP threads spin-wait.

use std::path::PathBuf;
use std::sync::OnceLock;

use aistack_engine::{
    ChatMessage, EngineError, FinishReason, GenerateParams, Generation, LoadOptions, Model,
    cpu_features, render_chat, unused_cpu_features,
};

const SYSTEM: &str = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n";

fn model_path() -> PathBuf {
    match std::env::var_os("AISTACK_TEST_MODEL") {
        Some(path) => PathBuf::from(path),
        None => panic!(
            "AISTACK_TEST_MODEL is not set: point it at SmolLM2-135M-Instruct's GGUF \
             (`AISTACK_TEST_MODEL=$(scripts/fetch-model) cargo test -p aistack-engine`)"
        ),
    }
}

fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        let options = LoadOptions {
            context_size: Some(2048),
            threads: Some(1),
            ..LoadOptions::default()
        };
        Model::load(&model_path(), &options).unwrap_or_else(|e| {
            panic!(
                "loading {}: {e} (help: {:?})",
                model_path().display(),
                e.help()
            )
        })
    })
}

fn chat_prompt(question: &str) -> String {
    let model = model();
    let template = model
        .chat_template()
        .expect("SmolLM2's GGUF has a chat template");
    render_chat(
        &template,
        &[ChatMessage::new("user", question)],
        true,
        &model.special_tokens(),
    )
    .unwrap()
}

fn greedy(max_tokens: u32) -> GenerateParams {
    GenerateParams {
        max_tokens: Some(max_tokens),
        temperature: 0.0,
        ..GenerateParams::default()
    }
}

fn generate(prompt: &str, params: &GenerateParams) -> (Generation, String) {
    let mut streamed = String::new();
    let generation = model()
        .generate(prompt, params, &mut |piece| {
            streamed.push_str(piece);
            true
        })
        .unwrap();
    (generation, streamed)
}

#[test]
fn chat_template_renders_the_default_system_prompt() {
    assert_eq!(
        chat_prompt("What is the capital of France?"),
        format!(
            "{SYSTEM}<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
        )
    );
    // A given system message replaces the default one.
    let template = model().chat_template().unwrap();
    let rendered = render_chat(
        &template,
        &[
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Hi"),
        ],
        false,
        &model().special_tokens(),
    )
    .unwrap();
    assert_eq!(
        rendered,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    );
}

/// Greedy output for "What is the capital of France?" with SmolLM2's default system prompt, as
/// llama.cpp's own C API produces it from the same rendered prompt (a C++ program linked
/// against the same static libraries: `llama_tokenize` with special tokens, greedy sampler,
/// 64 tokens). This quantised 135M model does not name Paris for that wording.
const FRANCE_GREEDY: &str = "L'Étoile, la Marseillaise, la femme au martyre, la femme au martyre. La femme au martyre, la femme au martyre, la femme au martyre. La femme au martyre, la femme au martyre, la femme";

#[test]
fn greedy_output_matches_llama_cpp_and_is_deterministic() {
    let prompt = chat_prompt("What is the capital of France?");
    let (first, streamed) = generate(&prompt, &greedy(64));
    println!("cpu features: {}", cpu_features());
    println!("unused cpu features: {:?}", unused_cpu_features());
    println!(
        "prompt: {} tokens at {:.1} tokens/s; decode: {} tokens at {:.1} tokens/s (1 thread)",
        first.prompt_tokens,
        first.timings.prompt_tokens_per_second,
        first.completion_tokens,
        first.timings.decode_tokens_per_second
    );
    assert_eq!(first.text, FRANCE_GREEDY);
    assert_eq!(streamed, first.text);
    assert_eq!(first.prompt_tokens, model().tokenize(&prompt).len());
    assert_eq!(first.prompt_tokens, 37);
    assert_eq!(first.completion_tokens, 64);
    assert_eq!(first.finish_reason, FinishReason::Length);
    assert!(first.timings.decode_tokens_per_second > 0.0);

    let (second, _) = generate(&prompt, &greedy(64));
    assert_eq!(second.text.as_bytes(), first.text.as_bytes());
    assert_eq!(second.completion_tokens, first.completion_tokens);
}

#[test]
fn greedy_answer_names_paris_and_stops_at_eos() {
    let prompt = chat_prompt("Which city is the capital of France?");
    let (answer, streamed) = generate(&prompt, &greedy(64));
    assert_eq!(answer.text, "The capital of France is Paris.");
    assert_eq!(streamed, answer.text);
    assert_eq!(answer.finish_reason, FinishReason::Stop);
    assert_eq!(answer.prompt_tokens, model().tokenize(&prompt).len());
    // "The capital of France is Paris." and no end-of-generation token counted.
    assert!(answer.completion_tokens > 0 && answer.completion_tokens < 64);
}

#[test]
fn max_tokens_ends_with_length() {
    let prompt = chat_prompt("Tell me a long story about a dragon.");
    let (generation, streamed) = generate(&prompt, &greedy(5));
    assert_eq!(generation.finish_reason, FinishReason::Length);
    assert_eq!(generation.completion_tokens, 5);
    assert_eq!(streamed, generation.text);
    assert!(!generation.text.is_empty());
}

#[test]
fn stop_string_is_honoured_and_not_emitted() {
    let prompt = chat_prompt("Which city is the capital of France?");
    let (free, _) = generate(&prompt, &greedy(64));
    let at = free
        .text
        .find("Paris")
        .expect("the unstopped answer names Paris");
    let params = GenerateParams {
        stop: vec!["Paris".to_owned()],
        ..greedy(64)
    };
    let (stopped, streamed) = generate(&prompt, &params);
    assert_eq!(stopped.finish_reason, FinishReason::Stop);
    assert_eq!(stopped.text, free.text[..at]);
    assert_eq!(streamed, stopped.text);
    assert!(!streamed.contains("Paris"));
}

#[test]
fn seeded_sampling_is_reproducible() {
    let prompt = chat_prompt("Name a colour.");
    let params = GenerateParams {
        max_tokens: Some(12),
        temperature: 0.9,
        seed: Some(42),
        ..GenerateParams::default()
    };
    let (a, _) = generate(&prompt, &params);
    let (b, _) = generate(&prompt, &params);
    assert_eq!(a.text, b.text);
}

#[test]
fn callback_can_stop_generation() {
    let prompt = chat_prompt("Tell me a long story about a dragon.");
    let mut pieces = 0;
    let generation = model()
        .generate(&prompt, &greedy(50), &mut |_| {
            pieces += 1;
            pieces < 3
        })
        .unwrap();
    assert_eq!(pieces, 3);
    assert_eq!(generation.finish_reason, FinishReason::Stop);
    assert!(generation.completion_tokens < 50);
}

#[test]
fn too_long_prompt_is_an_error() {
    let small = Model::load(
        &model_path(),
        &LoadOptions {
            context_size: Some(32),
            threads: Some(1),
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let prompt = "word ".repeat(100);
    let tokens = small.tokenize(&prompt).len();
    let err = small
        .generate(&prompt, &greedy(5), &mut |_| true)
        .unwrap_err();
    assert!(matches!(err, EngineError::PromptTooLong { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("The prompt is too long: {tokens} tokens > 32, the context size")
    );
    assert!(err.help().unwrap().contains("`context_size`"));
}

#[test]
fn missing_model_is_a_clear_error() {
    let err = Model::load(
        std::path::Path::new("/nonexistent/model.gguf"),
        &LoadOptions::default(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "Model file `/nonexistent/model.gguf` does not exist"
    );
    assert!(err.help().is_some());
}

/// Four sequences in one context, the last joining while the others are mid-stream: each
/// greedy reply is the one it gets alone, streamed text equals the final text, and usage is
/// its own.
#[test]
fn continuous_batching_gives_each_sequence_its_solo_output() {
    use std::sync::mpsc;

    use aistack_engine::{Batcher, Job, Output};

    let questions = [
        ("What is the capital of France?", 24),
        ("Name a colour.", 9),
        ("Write a haiku about the sea.", 31),
        ("What is 2 + 2?", 17),
    ];
    let solo: Vec<Generation> = questions
        .iter()
        .map(|(q, n)| generate(&chat_prompt(q), &greedy(*n)).0)
        .collect();

    let mut batcher = Batcher::new(model(), 4).unwrap();
    let (tx, rx) = mpsc::channel::<(usize, Result<Generation, String>, String)>();
    let job = |index: usize| {
        let tx = tx.clone();
        let mut streamed = String::new();
        let (question, max_tokens) = questions[index];
        Job {
            tokens: model().tokenize(&chat_prompt(question)),
            params: greedy(max_tokens),
            grammar: None,
            received: std::time::Instant::now(),
            sink: Box::new(move |output| {
                match output {
                    Output::Text(text) => streamed.push_str(text),
                    Output::Done(g) => tx.send((index, Ok(g), streamed.clone())).unwrap(),
                    Output::Failed(e) => {
                        tx.send((index, Err(e.to_string()), String::new())).unwrap()
                    }
                    Output::Listening => {}
                }
                true
            }),
        }
    };
    for index in 0..3 {
        assert!(batcher.admit(job(index)).is_ok());
    }
    for _ in 0..5 {
        batcher.step();
    }
    assert!(batcher.admit(job(3)).is_ok(), "a fourth sequence is free");
    let mut steps = 0;
    while !batcher.is_idle() {
        batcher.step();
        steps += 1;
        assert!(steps < 200, "the batch finishes");
    }
    drop(tx);
    let mut finished: Vec<_> = rx.iter().collect();
    finished.sort_by_key(|(index, ..)| *index);
    assert_eq!(finished.len(), 4);
    for (index, generation, streamed) in finished {
        let generation = generation.unwrap();
        assert_eq!(generation.text, solo[index].text, "sequence {index}");
        assert_eq!(streamed, generation.text);
        assert_eq!(generation.prompt_tokens, solo[index].prompt_tokens);
        assert_eq!(generation.completion_tokens, solo[index].completion_tokens);
        assert_eq!(generation.finish_reason, solo[index].finish_reason);
    }
}

/// The model with flash attention off: attention then does not depend on how the prompt
/// was split into batches, so a reply after a cached prefix must equal the reply without.
fn model_without_flash_attention() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        let flags = aistack_spec::runtime_flags::parse(&["--flash-attn=off".to_owned()]).unwrap();
        let options = LoadOptions {
            context_size: Some(2048),
            threads: Some(1),
            flags,
        };
        Model::load(&model_path(), &options).unwrap()
    })
}

/// Runs one greedy job to its end in `batcher`.
fn run_job(
    batcher: &mut aistack_engine::Batcher<'_, '_>,
    model: &Model,
    prompt: &str,
    max_tokens: u32,
) -> Generation {
    let (tx, rx) = std::sync::mpsc::channel();
    let job = aistack_engine::Job {
        tokens: model.tokenize(prompt),
        params: greedy(max_tokens),
        grammar: None,
        received: std::time::Instant::now(),
        sink: Box::new(move |output| {
            match output {
                aistack_engine::Output::Done(g) => tx.send(g).unwrap(),
                aistack_engine::Output::Failed(e) => panic!("{e}"),
                aistack_engine::Output::Text(_) | aistack_engine::Output::Listening => {}
            }
            true
        }),
    };
    assert!(batcher.admit(job).is_ok(), "a sequence is free");
    while !batcher.is_idle() {
        batcher.step();
    }
    rx.recv().unwrap()
}

fn conversation(turns: &[(&str, &str)]) -> String {
    let model = model();
    let messages: Vec<ChatMessage> = turns
        .iter()
        .map(|(role, text)| ChatMessage::new(*role, *text))
        .collect();
    render_chat(
        &model.chat_template().unwrap(),
        &messages,
        true,
        &model.special_tokens(),
    )
    .unwrap()
}

/// A finished sequence keeps its KV cache: the next turn of the conversation evaluates only
/// what is new and replies exactly as it would from an empty cache; an unrelated prompt takes
/// an empty sequence rather than overwrite the conversation, or else reuses the shared
/// system prompt; the same prompt again evaluates only its last token.
#[test]
fn the_next_turn_reuses_the_cached_conversation() {
    use aistack_engine::Batcher;

    let model = model_without_flash_attention();
    let question = "What is the capital of France?";
    let mut batcher = Batcher::new(model, 2).unwrap();
    let first = run_job(
        &mut batcher,
        model,
        &conversation(&[("user", question)]),
        24,
    );
    assert_eq!(first.cached_tokens, 0, "an empty cache");

    let turn = conversation(&[
        ("user", question),
        ("assistant", &first.text),
        ("user", "And the capital of Italy?"),
    ]);
    let fresh = {
        let mut alone = Batcher::new(model, 1).unwrap();
        run_job(&mut alone, model, &turn, 24)
    };
    assert_eq!(fresh.cached_tokens, 0);
    let other = run_job(
        &mut batcher,
        model,
        &conversation(&[("user", "Name a colour.")]),
        8,
    );
    assert_eq!(other.cached_tokens, 0, "the empty sequence was taken");

    let reused = run_job(&mut batcher, model, &turn, 24);
    assert_eq!(reused.text, fresh.text, "same reply as from an empty cache");
    assert_eq!(reused.prompt_tokens, fresh.prompt_tokens);
    assert!(
        reused.cached_tokens > first.prompt_tokens,
        "the first turn's prompt is reused: {} of {} cached",
        reused.cached_tokens,
        reused.prompt_tokens
    );

    // Both sequences hold a conversation: a new one overwrites the shorter, keeping the
    // system prompt they share.
    let third = run_job(
        &mut batcher,
        model,
        &conversation(&[("user", "What is 2 + 2?")]),
        8,
    );
    let system = model.tokenize(SYSTEM).len();
    assert!(
        third.cached_tokens >= system,
        "the system prompt is reused: {} cached, {system} in it",
        third.cached_tokens
    );

    let again = run_job(&mut batcher, model, &turn, 24);
    assert_eq!(again.cached_tokens, again.prompt_tokens - 1);
    assert_eq!(again.text, fresh.text);
}

/// A client that leaves while its prompt is evaluated ends the generation before the next
/// batch: nothing more is evaluated or reported, and what was evaluated stays cached.
#[test]
fn a_generation_whose_client_left_stops_between_prompt_batches() {
    use aistack_engine::{Batcher, Job, Output};

    let model = model_without_flash_attention();
    let prompt = conversation(&[("user", &"Tell me about lighthouses. ".repeat(150))]);
    let tokens = model.tokenize(&prompt);
    assert!(
        (600..2000).contains(&tokens.len()),
        "{} tokens",
        tokens.len()
    );
    let mut batcher = Batcher::new(model, 1).unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<&str>();
    let mut probes = 0;
    let job = Job {
        tokens,
        params: greedy(8),
        grammar: None,
        received: std::time::Instant::now(),
        // Listens through the first batch of the prompt, then leaves.
        sink: Box::new(move |output| match output {
            Output::Listening => {
                probes += 1;
                probes == 1
            }
            Output::Text(_) => tx.send("text").is_ok(),
            Output::Done(_) => tx.send("done").is_ok(),
            Output::Failed(_) => tx.send("failed").is_ok(),
        }),
    };
    assert!(batcher.admit(job).is_ok());
    let mut steps = 0;
    while !batcher.is_idle() {
        batcher.step();
        steps += 1;
        assert!(steps < 10, "the generation ends");
    }
    assert_eq!(steps, 2, "one batch evaluated, the next one not");
    assert_eq!(
        rx.try_recv(),
        Err(std::sync::mpsc::TryRecvError::Disconnected)
    );

    let again = run_job(&mut batcher, model, &prompt, 4);
    assert_eq!(
        again.cached_tokens, 512,
        "the batch evaluated before it left is cached"
    );
}

/// A grammar from a JSON schema holds even this small model to the schema.
#[test]
fn json_schema_grammar_constrains_the_output() {
    let grammar = aistack_engine::schema_grammar(&serde_json::json!({
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"]
    }))
    .unwrap();
    let mut batcher = aistack_engine::Batcher::new(model(), 1).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let job = aistack_engine::Job {
        tokens: model().tokenize(&chat_prompt("Describe Paris as JSON.")),
        params: greedy(64),
        grammar: Some(aistack_engine::Grammar::strict(grammar)),
        received: std::time::Instant::now(),
        sink: Box::new(move |output| {
            if let aistack_engine::Output::Done(g) = output {
                tx.send(g).unwrap();
            }
            true
        }),
    };
    assert!(batcher.admit(job).is_ok());
    while !batcher.is_idle() {
        batcher.step();
    }
    let generation = rx.recv().unwrap();
    let value: serde_json::Value = serde_json::from_str(&generation.text)
        .unwrap_or_else(|e| panic!("{e}: {:?}", generation.text));
    assert!(value["city"].is_string(), "{value}");
    assert!(value["population"].is_i64(), "{value}");
}

/// Whether the lazy tool-call grammar for `read_file` lets the model write the next token of
/// `a` and of `b` after the text they share, once that text is accepted.
fn next_tokens_allowed(a: &str, b: &str) -> (bool, bool) {
    use llama_cpp_2::token::data::LlamaTokenData;
    use llama_cpp_2::token::data_array::LlamaTokenDataArray;
    let tools = [aistack_engine_api::Tool {
        name: "read_file".into(),
        description: None,
        parameters: serde_json::json!({
            "type": "object",
            "properties": {"path": {"type": "string"}},
            "required": ["path"]
        }),
    }];
    let grammar = aistack_engine::lazy_tool_call_grammar(&tools).expect("a grammar");
    let bos = model().tokenize("");
    let strip = |text: &str| model().tokenize(text)[bos.len()..].to_vec();
    let (a, b) = (strip(a), strip(b));
    let shared = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let allowed = |next| {
        let mut sampler = model().sampler(&greedy(8), Some(&grammar)).unwrap();
        sampler.accept_many(&a[..shared]);
        let mut candidates =
            LlamaTokenDataArray::new(vec![LlamaTokenData::new(next, 1.0, 0.0)], false);
        sampler.apply(&mut candidates);
        candidates.data[0].logit() > f32::NEG_INFINITY
    };
    (allowed(a[shared]), allowed(b[shared]))
}

#[test]
fn a_reply_that_opens_with_a_bare_call_may_only_name_an_offered_tool() {
    let (made_up, offered) =
        next_tokens_allowed(r#"{"name": "cat", "#, r#"{"name": "read_file", "#);
    assert!(!made_up, "a tool of the model's own is refused");
    assert!(offered, "an offered tool is written");
    // Opened with a doubled brace, as Qwen2.5-Coder 1.5B does: held from the second one.
    let (made_up, offered) =
        next_tokens_allowed(r#"{{"name": "cat", "#, r#"{{"name": "read_file", "#);
    assert!(!made_up && offered, "a doubled brace opens a call too");
    // The same words inside prose start no call: the text stays free.
    let (made_up, offered) = next_tokens_allowed(
        r#"You could call {"name": "cat", "#,
        r#"You could call {"name": "read_file", "#,
    );
    assert!(made_up && offered, "prose is not held to the grammar");
}
