"""bench/bench_search.py runs rl.search with an argv list: no user string reaches a shell."""
import sys

from bench import bench_search as bench


def test_prm_path_with_shell_syntax_stays_one_argument(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(bench.subprocess, "run", lambda *a, **kw: calls.append((a, kw)))
    hostile = f"x; touch {tmp_path}/pwned $(id)"
    monkeypatch.setattr(sys, "argv", ["bench_search.py", "--prm", hostile, "--only", "arithmetic", "--no-copy",
                                      "extra.key=`id`"])
    bench.main()
    [(args, kwargs)] = calls
    assert isinstance(args[0], list) and not kwargs.get("shell")
    assert f"prm.path={hostile}" in args[0] and "extra.key=`id`" in args[0]
    assert "method=[greedy,best_of_n,beam,dvts]" in args[0]  # hydra gets the override itself, unquoted
