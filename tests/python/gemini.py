"""Calls an aistack gateway with Google's official `google-genai` Python SDK (the Gemini API)
and prints what came back as one JSON object, for tests/tests/serving.rs to check.

Usage: gemini.py HOST:PORT API_KEY CHAT_MODEL EMBED_MODEL
"""

import json
import sys

from google import genai
from google.genai import errors, types

host, key, chat, embed = sys.argv[1:5]
out = {}


def reason(candidate):
    """A finish reason as its name (the SDK makes it an enum)."""
    value = candidate.finish_reason
    return getattr(value, "value", value)


# The SDK sends the key as `x-goog-api-key`, and speaks the Gemini API's `v1` unless told
# otherwise (Gemini CLI speaks `v1beta`).
client = genai.Client(api_key=key, http_options=types.HttpOptions(base_url=f"http://{host}"))
beta = genai.Client(api_key=key, http_options=types.HttpOptions(base_url=f"http://{host}", api_version="v1beta"))
question = "What is the capital of France?"
greedy = types.GenerateContentConfig(max_output_tokens=12, temperature=0)

reply = client.models.generate_content(model=chat, contents=question, config=greedy)
usage = reply.usage_metadata
out["generate"] = {
    "text": reply.text,
    "finish_reason": reason(reply.candidates[0]),
    "role": reply.candidates[0].content.role,
    "prompt_tokens": usage.prompt_token_count,
    "candidates_tokens": usage.candidates_token_count,
    "total_tokens": usage.total_token_count,
    "model_version": reply.model_version,
    "has_response_id": bool(reply.response_id),
}

out["v1beta"] = beta.models.generate_content(model=chat, contents=question, config=greedy).text

streamed = ""
chunks = 0
last = None
for chunk in beta.models.generate_content_stream(model=chat, contents=question, config=greedy):
    chunks += 1
    streamed += chunk.text or ""
    last = chunk
out["stream"] = {
    "text": streamed,
    "chunks": chunks,
    "finish_reason": reason(last.candidates[0]),
    "candidates_tokens": last.usage_metadata.candidates_token_count,
}

out["count_tokens"] = client.models.count_tokens(model=chat, contents=question).total_tokens

out["models"] = sorted(m.name for m in client.models.list())
model = client.models.get(model=chat)
out["model"] = {
    "name": model.name,
    "input_token_limit": model.input_token_limit,
    "supported_actions": model.supported_actions,
}

# Google's OpenAPI-subset schema, upper-case types and all, through the engine's grammar.
city_schema = types.Schema(
    type=types.Type.OBJECT,
    properties={"name": types.Schema(type=types.Type.STRING), "population": types.Schema(type=types.Type.INTEGER)},
    required=["name", "population"],
)
described = client.models.generate_content(
    model=chat,
    contents="Describe Paris.",
    config=types.GenerateContentConfig(
        max_output_tokens=60, temperature=0, response_mime_type="application/json", response_schema=city_schema
    ),
)
out["json"] = json.loads(described.text)

weather = types.FunctionDeclaration(
    name="get_weather",
    description="The weather in a city",
    parameters=types.Schema(
        type=types.Type.OBJECT, properties={"city": types.Schema(type=types.Type.STRING)}, required=["city"]
    ),
)
tools = [types.Tool(function_declarations=[weather])]
forced = types.GenerateContentConfig(
    tools=tools,
    tool_config=types.ToolConfig(
        function_calling_config=types.FunctionCallingConfig(mode=types.FunctionCallingConfigMode.ANY)
    ),
    max_output_tokens=60,
    temperature=0,
)
asked = types.Content(role="user", parts=[types.Part.from_text(text="What is the weather in Paris?")])
called = client.models.generate_content(model=chat, contents=[asked], config=forced)
call = called.function_calls[0]
out["function_call"] = {"name": call.name, "args": call.args, "finish_reason": reason(called.candidates[0])}
# The second turn: the model's call and the function's response go back in the history.
answered = client.models.generate_content(
    model=chat,
    contents=[
        asked,
        called.candidates[0].content,
        types.Content(
            role="user", parts=[types.Part.from_function_response(name=call.name, response={"output": "Sunny, 21 C"})]
        ),
    ],
    config=types.GenerateContentConfig(tools=tools, max_output_tokens=20, temperature=0),
)
out["function_answer"] = {
    "parts": len(answered.candidates[0].content.parts),
    "finish_reason": reason(answered.candidates[0]),
}

embedded = client.models.embed_content(model=embed, contents=["a cat", "a stock market"])
out["embed"] = {"count": len(embedded.embeddings), "dims": len(embedded.embeddings[0].values)}

try:
    client.models.generate_content(model="gemini-2.5-flash", contents=question, config=greedy)
except errors.ClientError as e:
    out["unknown_model"] = {"code": e.code, "status": e.status, "message": e.message}

print(json.dumps(out))
