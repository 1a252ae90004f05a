"""Calls an aistack gateway's Responses API with the official `openai` Python client and prints
what came back as one JSON object, for tests/tests/serving.rs to check. The SDK parses every
body and event into its own models, so an answer it cannot read fails here.

Usage: responses.py HOST:PORT CHAT_MODEL
"""

import json
import sys

import openai

host, chat = sys.argv[1:3]
out = {}

client = openai.OpenAI(base_url=f"http://{host}/v1", api_key="unused", max_retries=0)
question = dict(
    model=chat,
    instructions="Answer in one short sentence.",
    input="What is the capital of France?",
    max_output_tokens=12,
    temperature=0,
)

reply = client.responses.create(**question)
out["create"] = {
    "id": reply.id,
    "status": reply.status,
    "incomplete_reason": reply.incomplete_details.reason if reply.incomplete_details else None,
    "text": reply.output_text,
    "types": [item.type for item in reply.output],
    "output_tokens": reply.usage.output_tokens,
    "total_tokens": reply.usage.total_tokens,
    "instructions": reply.instructions,
}

# Every event of a raw stream, in order, with what the last one says.
events = []
streamed = ""
final = None
for event in client.responses.create(**question, stream=True):
    events.append({"type": event.type, "sequence_number": event.sequence_number})
    if event.type == "response.output_text.delta":
        streamed += event.delta
    if event.type in ("response.completed", "response.incomplete"):
        final = event.response
out["stream"] = {
    "events": events,
    "text": streamed,
    "final_status": final.status,
    "final_text": final.output_text,
    "output_tokens": final.usage.output_tokens,
}

# A function the model must call, through the SDK's stream helper (which rebuilds the response
# from the events and checks their order and identities), then a second turn with its output.
tools = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
]
asked = [{"role": "user", "content": "What is the weather in Paris?"}]
with client.responses.stream(
    model=chat, input=asked, tools=tools, tool_choice="required", max_output_tokens=60, temperature=0
) as stream:
    names = [event.type for event in stream]
    called = stream.get_final_response()
calls = [item for item in called.output if item.type == "function_call"]
out["tool_stream"] = {
    "events": names,
    "status": called.status,
    "calls": [{"name": c.name, "arguments": json.loads(c.arguments), "call_id": c.call_id} for c in calls],
}

first = client.responses.create(
    model=chat, input=asked, tools=tools, tool_choice="required", max_output_tokens=60, temperature=0
)
call = next(item for item in first.output if item.type == "function_call")
# The output items go back as input as they came, as OpenAI's guide does.
history = asked + first.output + [{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"}]
second = client.responses.create(model=chat, input=history, tools=tools, max_output_tokens=30, temperature=0)
out["tool_turn"] = {
    "name": call.name,
    "arguments": json.loads(call.arguments),
    "call_id": call.call_id,
    "status": first.status,
    "second_status": second.status,
    "second_types": [item.type for item in second.output],
    "second_input_tokens": second.usage.input_tokens,
    "first_input_tokens": first.usage.input_tokens,
}

# A namespace's function, called by its own name: the call comes back in its namespace.
forecast = {
    "type": "namespace",
    "name": "weather",
    "description": "Weather tools",
    "tools": [{"type": "function", "name": "forecast", "parameters": tools[0]["parameters"]}],
}
spaced = client.responses.create(
    model=chat,
    input=asked,
    tools=[forecast],
    tool_choice={"type": "function", "name": "forecast"},
    max_output_tokens=60,
    temperature=0,
)
spaced_call = next(item for item in spaced.output if item.type == "function_call")
out["namespace"] = {"namespace": spaced_call.namespace, "name": spaced_call.name}

# JSON held to a schema by the engine's grammar.
city = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["name", "population"],
}
shaped = client.responses.create(
    model=chat,
    input="Describe Paris.",
    text={"format": {"type": "json_schema", "name": "city", "schema": city, "strict": True}},
    max_output_tokens=60,
    temperature=0,
)
out["schema"] = {"status": shaped.status, "text": shaped.output_text}

# What a gateway that keeps nothing and hosts no tools cannot do is ignored, not refused:
# the same question gets the same greedy answer.
ignored = client.responses.create(
    **question,
    reasoning={"effort": "high", "summary": "auto"},
    include=["reasoning.encrypted_content"],
    store=True,
    tools=[{"type": "web_search"}],
)
out["ignored"] = {"status": ignored.status, "text": ignored.output_text, "store": ignored.store}

print(json.dumps(out))
