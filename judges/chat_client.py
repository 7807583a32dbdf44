"""An async client for OpenAI-compatible /v1/chat/completions (httpx, keep-alive connections).

Faults are handled here so the llm judge stays about judging:
- requests are streamed (`"stream": true`, server-sent events, `stream_options.include_usage`), so
  the two clocks fit long critiques: `timeout_s` bounds connecting and each socket read (a silent
  server: a streaming one sends every token as it is made), `deadline_s` bounds the whole request
  (a slow critic, a server dripping bytes or holding the connection); a cut-off stream reports what
  it delivered, so a timed-out attempt is charged that, not the call's bound;
- `wait_s`: a server that is down (refused connections, 502/503/504) is waited for that long, with a
  line per attempt, before the retries count; such attempts cost no tokens;
- retries with exponential backoff and jitter on 429, 5xx, timeouts, dropped or refused connections
  and 200s whose body is unusable (a server's Retry-After is honoured, capped);
- at most max_concurrency requests in flight over at most that many kept-alive connections;
- every attempt is reported (`Attempt`) so a caller can bill it, usable body or not; a caller's
  `before_retry` hook sees each failed attempt first and may stop further requests (budget);
- clear errors that are not retried for a wrong endpoint (404) and a refused key (401/403);
- the API key is read from the environment at start-up and at each call, stripped, checked to be a
  valid header value, and never stored, logged or shown: exception texts from the HTTP stack (which
  may quote request headers) are never passed on, only their type names.
"""
from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field, replace
from typing import Awaitable, Callable
from urllib.parse import urlsplit

import httpx

from judges.chat_stream import StreamState, redact

log = logging.getLogger(__name__)
# httpx logs one INFO line per request: noise inside progress bars (failures are logged here instead)
logging.getLogger("httpx").setLevel(logging.WARNING)

RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
# A reported count above this is a server's error or lie, not a bill: it is clamped here, so it still
# exhausts any budget but every sum the ledger keeps stays far inside SQLite's 64-bit integers.
MAX_REPORTED_TOKENS = 2**40
MAX_REPLY_BYTES = 16 * 2**20  # a verdict is a few KiB of text; a larger body is not read whole


class JudgeError(RuntimeError):
    """A judge could not produce a verdict. `attempts`: requests made and not yet billed by a hook."""

    def __init__(self, message: str, attempts: list["Attempt"] | None = None):
        super().__init__(message)
        self.attempts = list(attempts or [])


class JudgeEndpointError(JudgeError):
    """Wrong URL or nothing listening there."""


class JudgeAuthError(JudgeError):
    """The endpoint refused the key (or its absence), or the key is not a valid header value."""


class JudgeRequestError(JudgeError):
    """The endpoint rejected the request itself (4xx): a config problem, not worth retrying."""


class JudgeUnavailableError(JudgeError):
    """Still failing (429 / 5xx / timeouts / dropped connections) after every retry."""


class JudgeBudgetStop(JudgeError):
    """The caller's before_retry hook refused another attempt (its budget would not cover it)."""


@dataclass(frozen=True)
class Attempt:
    """One request as a provider may bill it."""

    sent: bool  # the request left this machine (a refused connection or a handshake that never ends sends nothing)
    status: int | None  # None: no HTTP status (timeout, dropped before any reply)
    usage: tuple[int, int] | None  # validated (prompt, completion) tokens; None = not reported or unusable
    seconds: float
    reason: str = "ok"
    received: int | None = None  # a streamed 200: UTF-8 bytes of text received (bounds its completion tokens)
    streamed: bool = False  # the request asked for a stream (a server generates only while it streams)

    @property
    def maybe_generated(self) -> bool:
        """Whether the server may have generated (and billed) tokens we have no count for: a 200 whose
        body we could not use, or a request not streamed that got no reply in time."""
        if not self.sent or self.received is not None:
            return False
        return self.status == 200 or (self.status is None and not self.streamed)


@dataclass(frozen=True)
class Reply:
    body: dict | None  # the JSON object of a 200; None when every 200 had an unusable body
    text: str  # the raw body of the last 200
    attempts: list[Attempt] = field(default_factory=list)  # not yet billed through before_retry
    total_attempts: int = 1


BeforeRetry = Callable[[Attempt], Awaitable[bool]]


@dataclass(frozen=True)
class _Response:
    status: int
    text: str | None  # the body of a reply that was not streamed
    retry_after: float | None
    seconds: float
    stream: StreamState | None = None  # a streamed 200


class _Retryable(Exception):
    def __init__(self, attempt: Attempt, retry_after: float | None = None, text: str | None = None):
        super().__init__(attempt.reason)
        self.attempt, self.retry_after, self.text = attempt, retry_after, text


def read_api_key(env_name: str) -> str | None:
    """The key in $env_name, stripped; None when unset or blank. Raises JudgeAuthError (naming the
    variable, never the value) when it holds characters an HTTP header cannot carry."""
    key = (os.environ.get(env_name) or "").strip()
    if not key:
        return None
    bad = next((i for i, ch in enumerate(key) if not 0x21 <= ord(ch) <= 0x7E), None)
    if bad is not None:
        raise JudgeAuthError(f"${env_name} holds a character that cannot go in an HTTP header (at position "
                             f"{bad} of {len(key)}, after stripping surrounding whitespace): check how it was set")
    return key


class ChatClient:
    def __init__(self, base_url: str, api_key_env: str, timeout_s: float = 120.0, deadline_s: float = 1800.0,
                 max_retries: int = 4, backoff_base_s: float = 1.0, backoff_max_s: float = 30.0,
                 max_concurrency: int = 64, wait_s: float = 0.0, stream: bool = True,
                 max_reply_bytes: int = MAX_REPLY_BYTES):
        parts = urlsplit(base_url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"judge base_url must look like http://host:port/v1, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.api_key_env = api_key_env
        read_api_key(api_key_env)  # fail at start-up, not at the first paid call
        self.timeout_s, self.deadline_s, self.max_retries = timeout_s, deadline_s, max_retries
        self.backoff_base_s, self.backoff_max_s = backoff_base_s, backoff_max_s
        self.max_concurrency, self.wait_s, self.stream = max_concurrency, wait_s, stream
        self.max_reply_bytes = max_reply_bytes
        self._http: httpx.AsyncClient | None = None
        self._in_flight: asyncio.Semaphore | None = None
        self._sessions = 0

    def __repr__(self) -> str:
        return f"ChatClient(url={self.url!r}, api_key_env={self.api_key_env!r})"

    @property
    def max_attempts(self) -> int:
        """Attempts one request may make that can cost tokens (waiting for a server that is down costs none)."""
        return self.max_retries + 1

    def redact(self, text: str) -> str:
        """`text` with every form of the current key removed (for anything stored or shown)."""
        return redact(text, read_api_key(self.api_key_env))

    # ---- a session: one pool of kept-alive connections for a batch ---------------------------
    async def __aenter__(self) -> "ChatClient":
        if self._sessions == 0:
            limits = httpx.Limits(max_connections=self.max_concurrency,
                                  max_keepalive_connections=self.max_concurrency)
            timeout = httpx.Timeout(self.timeout_s, pool=None)  # the semaphore queues, not the pool
            self._http = httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False)
            self._in_flight = asyncio.Semaphore(self.max_concurrency)
        self._sessions += 1
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._sessions -= 1
        if self._sessions == 0 and self._http is not None:
            http, self._http, self._in_flight = self._http, None, None
            await http.aclose()

    # ---- requests -----------------------------------------------------------------------------
    async def acomplete(self, payload: dict, before_retry: BeforeRetry | None = None) -> Reply:
        """POST the payload (streamed unless `stream=False`) with retries; the parsed JSON of a 200 (a
        stream folded into one), or its raw text if unusable."""
        if self._http is None:
            async with self:
                return await self.acomplete(payload, before_retry)
        if self.stream:
            payload = {**payload, "stream": True, "stream_options": {"include_usage": True}}
        body = json.dumps(payload).encode("utf-8")
        unbilled: list[Attempt] = []
        last: _Retryable | None = None
        counted = tries = 0  # attempts against max_retries; all attempts
        down_since: float | None = None
        while True:
            if tries:
                if before_retry is not None:
                    billed, unbilled = unbilled, []
                    for a in billed:
                        if not await before_retry(a):
                            raise JudgeBudgetStop(f"judge budget does not cover a retry to {self.url}")
                # grows with every failure, waits included: a long restart is polled every backoff_max_s
                await asyncio.sleep(self._backoff(tries, last.retry_after if last else None))
            tries += 1
            key = read_api_key(self.api_key_env)  # per call; never kept on self
            try:
                async with self._in_flight:  # type: ignore[union-attr]
                    response = await self._post(body, key)
                return self._reply(response, key, unbilled, tries)
            except _Retryable as exc:
                unbilled.append(exc.attempt)
                last = exc
            if self._server_down(last.attempt) and self.wait_s > 0:
                down_since = down_since if down_since is not None else time.monotonic()
                waited = time.monotonic() - down_since
                if waited < self.wait_s:
                    log.warning("judge server %s not answering (%s): waiting for it, %.0f s of wait_s=%s",
                                self.base_url, redact(last.attempt.reason, key), waited, self.wait_s)
                    continue
            else:
                down_since = None
            counted += 1
            if counted > self.max_retries:
                break
            log.warning("judge request to %s failed (%s); attempt %d of %d", self.url,
                        redact(last.attempt.reason, key), counted, self.max_retries + 1)
        if last.text is not None:  # a paid 200 we could not read: the caller records it as invalid
            return Reply(None, last.text, unbilled, tries)
        if last.attempt.reason.startswith("connection refused"):
            raise JudgeEndpointError(f"nothing answers at judge endpoint {self.url} ({last.attempt.reason}, "
                                     f"{tries} attempts): is the server running?", unbilled)
        raise JudgeUnavailableError(redact(f"judge endpoint {self.url} still failing after {tries} attempts; "
                                           f"last: {last.attempt.reason}", key), unbilled)

    async def served_models(self) -> set[str] | None:
        """The ids in GET {base_url}/models (waiting up to wait_s for a server that is down); None when
        the endpoint has no such list (a 404/405: some providers do not serve one). Raises JudgeAuthError
        for a refused key, JudgeEndpointError when nothing answers."""
        url, key = f"{self.base_url}/models", read_api_key(self.api_key_env)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        start, tries = time.monotonic(), 0
        while True:
            tries += 1
            try:
                async with asyncio.timeout(self.deadline_s):
                    resp = await self._http.get(url, headers=headers)  # type: ignore[union-attr]
                break
            except (httpx.TransportError, TimeoutError) as exc:  # type names only: texts may quote headers
                waited = time.monotonic() - start
                if waited >= self.wait_s:
                    raise JudgeEndpointError(f"nothing answers at judge endpoint {url} ({type(exc).__name__}): "
                                             "is the server running, and is judge.base_url right?") from None
                log.warning("judge server %s not answering (%s): waiting for it, %.0f s of wait_s=%s",
                            self.base_url, type(exc).__name__, waited, self.wait_s)
                await asyncio.sleep(self._backoff(tries, None))
        if resp.status_code in (401, 403):
            how = f"the key in ${self.api_key_env}" if key else f"no key (${self.api_key_env} is not set)"
            raise JudgeAuthError(f"judge endpoint {url} refused {how}: HTTP {resp.status_code}")
        if resp.status_code != 200:
            return None
        try:
            data = resp.json().get("data")
            return {m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)}
        except (ValueError, AttributeError, TypeError):
            return None

    @staticmethod
    def _server_down(attempt: Attempt) -> bool:
        """Failures of a server that is restarting (nothing listens, or a proxy says the backend is
        gone): they cost no tokens, so waiting them out never spends budget."""
        return not attempt.sent or attempt.status in (502, 503, 504)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.backoff_max_s)
        delay = self.backoff_base_s * 2 ** (attempt - 1)
        return min(delay * (0.5 + random.random()), self.backoff_max_s)  # jitter: spread the herd

    async def _post(self, body: bytes, key: str | None) -> _Response:
        headers = {"Content-Type": "application/json",
                   "Accept": "text/event-stream" if self.stream else "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        start = time.monotonic()
        seen: dict = {"sent": False, "status": None, "stream": None}

        async def trace(name: str, info: dict) -> None:
            if name.endswith("send_request_headers.started"):  # the request is leaving: it may be billed
                seen["sent"] = True

        def fail(reason: str) -> _Retryable:
            state: StreamState | None = seen["stream"]
            usage = usage_of({"usage": state.usage}) if state is not None else None
            received = state.received_bytes() if state is not None else None
            return _Retryable(Attempt(seen["sent"], seen["status"], usage, time.monotonic() - start, reason,
                                      received, self.stream))
        try:
            async with asyncio.timeout(self.deadline_s):  # the whole request, every byte of the reply included
                async with self._http.stream("POST", self.url, content=body, headers=headers,  # type: ignore[union-attr]
                                             extensions={"trace": trace}) as resp:
                    seen["status"] = resp.status_code
                    size = 0  # a reply over max_reply_bytes is not read whole (nor kept): billed and retried
                    if resp.status_code == 200 and "text/event-stream" in resp.headers.get("content-type", ""):
                        state = seen["stream"] = StreamState()
                        async for line in resp.aiter_lines():  # to the end, past [DONE]: the connection is reused
                            size += len(line) + 1
                            if size > self.max_reply_bytes:
                                raise fail(f"reply body over max_reply_bytes={self.max_reply_bytes}")
                            state.feed(line)
                        return _Response(200, None, None, time.monotonic() - start, state)
                    data = bytearray()
                    async for chunk in resp.aiter_bytes():
                        data += chunk
                        if len(data) > self.max_reply_bytes:
                            raise fail(f"reply body over max_reply_bytes={self.max_reply_bytes}")
                    text = data.decode("utf-8", errors="replace")
                    return _Response(resp.status_code, text, _retry_after(resp.headers.get("Retry-After")),
                                     time.monotonic() - start, None)
        # Only type names from here on: httpx/h11 messages may quote the request, headers included.
        except TimeoutError:
            raise fail(f"no complete reply within deadline_s={self.deadline_s}") from None
        except (httpx.ConnectError, httpx.ConnectTimeout):  # refused, unreachable, no handshake: nothing sent
            seen["sent"] = False
            raise fail("connection refused or unreachable") from None
        except httpx.TimeoutException:
            raise fail(f"no data within timeout_s={self.timeout_s}") from None
        except (httpx.TransportError, httpx.DecodingError) as exc:  # reset, closed early, cut mid-body
            raise fail(f"connection dropped ({type(exc).__name__})") from None
        except _Retryable:
            raise
        except Exception as exc:  # noqa: BLE001 (anything else: name the type, never the text)
            raise JudgeError(f"judge request to {self.url} failed: {type(exc).__name__}") from None

    def _reply(self, response: _Response, key: str | None, unbilled: list[Attempt], tries: int) -> Reply:
        """A Reply for a usable 200; raises _Retryable (retry) or a JudgeError (stop) otherwise."""
        state = response.stream
        if state is None:
            parsed, usage = self._check(response, key, unbilled)
            unbilled.append(Attempt(True, 200, usage, response.seconds))
            return Reply(parsed, response.text or "", unbilled, tries)
        body, received = state.body(), state.received_bytes()
        attempt = Attempt(True, 200, usage_of(body), response.seconds, "ok", received, True)
        if state.error is not None or not state.finished:
            what = (f"an error inside the stream: {redact(json.dumps(state.error), key)[:300]}"
                    if state.error is not None else "a stream that ended before its finish reason")
            raise _Retryable(replace(attempt, reason=f"HTTP 200 with {what}"))
        unbilled.append(attempt)
        return Reply(body, json.dumps(body), unbilled, tries)

    def _check(self, response: _Response, key: str | None,
               unbilled: list[Attempt]) -> tuple[dict, tuple[int, int] | None]:
        status, text, seconds = response.status, response.text or "", response.seconds
        excerpt = redact(text, key)[:300]  # redact first: a cut could leave most of a key on its edge

        def attempt(reason: str, usage: tuple[int, int] | None = None) -> Attempt:
            return Attempt(True, status, usage, seconds, reason)
        if status in (401, 403):
            how = f"the key in ${self.api_key_env}" if key else f"no key (${self.api_key_env} is not set)"
            raise JudgeAuthError(f"judge endpoint {self.url} refused {how}: HTTP {status}",
                                 [*unbilled, attempt(f"HTTP {status}")])
        if status == 404:
            raise JudgeEndpointError(f"judge endpoint {self.url} does not exist (HTTP 404; check base_url "
                                     f"and model): {excerpt}", [*unbilled, attempt("HTTP 404")])
        if status in RETRY_STATUSES:
            raise _Retryable(attempt(f"HTTP {status}: {excerpt}"), response.retry_after)
        if status != 200:
            raise JudgeRequestError(f"judge endpoint {self.url} rejected the request: HTTP {status}: {excerpt}",
                                    [*unbilled, attempt(f"HTTP {status}")])
        try:
            body = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            raise _Retryable(attempt(f"HTTP 200 with a body that is not JSON: {excerpt}"), text=text) from None
        if not isinstance(body, dict) or "choices" not in body:
            raise _Retryable(attempt(f"HTTP 200 without choices: {excerpt}", usage_of(body)), text=text)
        return body, usage_of(body)


def usage_of(body: object) -> tuple[int, int] | None:
    """(prompt_tokens, completion_tokens) when the body reports both as non-negative whole numbers, each
    clamped to MAX_REPORTED_TOKENS."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return None
    counts = []
    for name in ("prompt_tokens", "completion_tokens"):
        value = usage.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        if not math.isfinite(value) or value < 0 or value != int(value):
            return None
        counts.append(min(int(value), MAX_REPORTED_TOKENS))
    return counts[0], counts[1]


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: a number, or an HTTP date."""
    if not value:
        return None
    try:
        seconds = float(value)
        return seconds if math.isfinite(seconds) else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
