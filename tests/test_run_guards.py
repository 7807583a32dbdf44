"""One run per out_dir (a second fails at once, naming the holder; a killed holder leaves no stale
lock), and no silent fresh start over round checkpoints that lost their manifests."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.checkpoint_io import CheckpointError
from core.run import OutDirBusy, out_dir_lock
from rl.checkpoint import resolve_resume

ROOT = Path(__file__).resolve().parent.parent
HOLDER = """
import sys, time
from core.run import out_dir_lock
with out_dir_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture()
def held(tmp_path):
    """Another process holding tmp_path/run's lock; killed (and reaped) at the end."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout.readline().strip() == "held"
        yield out, proc
    finally:
        proc.kill()
        proc.wait()


def test_a_second_run_on_one_out_dir_fails_at_once_naming_the_holder(held):
    out, proc = held
    with pytest.raises(OutDirBusy, match=f"in use by another run \\(pid {proc.pid} on "):
        with out_dir_lock(out):
            pass
    proc.kill()
    proc.wait()
    with out_dir_lock(out):  # the kernel dropped the dead holder's lock: nothing stale
        assert f"pid {os.getpid()} " in (out / ".run.lock").read_text()


def test_every_command_takes_the_lock_before_anything_loads(held, monkeypatch):
    import rl.online
    from prm.model import EnsemblePRM
    from prm.train import train
    from tests.test_prm_train import config
    from tests.test_rl_loop import tiny_config

    out, _ = held

    def must_not_load(*args, **kwargs):
        raise AssertionError("a component was built before the out_dir lock was taken")
    monkeypatch.setattr(rl.online, "build", must_not_load)
    monkeypatch.setattr(EnsemblePRM, "from_config", must_not_load)
    with pytest.raises(OutDirBusy):
        rl.online.run(tiny_config(out))
    with pytest.raises(OutDirBusy):
        train(config(out.parent, name=out.name))
    import judges.eval
    monkeypatch.setattr(judges.eval, "load_processbench", must_not_load)
    with pytest.raises(OutDirBusy):
        judges.eval.run({"judge": {"name": "rule"}, "trainer": {"out_dir": str(out)}})


def test_round_checkpoints_without_manifests_refuse_a_silent_fresh_start(tmp_path):
    for index in (1, 2):
        round_dir = tmp_path / "checkpoints" / f"round_{index:04d}"
        round_dir.mkdir(parents=True)
        (round_dir / "state.pt").write_bytes(b"x")  # its manifest.json deleted
    (tmp_path / "metrics.jsonl").write_text('{"round": 1}\n{"round": 2}\n')
    with pytest.raises(CheckpointError, match="holds 2 round checkpoints and none is intact.*trainer.resume=never"):
        resolve_resume("auto", tmp_path)
    assert resolve_resume("never", tmp_path) is None  # starting over there stays possible, when asked for
    assert resolve_resume("auto", tmp_path / "fresh") is None


def test_the_suite_fails_when_a_test_leaves_a_process_behind(tmp_path):
    test = tmp_path / "test_leaky.py"
    test.write_text("import subprocess, sys\n\n"
                    "def test_leaves_an_orphan_in_a_session_of_its_own():\n"
                    "    subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'], start_new_session=True)\n")
    env = {k: v for k, v in os.environ.items() if k != "PRMLOOP_TEST_RUN"}  # its own run, its own token
    env.update(PYTHONPATH=str(ROOT), PRMLOOP_TEST_LEFTOVER_GRACE_S="0.5")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", str(test)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0, run.stdout[-2000:]
    assert "outlived them (killed now)" in run.stdout and "time.sleep(300)" in run.stdout


def test_a_library_logging_after_the_session_prints_no_logging_error(tmp_path):
    # what vLLM does: a StreamHandler on sys.stdout made inside a test (pytest's capture stream), used
    # again at exit, after pytest closed that stream
    test = tmp_path / "test_lib.py"
    test.write_text("import logging, sys\n\n"
                    "def test_a_library_configures_logging():\n"
                    "    logging.getLogger('a_lib').addHandler(logging.StreamHandler(sys.stdout))\n")
    script = ("import logging, sys, pytest\n"
              f"assert pytest.main(['-q', '-p', 'tests.conftest', {str(test)!r}]) == 0\n"
              "logging.getLogger('a_lib').warning('engine shut down')\n")
    env = {k: v for k, v in os.environ.items() if k != "PRMLOOP_TEST_RUN"}
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "Logging error" not in run.stderr and "engine shut down" in run.stderr
