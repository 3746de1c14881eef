#!/usr/bin/env python3
"""Drives a running `ferrinfer serve` with the official `openai` Python client (pip install openai).

    ferrinfer serve --port 8000 --api-key KEY &
    FERRINFER_URL=http://127.0.0.1:8000/v1 FERRINFER_API_KEY=KEY python3 scripts/openai-client-check.py

Checks /v1/models, chat (whole and streamed, with the usage chunk), a completion with a stop
sequence, a 400 for max_tokens = 0 and a 401 for a wrong key (the last only when a key is set).
Loopback only. Exits non-zero on the first failure.
"""
import os
import sys
from urllib.parse import urlparse

import openai
from openai import OpenAI

url = os.environ.get("FERRINFER_URL", "http://127.0.0.1:8000/v1")
key = os.environ.get("FERRINFER_API_KEY")
host = urlparse(url).hostname
if host not in ("127.0.0.1", "localhost", "::1") and not (host or "").startswith("127."):
    sys.exit(f"{url}: loopback addresses only")
c = OpenAI(base_url=url, api_key=key or "none")
model = c.models.list().data[0].id
print("model:", model)
msgs = [{"role": "user", "content": "What is the capital of France?"}]
r = c.chat.completions.create(model=model, messages=msgs, max_tokens=12, temperature=0)
whole = r.choices[0].message.content
print("chat:", repr(whole), r.choices[0].finish_reason, r.usage)
parts, usage = [], None
for ch in c.chat.completions.create(model=model, messages=msgs, max_tokens=12, temperature=0,
                                    stream=True, stream_options={"include_usage": True}):
    if ch.choices and ch.choices[0].delta.content:
        parts.append(ch.choices[0].delta.content)
    usage = ch.usage or usage
assert "".join(parts) == whole, ("".join(parts), whole)
assert usage is not None and usage.completion_tokens == r.usage.completion_tokens
print("stream: same text,", usage)
r = c.completions.create(model=model, prompt="The capital of France is", max_tokens=8,
                         temperature=0, stop=["."])
assert "." not in r.choices[0].text and r.choices[0].finish_reason == "stop", r
print("completion:", repr(r.choices[0].text), r.choices[0].finish_reason)
try:
    c.completions.create(model=model, prompt="hi", max_tokens=0)
    sys.exit("max_tokens = 0 was accepted")
except openai.BadRequestError as e:
    print("400:", e.body["message"])
if key:
    try:
        OpenAI(base_url=url, api_key=key + "-wrong").models.list()
        sys.exit("a wrong key was accepted")
    except openai.AuthenticationError as e:
        print("401:", e.body["message"])
print("ok")
