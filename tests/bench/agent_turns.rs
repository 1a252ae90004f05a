//! An agent's conversation, as a coding agent sends it: a long system prompt and tool
//! declarations, a task, then one tool call and its result per turn, the whole of it
//! resent every turn. Turn 5 is about 12k tokens on Qwen's tokenizer.

use serde_json::{Value, json};

/// Turns per conversation; the benchmark times the last.
pub const TURNS: usize = 5;

/// The system prompt: rules of the kind agents send (about 9.5k tokens), the same for
/// every conversation, so that a server can keep it between conversations as it would
/// between an agent's sessions.
fn system() -> String {
    let topics = [
        (
            "editing",
            "Read a file before you change it, change the least that fixes the problem, and keep the file's style",
        ),
        (
            "testing",
            "Run the project's tests after a change and read a failure in full before you act on it",
        ),
        (
            "shell",
            "Prefer one command that answers the question over several that each answer part of it",
        ),
        (
            "git",
            "Never rewrite history the user has pushed; commit only when asked, with a message that says why",
        ),
        (
            "search",
            "Search by symbol before you read whole directories, and say which files you looked at",
        ),
        (
            "safety",
            "Do not run commands that delete data outside the workspace, and ask before any that reach the network",
        ),
        (
            "answers",
            "Answer in plain prose, short, with the paths and line numbers the user needs to check you",
        ),
        (
            "planning",
            "For work over several files, write the plan first and keep it current as you go",
        ),
    ];
    let mut text = String::from(
        "You are a coding agent working in the user's repository through the tools below. \
         Follow every rule of this prompt.\n",
    );
    for round in 1..=12 {
        for (i, (topic, rule)) in topics.iter().enumerate() {
            text.push_str(&format!(
                "\n## Rule {round}.{n}: {topic}\n{rule}. This holds in module `src/{topic}_{round}.rs` \
                 as everywhere else; where a file of that module disagrees, the rule wins and you \
                 say so in your answer, naming the function `{topic}_step_{round}_{n}` and its caller.\n",
                n = i + 1
            ));
        }
    }
    text
}

fn tools() -> Value {
    let tool = |name: &str, description: &str, params: Value| {
        json!({"type": "function", "function": {
            "name": name, "description": description,
            "parameters": {"type": "object", "properties": params, "required": ["path"]},
        }})
    };
    json!([
        tool(
            "read_file",
            "Read a file of the workspace.",
            json!({"path": {"type": "string"}})
        ),
        tool(
            "list_dir",
            "List a directory of the workspace.",
            json!({"path": {"type": "string"}})
        ),
        tool(
            "grep",
            "Search files for a pattern.",
            json!({"path": {"type": "string"}, "pattern": {"type": "string"}})
        ),
        tool(
            "write_file",
            "Replace a file's contents.",
            json!({"path": {"type": "string"}, "contents": {"type": "string"}})
        ),
    ])
}

/// What a tool read back on turn `turn`: a source file of about 600 tokens.
fn file(turn: usize) -> String {
    let mut text = format!("// src/parser_{turn}.rs\nuse crate::lexer::{{Token, Lexer}};\n\n");
    for f in 0..12 {
        text.push_str(&format!(
            "/// Parses production {f} of stage {turn}.\npub fn parse_{turn}_{f}(lexer: &mut Lexer) -> Result<Node, Error> {{\n    let token = lexer.next().ok_or(Error::Eof)?;\n    match token {{\n        Token::Ident(name) => Ok(Node::Name(name)),\n        other => Err(Error::Unexpected(other, {f})),\n    }}\n}}\n\n"
        ));
    }
    text
}

/// The messages of turn `turn` (1-based) of conversation `session`: its task names the
/// session, so no two conversations share more than the system prompt.
pub fn request(session: usize, turn: usize, model: &str) -> Value {
    let mut messages = vec![
        json!({"role": "system", "content": system()}),
        json!({"role": "user", "content": format!(
            "Session {session}: the parser tests fail since yesterday. Find the cause and tell me which function to fix."
        )}),
    ];
    for done in 1..turn {
        let id = format!("call_{session}_{done}");
        messages.push(json!({"role": "assistant", "content": null, "tool_calls": [{
            "id": id, "type": "function",
            "function": {"name": "read_file", "arguments": json!({"path": format!("src/parser_{done}.rs")}).to_string()},
        }]}));
        messages.push(json!({"role": "tool", "tool_call_id": id, "content": file(done)}));
    }
    json!({
        "model": model, "messages": messages, "tools": tools(),
        "temperature": 0, "max_tokens": 1, "stream": true,
        "stream_options": {"include_usage": true},
    })
}
