"""Drives the official OpenAI Python SDK against two base URLs (direct and through tollgate) and
prints what it received from each as JSON, for tests/openai_sdk.rs to compare."""
import json
import sys

from openai import OpenAI


def collect(base_url: str, model: str) -> dict:
    client = OpenAI(base_url=base_url, api_key="sk-not-used", max_retries=0, timeout=30)
    messages = [{"role": "user", "content": "Write one sentence about the sea."}]
    out = {}

    stream = client.chat.completions.create(model=model, messages=messages, stream=True, max_tokens=12)
    chunks = list(stream)
    out["chat_stream_text"] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    out["chat_stream_usage_chunks"] = sum(1 for c in chunks if c.usage is not None)
    out["chat_stream_chunks"] = len(chunks)

    stream = client.chat.completions.create(
        model=model, messages=messages, stream=True, max_tokens=12, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    usage = [c.usage for c in chunks if c.usage is not None]
    out["chat_stream_asked_usage"] = usage[-1].model_dump() if usage else None

    resp = client.chat.completions.create(model=model, messages=messages, max_tokens=12)
    out["chat_text"] = resp.choices[0].message.content
    out["chat_usage"] = resp.usage.model_dump()

    stream = client.completions.create(model=model, prompt="The sea is", stream=True, max_tokens=8)
    out["completion_stream_text"] = "".join(c.choices[0].text for c in stream if c.choices)

    emb = client.embeddings.create(model=model, input=["tide", "harbour"])
    out["embeddings"] = [[round(x, 5) for x in d.embedding] for d in emb.data]
    out["embedding_tokens"] = emb.usage.prompt_tokens

    try:
        client.chat.completions.create(model="no-such-model", messages=messages)
        out["unknown_model"] = None
    except Exception as e:  # the SDK raises NotFoundError for a 404
        out["unknown_model"] = type(e).__name__
    return out


if __name__ == "__main__":
    direct, proxied, model = sys.argv[1], sys.argv[2], sys.argv[3]
    print(json.dumps({"direct": collect(direct, model), "proxy": collect(proxied, model)}))
