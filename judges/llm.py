"""The llm judge: a critic model behind any OpenAI-compatible chat-completions endpoint
(vLLM serve, SGLang, a hosted provider). Paper judge: QwQ-32B at temperature 0.5, top_p 0.95."""
from __future__ import annotations

import time
from typing import Any

from judges.base import Cost, Judge, Verdict, register_judge
from judges.config import LLMJudgeConfig
from judges.chat_client import ChatClient
from judges.critic import PROMPT_VERSION, critic_prompt, parse_verdict

# Tokens a chat template may add around the prompt (role tags, a default system prompt).
TEMPLATE_TOKEN_ALLOWANCE = 256


@register_judge("llm")
class LLMJudge(Judge):
    config_class = LLMJudgeConfig
    def __init__(self, base_url: str = "http://127.0.0.1:8000/v1", model: str = "default",
                 api_key_env: str = "PRMLOOP_JUDGE_API_KEY", temperature: float = 0.5, top_p: float = 0.95,
                 max_tokens: int = 4096, timeout_s: float = 120.0, max_retries: int = 4,
                 backoff_base_s: float = 1.0, backoff_max_s: float = 30.0, max_concurrency: int = 8):
        self.model, self.temperature, self.top_p, self.max_tokens = model, temperature, top_p, max_tokens
        self.max_concurrency = max_concurrency
        self.client = ChatClient(base_url, api_key_env, timeout_s=timeout_s, max_retries=max_retries,
                                 backoff_base_s=backoff_base_s, backoff_max_s=backoff_max_s,
                                 max_concurrency=max_concurrency)

    @property
    def identity(self) -> str:
        # What changes answers: model, sampling, prompt. Not the URL (the same model served elsewhere
        # answers alike) and never the key.
        return (f"llm:{self.model}|T={self.temperature}|top_p={self.top_p}|max_tokens={self.max_tokens}"
                f"|prompt={PROMPT_VERSION}")

    def __repr__(self) -> str:
        return f"LLMJudge({self.identity!r}, url={self.client.url!r}, api_key_env={self.client.api_key_env!r})"

    def token_bound(self, question: str, steps: list[str]) -> int:
        # A byte-level BPE token covers at least one byte, so the prompt's UTF-8 length bounds its tokens.
        return len(critic_prompt(question, steps).encode("utf-8")) + TEMPLATE_TOKEN_ALLOWANCE + self.max_tokens

    def judge(self, question: str, steps: list[str]) -> Verdict:
        payload = {
            "model": self.model,
            "messages": [{"role": "user", "content": critic_prompt(question, steps)}],
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
        }
        start = time.monotonic()
        reply = self.client.complete(payload)
        seconds = time.monotonic() - start
        raw = _reply_text(reply.body)
        usage = reply.body.get("usage") or {}
        cost = Cost(calls=1, prompt_tokens=int(usage.get("prompt_tokens") or 0),
                    completion_tokens=int(usage.get("completion_tokens") or 0), seconds=seconds)
        return Verdict(parse_verdict(raw, len(steps)), raw=raw, cost=cost)

    @classmethod
    def from_config(cls, cfg: Any, **context: Any) -> "LLMJudge":
        return cls(base_url=cfg.base_url, model=cfg.model, api_key_env=cfg.api_key_env,
                   temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens,
                   timeout_s=cfg.timeout_s, max_retries=cfg.max_retries, backoff_base_s=cfg.backoff_base_s,
                   backoff_max_s=cfg.backoff_max_s, max_concurrency=cfg.max_concurrency)


def _reply_text(body: dict) -> str:
    """The completion's text; a reasoning server's separate reasoning goes first, inside <think> tags,
    so it is kept in the ledger but never read as the verdict."""
    message = (body.get("choices") or [{}])[0].get("message") or {}
    content = message.get("content") or ""
    reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
    return f"<think>{reasoning}</think>{content}" if reasoning else content
