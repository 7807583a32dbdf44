"""A minimal client for OpenAI-compatible /v1/chat/completions over stdlib http.client.

Faults are handled here so the llm judge stays about judging:
- per-request socket timeout; retries with exponential backoff and jitter on 429, 5xx, timeouts
  and dropped or refused connections (a server's Retry-After is honoured, capped);
- at most max_concurrency requests in flight (a semaphore, whatever the callers' thread count);
- clear errors that are not retried for a wrong endpoint (404) and a refused key (401/403);
- the API key is read from the environment at call time and never stored, logged or shown.
"""
from __future__ import annotations

import email.utils
import http.client
import json
import logging
import os
import random
import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class JudgeError(RuntimeError):
    """A judge could not produce a verdict."""


class JudgeEndpointError(JudgeError):
    """Wrong URL or nothing listening there."""


class JudgeAuthError(JudgeError):
    """The endpoint refused the key (or its absence)."""


class JudgeRequestError(JudgeError):
    """The endpoint rejected the request itself (4xx): a config problem, not worth retrying."""


class JudgeUnavailableError(JudgeError):
    """Still failing (429 / 5xx / timeouts / dropped connections) after every retry."""


@dataclass(frozen=True)
class Reply:
    body: dict
    attempts: int  # requests made, retries included


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason, self.retry_after = reason, retry_after


class ChatClient:
    def __init__(self, base_url: str, api_key_env: str, timeout_s: float = 120.0, max_retries: int = 4,
                 backoff_base_s: float = 1.0, backoff_max_s: float = 30.0, max_concurrency: int = 8):
        parts = urlsplit(base_url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"judge base_url must look like http://host:port/v1, got {base_url!r}")
        self.url = f"{base_url.rstrip('/')}/chat/completions"
        self._scheme, self._host, self._port = parts.scheme, parts.hostname, parts.port
        self._path = f"{parts.path}/chat/completions"
        self.api_key_env = api_key_env
        self.timeout_s, self.max_retries = timeout_s, max_retries
        self.backoff_base_s, self.backoff_max_s = backoff_base_s, backoff_max_s
        self._in_flight = threading.BoundedSemaphore(max_concurrency)

    def __repr__(self) -> str:
        return f"ChatClient(url={self.url!r}, api_key_env={self.api_key_env!r})"

    def complete(self, payload: dict) -> Reply:
        """POST the payload; return the parsed JSON body of a 200 reply."""
        key = os.environ.get(self.api_key_env) or None  # read per call; never kept on self
        body = json.dumps(payload).encode("utf-8")
        last, last_retry_after = "", None
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self._backoff(attempt, last_retry_after))
            try:
                with self._in_flight:
                    return Reply(self._post(body, key), attempt + 1)
            except _Retryable as exc:
                last, last_retry_after = exc.reason, exc.retry_after
                log.warning("judge request to %s failed (%s); attempt %d of %d", self.url, _redact(last, key),
                            attempt + 1, self.max_retries + 1)
        if last.startswith("connection refused"):
            raise JudgeEndpointError(f"nothing answers at judge endpoint {self.url} ({last}, "
                                     f"{self.max_retries + 1} attempts): is the server running?")
        raise JudgeUnavailableError(_redact(f"judge endpoint {self.url} still failing after "
                                            f"{self.max_retries + 1} attempts; last: {last}", key))

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.backoff_max_s)
        delay = self.backoff_base_s * 2 ** (attempt - 1)
        return min(delay * (0.5 + random.random()), self.backoff_max_s)  # jitter: spread the herd

    def _post(self, body: bytes, key: str | None) -> dict:
        conn_cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        conn = conn_cls(self._host, self._port, timeout=self.timeout_s)
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        try:
            conn.request("POST", self._path, body=body, headers=headers)
            resp = conn.getresponse()
            status, text = resp.status, resp.read().decode("utf-8", errors="replace")
            retry_after = _retry_after(resp.getheader("Retry-After"))
        except ConnectionRefusedError:
            raise _Retryable("connection refused") from None
        except (socket.timeout, TimeoutError):
            raise _Retryable(f"no reply within timeout_s={self.timeout_s}") from None
        except (ConnectionError, http.client.HTTPException) as exc:  # reset, closed early, garbled
            raise _Retryable(f"connection dropped ({type(exc).__name__})") from None
        except (socket.gaierror, OSError) as exc:
            raise JudgeEndpointError(f"cannot reach judge endpoint {self.url}: {exc}") from None
        finally:
            conn.close()
        return self._check(status, text, retry_after, key)

    def _check(self, status: int, text: str, retry_after: float | None, key: str | None) -> dict:
        excerpt = _redact(text[:300], key)
        if status in (401, 403):
            how = f"the key in ${self.api_key_env}" if key else f"no key (${self.api_key_env} is not set)"
            raise JudgeAuthError(f"judge endpoint {self.url} refused {how}: HTTP {status}")
        if status == 404:
            raise JudgeEndpointError(f"judge endpoint {self.url} does not exist (HTTP 404; check base_url "
                                     f"and model): {excerpt}")
        if status in RETRY_STATUSES:
            raise _Retryable(f"HTTP {status}: {excerpt}", retry_after)
        if status != 200:
            raise JudgeRequestError(f"judge endpoint {self.url} rejected the request: HTTP {status}: {excerpt}")
        try:
            body = json.loads(text)
        except json.JSONDecodeError:
            raise _Retryable(f"HTTP 200 with a body that is not JSON: {excerpt}") from None
        if not isinstance(body, dict) or not body.get("choices"):
            raise _Retryable(f"HTTP 200 without choices: {excerpt}")
        return body


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: a number, or an HTTP date."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _redact(text: str, key: str | None) -> str:
    return text.replace(key, "***") if key else text
