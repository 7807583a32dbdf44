"""Reading a streamed chat completion (server-sent events), and keeping a key out of any text.

A streamed reply arrives as `data: {json chunk}` lines ending with `data: [DONE]`; each chunk carries
a piece of the message (`choices[0].delta`: `content`, `reasoning_content` or `reasoning`) and, with
`stream_options.include_usage`, a last chunk with `usage` and no choices. `StreamState` folds them
into the body a non-streamed reply would have had, so everything after the wire is one code path,
and knows what a cut-off stream delivered so far (what a timed-out attempt is charged).
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from urllib.parse import quote, quote_plus


@dataclass
class StreamState:
    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    usage: object = None  # the last `usage` object seen (validated by the caller)
    finish_reason: str | None = None
    done: bool = False  # `data: [DONE]` arrived
    chunks: int = 0  # data chunks read
    error: object = None  # an `error` object sent inside the stream (vLLM does so mid-generation)
    unreadable: int = 0  # data lines that were not JSON objects

    def feed(self, line: str) -> None:
        """One line of the event stream; comments, `event:` and blank lines carry nothing we need."""
        if not line.startswith("data:"):
            return
        data = line[5:].strip()
        if data == "[DONE]":
            self.done = True
            return
        try:
            chunk = json.loads(data)
        except (json.JSONDecodeError, RecursionError):
            self.unreadable += 1
            return
        if not isinstance(chunk, dict):
            self.unreadable += 1
            return
        self.chunks += 1
        if chunk.get("error") is not None:
            self.error = chunk["error"]
        if chunk.get("usage") is not None:
            self.usage = chunk["usage"]
        choices = chunk.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            choice = choices[0]
            delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
            for key, parts in (("content", self.content), ("reasoning_content", self.reasoning),
                               ("reasoning", self.reasoning)):
                if isinstance(delta.get(key), str):
                    parts.append(delta[key])
            if isinstance(choice.get("text"), str):  # a completions-style chunk
                self.content.append(choice["text"])
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])

    @property
    def finished(self) -> bool:
        """The server ended the message (a finish reason, or [DONE]) without an error."""
        return self.error is None and (self.done or self.finish_reason is not None)

    def received_bytes(self) -> int:
        """UTF-8 bytes of the text received: a byte-level BPE token covers at least one byte, so this
        bounds the completion tokens the server generated for it."""
        return sum(len(part.encode("utf-8")) for part in (*self.content, *self.reasoning))

    def body(self) -> dict:
        """The non-streamed reply this stream amounts to."""
        message: dict = {"role": "assistant", "content": "".join(self.content)}
        if self.reasoning:
            message["reasoning"] = "".join(self.reasoning)
        body: dict = {"object": "chat.completion",
                      "choices": [{"index": 0, "message": message, "finish_reason": self.finish_reason}]}
        if self.usage is not None:
            body["usage"] = self.usage
        return body


def key_forms(key: str | None) -> list[str]:
    """Every way a server may echo the key: as sent, JSON-escaped (ASCII or not), URL-encoded, base64."""
    if not key:
        return []
    forms = {key, json.dumps(key)[1:-1], json.dumps(key, ensure_ascii=False)[1:-1], quote(key, safe=""),
             quote_plus(key), base64.b64encode(key.encode()).decode(),
             base64.b64encode(f"Bearer {key}".encode()).decode()}
    return sorted(forms, key=len, reverse=True)  # longest first: a form never leaves a piece of another


def redact(text: str, key: str | None) -> str:
    """`text` with every form of the key replaced; run it on the whole text, before any truncation
    (cutting first could leave most of a key on the cut's edge)."""
    for form in key_forms(key):
        text = text.replace(form, "***")
    return text
