//! The one generation path (DESIGN §6). A dialect decodes a request into a [`Generation`]:
//! the engine's neutral request, whether to stream, and an [`Encoder`] for its answer. The
//! driver does the rest, once for every dialect: the lease on the model's engine after its
//! turn in the queue, tool-call splitting, errors (the engine's refusal, a failure
//! mid-stream, an engine that went away), metrics, and the answer as a whole body or as a
//! stream of framed events fed through a channel.

use aistack_engine_api::tools::{self, Splitter};
use aistack_engine_api::{
    ClientError, Event, EventStream, FinishReason, GenerateRequest, Input, Mode, Tool, ToolCall,
    Usage,
};
use std::future::Future;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout, timeout_at};

use crate::error::{Api, ApiError, from_client};
use crate::framing::Framing;
use crate::models::Lease;
use crate::request::{Call, answer};
use crate::state::Shared;

/// What a dialect decoded a request into.
pub(crate) struct Generation<E> {
    /// What the engine is asked, with the tools offered.
    pub(crate) request: GenerateRequest,
    /// Whether the answer streams; each dialect has its own default.
    pub(crate) stream: bool,
    /// How the answer is written.
    pub(crate) encoder: E,
}

/// How a generation ended, for an encoder's last words.
#[derive(Debug)]
pub(crate) struct End {
    /// Text not sent yet: a whole reply's text outside any tool call, or what a stream's
    /// tool-call splitter held back that turned out not to be a call.
    pub(crate) text: String,
    /// The tool calls the reply made (only when tools were offered).
    pub(crate) calls: Vec<ToolCall>,
    /// Why the engine stopped.
    pub(crate) reason: FinishReason,
    /// The engine's counts.
    pub(crate) usage: Usage,
    /// Whether the model produced any text, calls included: Anthropic tells a stop sequence
    /// from the end of a turn by it.
    pub(crate) generated: bool,
}

/// How long a stream may stay silent while the engine works (evaluating a long prompt, or
/// generating a tool call the splitter holds back) before it sends a keep-alive. Clients
/// give up on streams idle for as little as 10 s.
pub(crate) const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// One dialect's way of writing a generation's answer, as JSON values: the driver frames
/// them (by [`Encoder::FRAMING`]) and shapes failures (by [`Encoder::API`]). An answer that
/// is not streamed gets [`Encoder::whole`]; a stream gets [`Encoder::start`], then
/// [`Encoder::text`] for each piece of text that can be shown, then [`Encoder::finish`] (or
/// [`Encoder::fail`] when the engine fails mid-stream).
pub(crate) trait Encoder: Send + 'static {
    /// The dialect, whose error shape failures take.
    const API: Api;
    /// How its stream is framed.
    const FRAMING: Framing;
    /// What the ids of its tool calls start with.
    const CALL_PREFIX: &'static str;

    /// The body of an answer that is not streamed.
    fn whole(&self, end: &End) -> Value;

    /// The events that open a stream, before any text.
    fn start(&mut self) -> Vec<Value> {
        Vec::new()
    }

    /// The events that show more text.
    fn text(&mut self, text: &str) -> Vec<Value>;

    /// What a stream sends after [`KEEP_ALIVE`] of silence: by default its framing's.
    fn keep_alive() -> Option<Bytes> {
        Self::FRAMING.keep_alive()
    }

    /// The events that close a stream that finished: held-back text, tool calls, the finish
    /// reason and the counts.
    fn finish(&mut self, end: &End) -> Vec<Value>;

    /// The events that end a stream that failed: by default the dialect's error body, which
    /// is how most dialects say it mid-stream too.
    fn fail(&mut self, error: &ApiError) -> Vec<Value> {
        vec![error.body(Self::API)]
    }
}

/// Answers a generation route: `decode` reads the request, and the driver runs it.
pub(crate) async fn serve<E: Encoder>(
    shared: &Shared,
    body: Body,
    decode: fn(&Call) -> Result<Generation<E>, ApiError>,
) -> Response {
    answer(shared, body, E::API, |call| async move {
        let generation = decode(&call)?;
        generate(shared, &call, generation).await
    })
    .await
}

/// Runs `generation` on the engine of the model `call` names. Failures before the answer
/// starts are the caller's to answer; later ones end the stream in the dialect's shape.
pub(crate) async fn generate<E: Encoder>(
    shared: &Shared,
    call: &Call,
    generation: Generation<E>,
) -> Result<Response, ApiError> {
    let Generation {
        request,
        stream,
        encoder,
    } = generation;
    let tools = match &request.input {
        Input::Chat { tools, .. } => tools.clone(),
        Input::Text { .. } => Vec::new(),
    };
    let queue = call.queue(shared, Mode::Chat)?;
    let (shared, label) = (shared.clone(), call.model.clone());
    // The turn in the model's queue (and the engine's load), then the engine's acceptance.
    let mut accepted = Box::pin(async move {
        let lease = queue.await?;
        let events = lease.client.generate(&request).await;
        let events = events.map_err(|e| from_client(&e))?;
        Ok(Running {
            lease,
            events,
            shared,
            label,
        })
    });
    if !stream {
        return accepted.await?.whole(&encoder, &tools).await;
    }
    let streaming = Streaming::new(encoder, tools, call_ids::<E>());
    if E::keep_alive().is_none() {
        return Ok(respond(streaming, accepted.await?));
    }
    match timeout(KEEP_ALIVE, accepted.as_mut()).await {
        Ok(running) => Ok(respond(streaming, running?)),
        // Still waiting: the stream starts now, so that a client's idle timer sees its
        // keep-alives, and the wait goes on inside it; a failure then ends the stream.
        Err(_) => Ok(respond(streaming, Queued::Waiting(accepted))),
    }
}

/// A generation the engine accepted: the lease that holds its sequence, and its events.
struct Running {
    lease: Lease,
    events: EventStream,
    shared: Shared,
    /// The model as the client named it, which the metrics count under.
    label: String,
}

/// Where a stream's steps come from: the engine, or a test's script.
trait Steps: Send + 'static {
    /// The next step. Dropping the future before it is ready loses nothing, as waiting for a
    /// keep-alive's deadline does.
    fn next(&mut self) -> impl Future<Output = Step> + Send;
}

impl Steps for Running {
    /// A finished generation is counted here, however it is answered.
    async fn next(&mut self) -> Step {
        let step = Step::from(self.events.next().await);
        if let Step::Done(_, usage) = &step {
            self.shared.metrics.generation(&self.label, usage);
        }
        step
    }
}

impl Running {
    /// The whole answer, once the engine is done.
    async fn whole<E: Encoder>(
        mut self,
        encoder: &E,
        tools: &[Tool],
    ) -> Result<Response, ApiError> {
        let mut text = String::new();
        loop {
            match self.next().await {
                Step::Text(piece) => text.push_str(&piece),
                Step::Done(reason, usage) => {
                    // The sequence is free for the next request before the answer is written.
                    drop(self.lease);
                    let end = End::whole(text, tools, &call_ids::<E>(), reason, usage);
                    end.trace();
                    return Ok(axum::Json(encoder.whole(&end)).into_response());
                }
                Step::Failed(e) => return Err(e),
            }
        }
    }
}

/// The answer as a stream, written by a task that holds the steps (and so the lease) until
/// the stream ends or the client goes away (dropping the events then stops the engine's
/// work; dropping a wait leaves the queue).
fn respond<E: Encoder>(streaming: Streaming<E>, steps: impl Steps) -> Response {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(pump(streaming, steps, tx));
    E::FRAMING.response(rx)
}

/// A stream whose generation waits for its turn: its first step comes once the engine
/// accepted it, or is the failure that ended the wait.
enum Queued<F, S> {
    Waiting(std::pin::Pin<Box<F>>),
    Accepted(S),
}

impl<F, S> Steps for Queued<F, S>
where
    F: Future<Output = Result<S, ApiError>> + Send + 'static,
    S: Steps,
{
    /// Dropped at a keep-alive's deadline, the wait keeps its place: it lives in the box.
    async fn next(&mut self) -> Step {
        loop {
            match self {
                Queued::Accepted(steps) => return steps.next().await,
                Queued::Waiting(wait) => match wait.as_mut().await {
                    Ok(steps) => *self = Queued::Accepted(steps),
                    Err(e) => return Step::Failed(e),
                },
            }
        }
    }
}

/// Feeds `streaming` the steps of `steps` and sends its frames down `tx`, with a keep-alive
/// whenever nothing was sent for [`KEEP_ALIVE`], until the stream ends or the client goes.
async fn pump<E: Encoder>(
    mut streaming: Streaming<E>,
    mut steps: impl Steps,
    tx: mpsc::Sender<Bytes>,
) {
    let mut frames = streaming.start();
    let mut sent = Instant::now();
    loop {
        if !frames.is_empty() {
            for frame in frames {
                if tx.send(frame).await.is_err() {
                    return;
                }
            }
            sent = Instant::now();
        }
        if streaming.ended {
            return;
        }
        frames = match E::keep_alive() {
            Some(ping) => match timeout_at(sent + KEEP_ALIVE, steps.next()).await {
                Ok(step) => streaming.step(step),
                Err(_) => vec![ping],
            },
            None => streaming.step(steps.next().await),
        };
    }
}

/// What the engine did next, a failure already the error a client gets.
#[derive(Debug)]
enum Step {
    Text(String),
    Done(FinishReason, Usage),
    Failed(ApiError),
}

impl From<Option<Result<Event, ClientError>>> for Step {
    fn from(event: Option<Result<Event, ClientError>>) -> Step {
        match event {
            Some(Ok(Event::Text { text })) => Step::Text(text),
            Some(Ok(Event::Done {
                finish_reason,
                usage,
            })) => Step::Done(finish_reason, usage),
            Some(Ok(Event::Error { error })) => {
                Step::Failed(from_client(&ClientError::Refused(error)))
            }
            Some(Err(e)) => Step::Failed(from_client(&e)),
            // The events end only after the last one, where the driver stops reading.
            None => Step::Failed(from_client(&ClientError::Disconnected(None))),
        }
    }
}

impl End {
    /// What the reply came to, for `AISTACK_LOG=aistack_gateway=debug`: when an agent stalls
    /// on a small model, this shows which tools it called. Names only: arguments and text
    /// may carry the user's files.
    fn trace(&self) {
        let calls: Vec<&str> = self.calls.iter().map(|c| c.name.as_str()).collect();
        tracing::debug!(
            reason = ?self.reason,
            prompt_tokens = self.usage.prompt_tokens,
            cached_tokens = self.usage.cached_tokens,
            completion_tokens = self.usage.completion_tokens,
            text_bytes = self.text.len(),
            ?calls,
            "Reply finished"
        );
    }

    /// A whole reply's end: with tools offered, its calls taken out of its text.
    fn whole(
        text: String,
        tools: &[Tool],
        prefix: &str,
        reason: FinishReason,
        usage: Usage,
    ) -> End {
        let generated = !text.is_empty();
        let (text, calls) = if tools.is_empty() {
            (text, Vec::new())
        } else {
            let parsed = tools::parse(&text, tools, prefix);
            (parsed.content, parsed.calls)
        };
        End {
            text,
            calls,
            reason,
            usage,
            generated,
        }
    }
}

/// A stream being encoded: steps in, frames out. Pure, so a dialect's bytes are tested
/// without an engine.
struct Streaming<E> {
    encoder: E,
    tools: Vec<Tool>,
    /// Holds back what may be a tool call, when tools were offered.
    splitter: Option<Splitter>,
    generated: bool,
    /// Whether the last step came: nothing follows its frames.
    ended: bool,
    /// What the ids of its tool calls start with, before their index.
    call_prefix: String,
}

impl<E: Encoder> Streaming<E> {
    fn new(encoder: E, tools: Vec<Tool>, call_prefix: String) -> Self {
        Streaming {
            encoder,
            splitter: (!tools.is_empty()).then(Splitter::new),
            tools,
            generated: false,
            ended: false,
            call_prefix,
        }
    }

    fn start(&mut self) -> Vec<Bytes> {
        framed::<E>(&self.encoder.start())
    }

    /// The frames for the engine's next step: none for text the splitter holds back.
    fn step(&mut self, step: Step) -> Vec<Bytes> {
        match step {
            Step::Text(text) => {
                self.generated |= !text.is_empty();
                let shown = match &mut self.splitter {
                    Some(splitter) => splitter.push(&text),
                    None => &text,
                };
                if shown.is_empty() {
                    return Vec::new();
                }
                framed::<E>(&self.encoder.text(shown))
            }
            Step::Done(reason, usage) => {
                self.ended = true;
                let (text, calls) = match self.splitter.take() {
                    Some(splitter) => {
                        let (parsed, held) = splitter.finish(&self.tools, &self.call_prefix);
                        (held, parsed.calls)
                    }
                    None => (String::new(), Vec::new()),
                };
                let end = End {
                    text,
                    calls,
                    reason,
                    usage,
                    generated: self.generated,
                };
                end.trace();
                let mut frames = framed::<E>(&self.encoder.finish(&end));
                frames.extend(E::FRAMING.trailer());
                frames
            }
            Step::Failed(e) => {
                self.ended = true;
                framed::<E>(&self.encoder.fail(&e))
            }
        }
    }
}

fn framed<E: Encoder>(events: &[Value]) -> Vec<Bytes> {
    events.iter().map(|event| E::FRAMING.frame(event)).collect()
}

/// The start of the ids of one reply's tool calls (each adds its index): unique per reply,
/// because clients match a result to its call by id across the whole conversation, and
/// Claude Code drops a `tool_use` whose id an earlier turn used ("[Tool use interrupted]").
fn call_ids<E: Encoder>() -> String {
    format!("{}_", new_id(E::CALL_PREFIX))
}

/// An id for a reply, unique within this process and unlikely to repeat across restarts.
pub(crate) fn new_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{prefix}{:08x}{n:x}", nanos ^ std::process::id())
}

/// Engine events replayed through the driver's stream encoding, for tests of the bytes each
/// dialect sends.
#[cfg(test)]
pub(crate) mod replay {
    use aistack_engine_api::{Event, FinishReason, Tool, Usage};
    use serde_json::json;

    use super::{Encoder, Step, Streaming};

    /// The counts every replayed generation ends with.
    pub(crate) const USAGE: Usage = Usage {
        prompt_tokens: 10,
        cached_tokens: 4,
        completion_tokens: 3,
        time_to_first_token_ms: 12.5,
        prompt_ms: 5.0,
        decode_ms: 20.0,
    };

    /// The bytes a stream of `encoder` sends for `events`, with `tools` offered.
    pub(crate) fn replay<E: Encoder>(encoder: E, tools: Vec<Tool>, events: Vec<Event>) -> String {
        let mut streaming = Streaming::new(encoder, tools, E::CALL_PREFIX.to_owned());
        let mut frames = streaming.start();
        for event in events {
            frames.extend(streaming.step(Step::from(Some(Ok(event)))));
        }
        String::from_utf8(frames.concat()).expect("frames are UTF-8")
    }

    /// The weather tool, offered.
    pub(crate) fn weather() -> Vec<Tool> {
        vec![Tool {
            name: "get_weather".into(),
            description: Some("Weather".into()),
            parameters: json!({"type": "object"}),
        }]
    }

    /// The hardest stream to split: text, a tool call, and text after it.
    pub(crate) fn text_and_a_call<E: Encoder>(encoder: E) -> String {
        let call =
            r#"<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>"#;
        let events = ["Let me check.\n", call, " Done."]
            .into_iter()
            .map(|text| Event::Text { text: text.into() })
            .chain([Event::Done {
                finish_reason: FinishReason::Stop,
                usage: USAGE,
            }]);
        replay(encoder, weather(), events.collect())
    }
}

#[cfg(test)]
mod tests {
    use aistack_engine_api::{ErrorBody, ErrorKind};
    use serde_json::json;

    use super::replay::{USAGE, replay, text_and_a_call, weather};
    use super::*;

    /// Writes down what the driver hands an encoder.
    struct Probe;

    impl Encoder for Probe {
        const API: Api = Api::Ollama;
        const FRAMING: Framing = Framing::Sse;
        const CALL_PREFIX: &'static str = "c";

        fn whole(&self, end: &End) -> Value {
            json!({"end": end.text})
        }

        fn start(&mut self) -> Vec<Value> {
            vec![json!("start")]
        }

        fn text(&mut self, text: &str) -> Vec<Value> {
            vec![json!(text)]
        }

        fn finish(&mut self, end: &End) -> Vec<Value> {
            let calls: Vec<&str> = end.calls.iter().map(|c| c.id.as_str()).collect();
            vec![json!({"held": end.text, "calls": calls, "generated": end.generated})]
        }
    }

    fn text(text: &str) -> Event {
        Event::Text { text: text.into() }
    }

    #[test]
    fn a_stream_shows_text_holds_back_calls_and_ends_with_the_trailer() {
        assert_eq!(
            text_and_a_call(Probe),
            r#"data: "start"

data: "Let me check.\n"

data: {"calls":["c0"],"generated":true,"held":"\n Done."}

data: [DONE]

"#
        );
    }

    #[test]
    fn without_tools_every_piece_is_shown_as_it_comes() {
        let events = vec![text("a <tool_call>"), text("")];
        assert_eq!(
            replay(Probe, Vec::new(), events),
            "data: \"start\"\n\ndata: \"a <tool_call>\"\n\n"
        );
    }

    #[test]
    fn a_failure_mid_stream_ends_it_in_the_dialects_shape_without_the_trailer() {
        let failed = Event::Error {
            error: ErrorBody::new(ErrorKind::Internal, "The engine failed")
                .with_help("see its log"),
        };
        assert_eq!(
            replay(Probe, weather(), vec![text("Hi"), failed]),
            r#"data: "start"

data: "Hi"

data: {"error":"The engine failed; help: see its log"}

"#
        );
    }

    #[test]
    fn an_engine_gone_mid_stream_is_a_failure_too() {
        let mut streaming = Streaming::new(Probe, Vec::new(), "c".to_owned());
        let frames = streaming.step(Step::from(Some(Err(ClientError::Disconnected(None)))));
        assert!(streaming.ended);
        assert_eq!(
            frames.concat(),
            b"data: {\"error\":\"The model's engine stopped; the next request restarts it\"}\n\n"
        );
    }

    /// A scripted engine: each step comes at its second from the start. Like the engine's
    /// events, a step is taken only once it came, so a deadline passing loses none.
    struct Script {
        start: Instant,
        steps: std::collections::VecDeque<(u64, Step)>,
    }

    impl Steps for Script {
        async fn next(&mut self) -> Step {
            let at = self
                .steps
                .front()
                .expect("the script ends with its last step")
                .0;
            tokio::time::sleep_until(self.start + Duration::from_secs(at)).await;
            self.steps.pop_front().expect("the step is still there").1
        }
    }

    fn script(steps: Vec<(u64, Step)>) -> Script {
        Script {
            start: Instant::now(),
            steps: steps.into(),
        }
    }

    /// When (in whole seconds from the start) each frame of a stream of `script` is sent.
    async fn timed<E: Encoder>(
        encoder: E,
        tools: Vec<Tool>,
        steps: Vec<(u64, Step)>,
    ) -> Vec<(u64, String)> {
        timed_steps(encoder, tools, script(steps)).await
    }

    /// When (in whole seconds from the start) each frame of a stream of `steps` is sent.
    async fn timed_steps<E: Encoder>(
        encoder: E,
        tools: Vec<Tool>,
        steps: impl Steps,
    ) -> Vec<(u64, String)> {
        let (tx, mut rx) = mpsc::channel(64);
        let start = Instant::now();
        let ids = E::CALL_PREFIX.to_owned();
        tokio::spawn(pump(Streaming::new(encoder, tools, ids), steps, tx));
        let mut frames = Vec::new();
        while let Some(frame) = rx.recv().await {
            let frame = String::from_utf8(frame.to_vec()).expect("frames are UTF-8");
            frames.push((start.elapsed().as_secs(), frame.trim_end().to_owned()));
        }
        frames
    }

    fn done() -> Step {
        Step::Done(FinishReason::Stop, USAGE)
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_prompt_is_kept_alive_until_the_first_token() {
        let script = vec![(12, Step::Text("Hi".into())), (15, done())];
        let frames = timed(Probe, Vec::new(), script).await;
        let expected = [
            (0, "data: \"start\""),
            (5, ": keep-alive"),
            (10, ": keep-alive"),
            (12, "data: \"Hi\""),
            (15, "data: {\"calls\":[],\"generated\":true,\"held\":\"\"}"),
            (15, "data: [DONE]"),
        ];
        assert_eq!(frames, expected.map(|(t, f)| (t, f.to_owned())));
    }

    /// What a closure logs at debug level, as the daemon writes it.
    fn logged(run: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, run);
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn a_finished_reply_is_logged_with_its_calls_by_name_only() {
        let log = logged(|| {
            text_and_a_call(Probe);
        });
        assert!(log.contains("Reply finished"), "{log}");
        assert!(log.contains(r#"calls=["get_weather"]"#), "{log}");
        assert!(log.contains("completion_tokens=3"), "{log}");
        // The arguments and the text are the user's: they stay out of the log.
        assert!(!log.contains("Paris") && !log.contains("Done"), "{log}");
    }

    #[test]
    fn each_reply_numbers_its_tool_calls_under_a_prefix_of_its_own() {
        let (first, second) = (call_ids::<Probe>(), call_ids::<Probe>());
        assert_ne!(first, second);
        assert!(first.starts_with(Probe::CALL_PREFIX) && first.ends_with('_'));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_waiting_for_its_turn_is_kept_alive_and_then_answered() {
        // Another client's generation holds the engine for 12 s.
        let accepted = Box::pin(async {
            tokio::time::sleep(Duration::from_secs(12)).await;
            // The first token a second after the engine took it.
            Ok(script(vec![(1, Step::Text("Hi".into())), (1, done())]))
        });
        let frames = timed_steps(Probe, Vec::new(), Queued::Waiting(accepted)).await;
        let times: Vec<u64> = frames.iter().map(|(t, _)| *t).collect();
        assert_eq!(times, [0, 5, 10, 13, 13, 13], "{frames:?}");
        assert_eq!(frames[1].1, ": keep-alive");
        assert_eq!(frames[3].1, "data: \"Hi\"");
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_that_fails_ends_the_stream_with_the_error() {
        let accepted = Box::pin(async {
            tokio::time::sleep(Duration::from_secs(7)).await;
            Err::<Script, _>(ApiError::bad_request("The engine of `chat` failed to load"))
        });
        let frames = timed_steps(Probe, Vec::new(), Queued::Waiting(accepted)).await;
        assert_eq!(frames.len(), 3, "{frames:?}");
        assert_eq!(frames[1], (5, ": keep-alive".to_owned()));
        assert_eq!(frames[2].0, 7);
        assert!(frames[2].1.contains("failed to load"), "{frames:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn text_held_back_as_a_tool_call_is_silence_too() {
        let call =
            r#"<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>"#;
        let mut script: Vec<(u64, Step)> = (call.as_bytes().chunks(9).zip(1..))
            .map(|(piece, at)| (at, Step::Text(String::from_utf8_lossy(piece).into_owned())))
            .collect();
        script.push((12, done()));
        let frames = timed(Probe, weather(), script).await;
        let times: Vec<u64> = frames.iter().map(|(t, _)| *t).collect();
        assert_eq!(times, [0, 5, 10, 12, 12]);
        assert_eq!(frames[1].1, ": keep-alive");
    }

    #[tokio::test(start_paused = true)]
    async fn one_json_object_a_line_has_no_keep_alive() {
        struct Lines;
        impl Encoder for Lines {
            const API: Api = Api::Ollama;
            const FRAMING: Framing = Framing::Ndjson;
            const CALL_PREFIX: &'static str = "c";
            fn whole(&self, _: &End) -> Value {
                Value::Null
            }
            fn text(&mut self, text: &str) -> Vec<Value> {
                vec![json!(text)]
            }
            fn finish(&mut self, _: &End) -> Vec<Value> {
                vec![json!("end")]
            }
        }
        let frames = timed(
            Lines,
            Vec::new(),
            vec![(30, Step::Text("Hi".into())), (30, done())],
        )
        .await;
        assert_eq!(
            frames,
            [(30, "\"Hi\"".to_owned()), (30, "\"end\"".to_owned())]
        );
    }

    #[test]
    fn a_whole_reply_is_split_only_when_tools_were_offered() {
        let text = " <tool_call>{\"name\": \"get_weather\"}</tool_call> ";
        let end = |tools: &[Tool]| End::whole(text.into(), tools, "c", FinishReason::Stop, USAGE);
        let plain = end(&[]);
        assert_eq!((plain.text.as_str(), plain.calls.len()), (text, 0));
        let split = end(&weather());
        assert_eq!(split.text, "");
        assert_eq!(split.calls[0].id, "c0");
        assert_eq!(split.calls[0].arguments, "{}");
        assert!(split.generated);
        assert!(!End::whole(String::new(), &[], "c", FinishReason::Stop, USAGE).generated);
    }
}
