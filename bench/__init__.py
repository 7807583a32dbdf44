"""Benchmarks: drivers of the library's public API, run from the repository root as `python -m bench.<name>`.
Their figures, with the command that made each, are in bench/RESULTS.md."""
