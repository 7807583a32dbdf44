"""The judge interface: what every judge returns (judges.registry finds judges by name).

A judge reads (question, steps) and names the first wrong step: 0-based index, -1 when every step
is correct, None when its output could not be understood (invalid: recorded, never trained on).
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import threading
from abc import ABC, abstractmethod
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Iterator, TypeVar

log = logging.getLogger(__name__)

Item = tuple[str, list[str]]  # (question, steps)


@dataclass(frozen=True)
class Cost:
    """What one or more judge calls cost. Costs add up: sum(costs, Cost())."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: "Cost") -> "Cost":
        if not isinstance(other, Cost):
            return NotImplemented
        return Cost(self.calls + other.calls, self.prompt_tokens + other.prompt_tokens,
                    self.completion_tokens + other.completion_tokens, self.seconds + other.seconds)

    def __radd__(self, other: object) -> "Cost":
        return self if other == 0 else self.__add__(other)  # lets sum(costs) start from 0


@dataclass(frozen=True)
class Verdict:
    """A judge's answer. first_error: index of the first wrong step, -1 = all correct, None = invalid."""

    first_error: int | None
    raw: str = ""
    cost: Cost = field(default_factory=Cost)
    from_ledger: bool = False

    @property
    def valid(self) -> bool:
        return self.first_error is not None


def item_key(question: str, steps: list[str]) -> str:
    """sha256 of (question, steps) as canonical JSON: the one hash the oracle and the ledger share."""
    canonical = json.dumps([question, list(steps)], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class Judge(ABC):
    """Names the first wrong step of a solution.

    `identity` must change whenever a setting that can change answers changes (model, temperature,
    prompt version...) and must never contain a secret: the ledger keys stored labels by it.
    """

    max_concurrency: int = 1  # network judges raise this; judge_batch runs that many at once
    max_attempts: int = 1  # attempts one item may cost (retries included): the ledger holds that much budget

    @property
    @abstractmethod
    def identity(self) -> str: ...

    @abstractmethod
    def judge(self, question: str, steps: list[str]) -> Verdict: ...

    def check(self) -> Cost:
        """A start-up check of whatever the judge depends on (network judges: endpoint, key, model);
        raises a clear error, returns what it cost. Local judges have nothing to check."""
        return Cost()

    def token_bound(self, question: str, steps: list[str]) -> int:
        """An upper bound on the tokens one call may cost; the ledger reserves it before paying."""
        return 0

    async def ajudge(self, question: str, steps: list[str], before_retry: "BeforeRetryCost | None" = None) -> Verdict:
        """The async face the ledger drives; network judges override it. A sync judge that allows several
        calls at once runs them in worker threads; a serial one runs in the loop's own thread (the main
        thread for sync callers, which signal-based timeouts need)."""
        if self.max_concurrency > 1:
            return await asyncio.to_thread(self.judge, question, steps)
        return self.judge(question, steps)

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[None]:
        """Held around a batch (network judges keep their connections open for its length)."""
        yield

    def judge_batch(self, items: list[Item]) -> list[Verdict]:
        results: list[Verdict | None] = [None] * len(items)
        for i, verdict in run_bounded(lambda item: self.judge(*item), items, self.max_concurrency):
            results[i] = verdict
        return results  # type: ignore[return-value]

    @classmethod
    def from_config(cls, cfg: Any, **context: Any) -> "Judge":
        """Build from a validated JudgeConfig; `context` carries run data some judges need (records)."""
        return cls()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.identity!r})"


T = TypeVar("T")
R = TypeVar("R")

# Called with the cost of each failed attempt before a retry; False stops the retries (budget).
BeforeRetryCost = Callable[[Cost], Awaitable[bool]]


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code (in a helper thread if a loop already runs here)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # noqa: BLE001 (re-raised in the caller's thread)
            box["error"] = exc
    thread = threading.Thread(target=target, name="judge-loop")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def run_bounded(fn: Callable[[T], R], items: Iterable[T], max_workers: int) -> Iterator[tuple[int, R]]:
    """Yield (index, fn(item)) as each finishes, with at most max_workers running at once.

    On the first exception no new item starts, the running ones are drained and still yielded
    (so a caller can keep what it already paid for), then the exception is raised.
    """
    items = list(items)
    if max_workers <= 1 or len(items) <= 1:
        for i, item in enumerate(items):
            yield i, fn(item)
        return
    first_error: BaseException | None = None
    with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="judge") as pool:
        pending = {}
        next_index = 0

        def submit_more() -> None:
            nonlocal next_index
            while first_error is None and next_index < len(items) and len(pending) < max_workers:
                pending[pool.submit(fn, items[next_index])] = next_index
                next_index += 1

        submit_more()
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                i = pending.pop(future)
                try:
                    result = future.result()
                except BaseException as exc:  # noqa: BLE001 (re-raised once the running ones finish)
                    if first_error is None:
                        first_error = exc
                    continue
                yield i, result
            submit_more()
    if first_error is not None:
        raise first_error
