"""Calls an aistack gateway's Anthropic Messages API with the official `anthropic` Python
client, sending what Claude Code sends (thinking blocks in the history, images, a `system`
message, Anthropic's server tools, the beta endpoint), and prints what came back as one JSON
object for tests/tests/serving.rs to check. The SDK parses every body and event into its own
models, so an answer it cannot read fails here.

Usage: anthropic_client.py HOST:PORT CHAT_MODEL
"""

import json
import sys

import anthropic

host, chat = sys.argv[1:3]
out = {}

client = anthropic.Anthropic(base_url=f"http://{host}", api_key="unused", max_retries=0)
QUESTION = "What is the capital of France?"
SYSTEM = "Answer in one short sentence."
# A 1x1 PNG: the engine cannot see it, so it must be dropped rather than refused.
PIXEL = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
# Today's SDK has no `temperature` argument; the API still reads one from the body.
greedy = dict(model=chat, max_tokens=12, extra_body={"temperature": 0})


def text_of(message):
    return "".join(block.text for block in message.content if block.type == "text")


plain = client.messages.create(
    **greedy, system=SYSTEM, messages=[{"role": "user", "content": QUESTION}]
)
out["plain"] = {
    "text": text_of(plain),
    "stop_reason": plain.stop_reason,
    "output_tokens": plain.usage.output_tokens,
}

# The same question with an image beside it and the system prompt as a message.
with_image = client.messages.create(
    **greedy,
    messages=[
        {"role": "system", "content": SYSTEM},
        {
            "role": "user",
            "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PIXEL}},
                {"type": "text", "text": QUESTION},
            ],
        },
    ],
)
out["with_image"] = text_of(with_image)

# A history whose assistant turn thought first, as Claude Code's do with extended thinking.
history = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": [{"type": "text", "text": "Hello! How can I help?"}]},
    {"role": "user", "content": QUESTION},
]
thought = json.loads(json.dumps(history))
thought[1]["content"].insert(
    0, {"type": "thinking", "thinking": "The user greets me.", "signature": "c2lnbmF0dXJl"}
)
thought[1]["content"].insert(1, {"type": "redacted_thinking", "data": "b3BhcXVl"})
out["history"] = text_of(client.messages.create(**greedy, system=SYSTEM, messages=history))
out["thought"] = text_of(client.messages.create(**greedy, system=SYSTEM, messages=thought))

# Streamed through the SDK's helper, which rebuilds the message from the events.
with client.messages.stream(
    **greedy, system=SYSTEM, messages=[{"role": "user", "content": QUESTION}]
) as stream:
    streamed = "".join(stream.text_stream)
    final = stream.get_final_message()
out["stream"] = {"text": streamed, "final_text": text_of(final), "stop_reason": final.stop_reason}

# The beta endpoint (`?beta=true`) that Claude Code calls.
beta = client.beta.messages.create(
    **greedy, system=SYSTEM, messages=[{"role": "user", "content": QUESTION}]
)
out["beta"] = text_of(beta)

# A client tool the model must call, beside a server tool that stays with Anthropic.
tools = [
    {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
    {"type": "web_search_20250305", "name": "web_search", "max_uses": 1},
]
ask = [{"role": "user", "content": "What is the weather in Paris?"}]
forced = dict(
    model=chat,
    max_tokens=40,
    extra_body={"temperature": 0},
    tools=tools,
    tool_choice={"type": "tool", "name": "get_weather"},
)
called = client.messages.create(**forced, messages=ask)
use = next(block for block in called.content if block.type == "tool_use")
out["tool"] = {"stop_reason": called.stop_reason, "name": use.name, "input": use.input, "id": use.id}

with client.messages.stream(**forced, messages=ask) as stream:
    final = stream.get_final_message()
use_streamed = next(block for block in final.content if block.type == "tool_use")
out["tool_stream"] = {
    "stop_reason": final.stop_reason,
    "name": use_streamed.name,
    "input": use_streamed.input,
    "id": use_streamed.id,
}

answer = client.messages.create(
    model=chat,
    max_tokens=12,
    extra_body={"temperature": 0},
    tools=tools,
    messages=ask
    + [
        {"role": "assistant", "content": [{"type": "tool_use", "id": use.id, "name": use.name, "input": use.input}]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Sunny, 21 degrees."}],
        },
    ],
)
out["tool_result"] = {"stop_reason": answer.stop_reason, "text": text_of(answer)}

counted = client.messages.count_tokens(
    model=chat, system=SYSTEM, messages=[{"role": "user", "content": QUESTION}]
)
out["count"] = counted.input_tokens
out["plain_input"] = plain.usage.input_tokens + (plain.usage.cache_read_input_tokens or 0)

print(json.dumps(out))
