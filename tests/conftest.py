"""Suite-wide guards: no process a test started outlives the test run, and a clean end.

Every process the suite starts inherits PRMLOOP_TEST_RUN (a token per pytest run) through its
environment, also workers that torchrun puts in sessions of their own and orphans whose parent was
killed (no longer our descendants, so a child list would miss them). At the end of the session any
live process still carrying the token fails the run, names its command line, and is killed.

A clean end: a library that configures logging at import (vLLM: a StreamHandler on sys.stdout) binds
its handler to pytest's capture stream of that moment; pytest closes that stream when the session
ends, and the library's exit-time messages (engine shutdown, atexit) then print "--- Logging error
--- ... I/O operation on closed file" tracebacks. At the end of the session such handlers are moved
to the interpreter's real stderr.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import time
import uuid
from pathlib import Path

import pytest

TOKEN_VAR = "PRMLOOP_TEST_RUN"
GRACE_S = float(os.environ.get("PRMLOOP_TEST_LEFTOVER_GRACE_S", "15"))  # a process told to stop may still be ending


def _leftovers(token: bytes) -> dict[int, str]:
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if token not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if state in ("Z", "X"):  # dead, waiting to be reaped: holds nothing
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if "multiprocessing.resource_tracker" in cmd:  # ours: it ends when this process exits
                continue
            found[int(entry.name)] = cmd
        except (OSError, IndexError):  # gone meanwhile, or not ours to read
            continue
    return found


def _rebind_handlers_on_capture_streams() -> None:
    loggers = [logging.getLogger(), *(x for x in logging.Logger.manager.loggerDict.values()
                                      if isinstance(x, logging.Logger))]
    for logger in loggers:
        for handler in logger.handlers:
            if (not isinstance(handler, logging.StreamHandler) or isinstance(handler, logging.FileHandler)
                    or type(handler).__module__.startswith("_pytest")  # pytest's own: it removes them
                    or isinstance(getattr(type(handler), "stream", None), property)):  # looks sys.stderr up itself
                continue
            stream = handler.stream
            if stream in (sys.__stdout__, sys.__stderr__):
                continue
            if type(stream).__module__.startswith("_pytest") or getattr(stream, "closed", False):
                handler.setStream(sys.__stderr__)


@pytest.fixture(scope="session", autouse=True)
def clean_logging_at_exit():
    yield
    _rebind_handlers_on_capture_streams()


@pytest.fixture(scope="session", autouse=True)
def no_process_outlives_the_run():
    if not Path("/proc/self/environ").exists():  # not Linux: nothing to scan
        yield
        return
    value = os.environ.setdefault(TOKEN_VAR, uuid.uuid4().hex)
    token = f"{TOKEN_VAR}={value}".encode()
    yield
    deadline = time.monotonic() + GRACE_S
    while (left := _leftovers(token)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if left:
        pytest.fail("processes started by the tests outlived them (killed now):\n"
                    + "\n".join(f"  pid {pid}: {cmd[:200]}" for pid, cmd in sorted(left.items())), pytrace=False)
