"""Calls an aistack gateway with the official `openai` and `ollama` Python clients and prints
what came back as one JSON object, for tests/tests/serving.rs to check.

Usage: clients.py HOST:PORT CHAT_MODEL EMBED_MODEL
"""

import json
import math
import sys

import ollama
import openai

host, chat, embed = sys.argv[1:4]
out = {}

client = openai.OpenAI(base_url=f"http://{host}/v1", api_key="unused", max_retries=0)
messages = [{"role": "user", "content": "What is the capital of France?"}]
reply = client.chat.completions.create(model=chat, messages=messages, max_tokens=12, temperature=0)
out["openai_chat"] = {
    "text": reply.choices[0].message.content,
    "finish_reason": reply.choices[0].finish_reason,
    "completion_tokens": reply.usage.completion_tokens,
}
streamed = ""
chunks = 0
for chunk in client.chat.completions.create(
    model=chat, messages=messages, max_tokens=12, temperature=0, stream=True
):
    chunks += 1
    if chunk.choices and chunk.choices[0].delta.content:
        streamed += chunk.choices[0].delta.content
out["openai_stream"] = {"text": streamed, "chunks": chunks}
completion = client.completions.create(model=chat, prompt="The sky is", max_tokens=5, temperature=0)
out["openai_completion"] = {"text": completion.choices[0].text, "tokens": completion.usage.completion_tokens}
vectors = client.embeddings.create(model=embed, input=["a cat", "a stock market"])
out["openai_embeddings"] = {
    "count": len(vectors.data),
    "dims": len(vectors.data[0].embedding),
    "norm": math.sqrt(sum(x * x for x in vectors.data[0].embedding)),
}
out["openai_models"] = sorted(m.id for m in client.models.list())

o = ollama.Client(host=f"http://{host}")
chat_reply = o.chat(model=chat, messages=messages, options={"num_predict": 12, "temperature": 0})
out["ollama_chat"] = {"text": chat_reply.message.content, "eval_count": chat_reply.eval_count, "done": chat_reply.done}
streamed = "".join(
    part.message.content
    for part in o.chat(model=chat, messages=messages, options={"num_predict": 12, "temperature": 0}, stream=True)
)
out["ollama_stream"] = {"text": streamed}
generated = o.generate(model=chat, prompt="Say hello", options={"num_predict": 6, "temperature": 0})
out["ollama_generate"] = {"text": generated.response, "done_reason": generated.done_reason}
embedded = o.embed(model=embed, input="a cat")
out["ollama_embed"] = {"dims": len(embedded.embeddings[0])}
out["ollama_list"] = sorted(m.model for m in o.list().models)
shown = o.show(chat)
out["ollama_show"] = {"capabilities": list(shown.capabilities or [])}
out["ollama_ps"] = sorted(m.model for m in o.ps().models)

print(json.dumps(out))
