"""A hang guard for tests: SIGALRM turns a block that never returns into a failure. Not a speed
measure: the guarded code takes milliseconds to seconds, the limit leaves room for a loaded CI box."""
import signal
from contextlib import contextmanager


@contextmanager
def no_hang(what: str, seconds: int = 20):
    def hung(*_):
        raise TimeoutError(f"{what[:40]!r} still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
