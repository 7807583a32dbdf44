"""Cluster storage: every rank must see the same out_dir (2 CPU ranks, gloo); the judge ledger goes
node-local with several ranks or a network out_dir, is copied into each round checkpoint and put back at
resume when the local copy is missing or older; network filesystems are recognised from /proc/mounts."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from core.config import TrainerConfig
from core.storage import network_filesystem, restore_sqlite, snapshot_sqlite
from rl.config import OnlineConfig
from rl.online import ledger_dir, ledger_path
from tests.fake_openai_server import free_port

ROOT = Path(__file__).resolve().parent.parent
MOUNTS = """\
/dev/nvme0n1p1 / ext4 rw 0 0
tmpfs /tmp tmpfs rw 0 0
fs1:/export/runs /shared nfs4 rw 0 0
10.0.0.2@tcp:/lustre /lustre lustre rw 0 0
"""


def test_network_filesystems_are_recognised_by_the_longest_mount():
    assert network_filesystem("/shared/runs/r1", MOUNTS) == "nfs4"
    assert network_filesystem("/lustre/x", MOUNTS) == "lustre"
    assert network_filesystem("/tmp/x", MOUNTS) is None and network_filesystem("/home/u", MOUNTS) is None


def test_ledger_goes_node_local_with_several_ranks_or_a_network_out_dir(tmp_path, monkeypatch):
    cfg = OnlineConfig(trainer=TrainerConfig(out_dir=str(tmp_path / "out"), local_dir=str(tmp_path / "local")))
    assert ledger_dir(cfg, world=1) is None and ledger_path(cfg, 1) == str(tmp_path / "out" / "ledger.sqlite")
    assert ledger_path(cfg, 2) == str(tmp_path / "local" / "ledger.sqlite")
    monkeypatch.setattr("core.storage.network_filesystem", lambda path, mounts=None: "nfs4")
    assert ledger_path(cfg, 1) == str(tmp_path / "local" / "ledger.sqlite")
    cfg.judge.ledger_path = str(tmp_path / "mine.sqlite")   # an explicit path is used as given
    assert ledger_path(cfg, 2) == str(tmp_path / "mine.sqlite")


def make_ledger(path: Path, rows: int) -> None:
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE IF NOT EXISTS labels (id INTEGER PRIMARY KEY, v TEXT)")
        db.executemany("INSERT INTO labels (v) VALUES (?)", [(str(i),) for i in range(rows)])


def count(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT COUNT(*) FROM labels").fetchone()[0]


def test_ledger_copy_is_restored_when_missing_or_older_and_a_newer_one_kept(tmp_path):
    live = tmp_path / "node_a" / "ledger.sqlite"
    live.parent.mkdir()
    make_ledger(live, 5)
    writer = sqlite3.connect(live)   # an open writer with uncheckpointed WAL pages: the copy still has them
    writer.execute("INSERT INTO labels (v) VALUES ('x')")
    writer.commit()
    snapshot_sqlite(live, tmp_path / "ledger.sqlite")
    writer.close()
    assert count(tmp_path / "ledger.sqlite") == 6

    other = tmp_path / "node_b" / "ledger.sqlite"   # resume on another node: nothing local
    assert "restored" in restore_sqlite(tmp_path / "ledger.sqlite", other, "labels") and count(other) == 6
    make_ledger(other, 3)                            # labels paid after the checkpoint: kept
    assert "kept" in restore_sqlite(tmp_path / "ledger.sqlite", other, "labels") and count(other) == 9
    stale = tmp_path / "node_c" / "ledger.sqlite"    # an older local copy: replaced, set aside
    stale.parent.mkdir()
    make_ledger(stale, 2)
    assert "restored" in restore_sqlite(tmp_path / "ledger.sqlite", stale, "labels") and count(stale) == 6
    assert [p.name for p in stale.parent.glob("ledger.sqlite.stale-*")]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["same", "differ"])
def test_two_ranks_must_see_the_same_out_dir(tmp_path, mode):
    env = {**{k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")},
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(free_port()), "-m", "tests.shared_dir_probe", str(tmp_path), mode],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    out = proc.stdout + proc.stderr
    if mode == "same":
        assert proc.returncode == 0 and "rank 0 ok" in out and "rank 1 ok" in out, out
        assert not list((tmp_path / "shared").iterdir())   # the probe file is removed
    else:
        assert proc.returncode != 0, out
        assert "rank 1 on" in out and "cannot read it" in out and "give every rank the same trainer.out_dir" in out


def test_round_checkpoint_carries_the_ledger_and_resume_puts_it_back(tmp_path):
    from core.checkpoint_io import save_state, verify
    from rl.checkpoint import restore_ledger, save_round

    class Policy:   # what save_round needs of a policy: files under its directory
        def save(self, path: Path) -> None:
            path.mkdir(parents=True)
            save_state({"w": 1}, path / "policy.pt")

    live = tmp_path / "local" / "ledger.sqlite"
    live.parent.mkdir()
    make_ledger(live, 4)
    final = save_round(tmp_path / "out", 1, Policy(), None, {"data_position": 1, "history": []}, ledger=live)
    assert "ledger.sqlite" in verify(final, full=True)["sha256"]
    fresh = tmp_path / "other_node" / "ledger.sqlite"
    assert "restored" in restore_ledger(final, fresh) and count(fresh) == 4
