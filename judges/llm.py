"""The llm judge: a critic model behind any OpenAI-compatible chat-completions endpoint
(vLLM serve, SGLang, a hosted provider). Paper judge: QwQ-32B at temperature 0.5, top_p 0.95.

Requests go out asynchronously over kept-alive connections, max_concurrency at a time (a served
model batches them); `judge` / `judge_batch` are the sync faces of `ajudge`."""
from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any, AsyncIterator

from judges.base import BeforeRetryCost, Cost, Judge, Verdict, run_sync
from judges.chat_client import Attempt, ChatClient, JudgeError, JudgeRequestError
from judges.config import LLMJudgeConfig
from judges.critic import CRITIC_SYSTEM, PROMPT_VERSION, critic_prompt, parse_verdict
from judges.registry import register_judge

# Tokens a chat template may add around the prompt (role tags, a default system prompt).
TEMPLATE_TOKEN_ALLOWANCE = 256


@register_judge("llm", config=LLMJudgeConfig)
class LLMJudge(Judge):

    def __init__(self, base_url: str = "http://127.0.0.1:8000/v1", model: str = "default",
                 api_key_env: str = "PRMLOOP_JUDGE_API_KEY", temperature: float = 0.5, top_p: float = 0.95,
                 max_tokens: int = 4096, timeout_s: float = 120.0, deadline_s: float = 1800.0, max_retries: int = 4,
                 backoff_base_s: float = 1.0, backoff_max_s: float = 30.0, max_concurrency: int = 64,
                 wait_s: float = 0.0, stream: bool = True):
        self.model, self.temperature, self.top_p, self.max_tokens = model, temperature, top_p, max_tokens
        self.max_concurrency = max_concurrency
        self.client = ChatClient(base_url, api_key_env, timeout_s=timeout_s, deadline_s=deadline_s,
                                 max_retries=max_retries, backoff_base_s=backoff_base_s,
                                 backoff_max_s=backoff_max_s, max_concurrency=max_concurrency, wait_s=wait_s,
                                 stream=stream)
        self.max_attempts = self.client.max_attempts

    @property
    def identity(self) -> str:
        # What changes answers: model, sampling, prompt. Not the URL (the same model served elsewhere
        # answers alike) and never the key.
        return (f"llm:{self.model}|T={self.temperature}|top_p={self.top_p}|max_tokens={self.max_tokens}"
                f"|prompt={PROMPT_VERSION}")

    def __repr__(self) -> str:
        return f"LLMJudge({self.identity!r}, url={self.client.url!r}, api_key_env={self.client.api_key_env!r})"

    def token_bound(self, question: str, steps: list[str]) -> int:
        return self._bound(critic_prompt(question, steps))

    def _bound(self, prompt: str) -> int:
        # A byte-level BPE token covers at least one byte, so the prompt's UTF-8 length bounds its tokens.
        return len((CRITIC_SYSTEM + prompt).encode("utf-8")) + TEMPLATE_TOKEN_ALLOWANCE + self.max_tokens

    def attempt_cost(self, attempt: Attempt, bound: int, max_tokens: int | None = None) -> Cost:
        """What a provider may bill for one attempt: the reported usage when it is valid; for a stream cut
        short, the prompt's bound and the text received (bytes bound tokens); the call's whole bound
        when it may have generated and reported nothing usable; nothing if it never left. `max_tokens`:
        the call's completion cap, when not the judge's."""
        cap = self.max_tokens if max_tokens is None else max_tokens
        prompt_bound = bound - cap
        if not attempt.sent:
            return Cost(seconds=attempt.seconds)
        if attempt.usage is not None:
            prompt, completion = attempt.usage
        elif attempt.received is not None:
            prompt, completion = prompt_bound, min(attempt.received, cap)
        elif attempt.maybe_generated:
            prompt, completion = prompt_bound, cap
        elif attempt.status is None:  # a stream that never started: the prompt may have been read
            prompt, completion = prompt_bound, 0
        else:  # an error status: the provider refused before generating
            prompt = completion = 0
        return Cost(1, prompt, completion, attempt.seconds)

    def check(self) -> Cost:
        """Start-up check, before any generation: the models list (reachable, key accepted, `model`
        served) and one tiny request (max_tokens=1) through the full request path. Raises JudgeError
        naming what to fix; returns what the tiny request cost."""
        return run_sync(self._acheck())

    async def _acheck(self) -> Cost:
        async with self.client:
            served = await self.client.served_models()
            if served is not None and self.model not in served:
                raise JudgeRequestError(f"judge.model={self.model!r} is not served at {self.client.base_url}; "
                                        f"it serves {sorted(served)}: set judge.model to one of them")
            payload = {"model": self.model, "max_tokens": 1, "temperature": self.temperature, "top_p": self.top_p,
                       "messages": [{"role": "system", "content": CRITIC_SYSTEM},
                                    {"role": "user", "content": "Reply with \\boxed{-1}."}]}
            try:
                reply = await self.client.acomplete(payload)
            except JudgeError as exc:
                raise type(exc)(f"judge start-up check failed: {exc}", exc.attempts) from None
        bound = len(json.dumps(payload["messages"]).encode("utf-8")) + TEMPLATE_TOKEN_ALLOWANCE + 1
        return sum((self.attempt_cost(a, bound, max_tokens=1) for a in reply.attempts), Cost())

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[None]:
        async with self.client:
            yield

    async def ajudge(self, question: str, steps: list[str], before_retry: BeforeRetryCost | None = None) -> Verdict:
        """One verdict. Attempts that fail are passed to `before_retry` as costs (the ledger bills them and
        may refuse a retry); the verdict's cost is what `before_retry` has not seen. Raises JudgeError
        (its `cost`: attempts not yet billed) when no 200 came back."""
        prompt = critic_prompt(question, steps)
        bound = self._bound(prompt)
        payload = {
            "model": self.model,
            "messages": [{"role": "system", "content": CRITIC_SYSTEM}, {"role": "user", "content": prompt}],
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
        }

        async def hook(attempt: Attempt) -> bool:
            return await before_retry(self.attempt_cost(attempt, bound)) if before_retry else True
        try:
            reply = await self.client.acomplete(payload, hook if before_retry else None)
        except JudgeError as exc:
            exc.cost = sum((self.attempt_cost(a, bound) for a in exc.attempts), Cost())  # type: ignore[attr-defined]
            raise
        cost = sum((self.attempt_cost(a, bound) for a in reply.attempts), Cost())
        raw = reply_text(reply.body) if reply.body is not None else None
        if raw is None:  # a paid 200 of a shape we cannot read: an invalid verdict, recorded with its cost
            return Verdict(None, raw=f"[unreadable reply] {self.client.redact(reply.text)[:2000]}", cost=cost)
        return Verdict(parse_verdict(raw, len(steps)), raw=self.client.redact(raw), cost=cost)

    def judge(self, question: str, steps: list[str]) -> Verdict:
        return run_sync(self.ajudge(question, steps))

    def judge_batch(self, items: list[tuple[str, list[str]]]) -> list[Verdict]:
        async def run_all() -> list[Verdict]:
            async with self.client:
                return list(await asyncio.gather(*(self.ajudge(q, s) for q, s in items)))
        return run_sync(run_all())

    @classmethod
    def from_config(cls, cfg: Any, **context: Any) -> "LLMJudge":
        return cls(base_url=cfg.base_url, model=cfg.model, api_key_env=cfg.api_key_env,
                   temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens,
                   timeout_s=cfg.timeout_s, deadline_s=cfg.deadline_s, max_retries=cfg.max_retries,
                   backoff_base_s=cfg.backoff_base_s, backoff_max_s=cfg.backoff_max_s,
                   max_concurrency=cfg.max_concurrency, wait_s=cfg.wait_s, stream=cfg.stream)


def reply_text(body: dict) -> str | None:
    """The completion's text, or None when the body has no readable text. A reasoning server's separate
    reasoning goes first, inside <think> tags, so it is kept in the ledger but never read as the verdict.
    `content` may be a string or a list of parts ({"type": "text", "text": ...} or strings)."""
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    choice = choices[0]
    message = choice.get("message")
    if isinstance(message, dict):
        content, reasoning = _text(message.get("content")), _text(message.get("reasoning_content")
                                                                   or message.get("reasoning"))
    elif "text" in choice:  # a completions-style choice
        content, reasoning = _text(choice.get("text")), ""
    else:
        return None
    if content is None or reasoning is None:
        return None
    return f"<think>{reasoning}</think>{content}" if reasoning else content


def _text(value: object) -> str | None:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for part in value:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif not (isinstance(part, dict) and part.get("type") not in (None, "text")):
                return None  # a non-text part (image, refusal...) is skipped; anything else is unreadable
        return "".join(parts)
    return None
