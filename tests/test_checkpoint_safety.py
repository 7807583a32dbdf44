"""Checkpoints never execute code on load and name damage: a byte flipped in any file of a round
checkpoint is detected by the opt-in re-hash (file and round named), a truncated file by the default
size check, resume=auto falls back to the newest intact round loudly, a pickle payload in any state file
is refused without running; the manifest's digests, computed while the files were written, equal a
re-hash of the files."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import core.checkpoint_io
from core.checkpoint_io import CheckpointError, load_state, sha256_file, verify, write_manifest
from prm.config import PRMConfig
from core.config import TrainerConfig
from prm.model import EnsemblePRM
from prm.update import PRMLearner
from rl.checkpoint import load_round, resolve_resume, save_round
from rl.config import AlgoConfig, PolicyConfig
from rl.policy import PolicyTrainer


class Payload:
    """Unpickling this would create a marker file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module", params=[True, False], ids=["deepspeed", "plain"])
def parts(request):
    trainer = TrainerConfig(deepspeed=request.param, seed=3)
    policy = PolicyTrainer(PolicyConfig(model="tiny-random-llama", dtype="fp32", train_mode="full", lr=1e-3),
                           AlgoConfig(), trainer)
    learner = PRMLearner(EnsemblePRM(PRMConfig(backbone="tiny-random-llama", dtype="fp32", num_heads=4,
                                               batch_size=4, head_lr=1e-2)), trainer)
    return policy, learner


@pytest.fixture()
def two_rounds(tmp_path, parts):
    policy, learner = parts
    for index in (1, 2):
        save_round(tmp_path, index, policy, learner, {"data_position": index, "history": [], "ledger": "x"})
    return tmp_path, policy, learner


def test_round_trip_loads_and_every_file_is_in_the_manifest(two_rounds):
    out, policy, learner = two_rounds
    newest = out / "checkpoints" / "round_0002"
    files = verify(newest)["sha256"]
    assert "state.pt" in files and any(name.startswith("policy/") for name in files)
    assert any(name.startswith("prm/") for name in files)
    assert load_round(resolve_resume("auto", out), policy, learner)["data_position"] == 2


def test_a_byte_flipped_in_any_file_is_named_and_auto_falls_back_loudly(two_rounds, capsys):
    out, policy, learner = two_rounds
    newest = out / "checkpoints" / "round_0002"
    files = sorted(p for p in newest.rglob("*") if p.is_file() and p.name != "manifest.json")
    assert len(files) >= 4
    for path in files:
        original = path.read_bytes()
        damaged = bytearray(original)
        damaged[len(damaged) // 2] ^= 0xFF
        path.write_bytes(bytes(damaged))
        name = path.relative_to(newest).as_posix()
        assert resolve_resume(str(newest), out) == newest   # same size: only the re-hash (opt-in) sees it
        with pytest.raises(CheckpointError, match=f"file {name} is damaged"):
            resolve_resume(str(newest), out, full=True)  # an explicit choice: an error naming the file
        assert resolve_resume("auto", out, full=True).name == "round_0001"
        err = capsys.readouterr().err
        assert "round 2 checkpoint" in err and name in err and "falls back" in err
        path.write_bytes(original)
    assert resolve_resume("auto", out, full=True).name == "round_0002"


def test_a_truncated_file_is_named_by_the_default_size_check(two_rounds, capsys):
    out, _, _ = two_rounds
    newest = out / "checkpoints" / "round_0002"
    for path in sorted(p for p in newest.rglob("*") if p.is_file() and p.name != "manifest.json"):
        original = path.read_bytes()
        path.write_bytes(original[:-1])
        name = path.relative_to(newest).as_posix()
        with pytest.raises(CheckpointError, match=f"file {name} is damaged \\(size"):
            resolve_resume(str(newest), out)
        assert resolve_resume("auto", out).name == "round_0001" and name in capsys.readouterr().err
        path.write_bytes(original)


def test_streamed_digests_equal_a_rehash_and_big_files_are_not_reread(tmp_path, parts, monkeypatch):
    """save_round hashes each file while writing it: the manifest equals sha256 of the files on disk, and
    writing it reads back only the small files another writer made (DeepSpeed's `latest`, its script)."""
    policy, learner = parts
    reread = []
    real = core.checkpoint_io.sha256_file
    monkeypatch.setattr(core.checkpoint_io, "sha256_file",
                        lambda p: reread.append((p.name, p.stat().st_size)) or real(p))
    final = save_round(tmp_path, 1, policy, learner, {"data_position": 1, "history": [], "ledger": "x"})
    during_save = list(reread)
    manifest = verify(final, full=True)
    files = sorted(p for p in final.rglob("*") if p.is_file() and p.name != "manifest.json")
    assert {p.relative_to(final).as_posix(): sha256_file(p) for p in files} == manifest["sha256"]
    assert {p.relative_to(final).as_posix(): p.stat().st_size for p in files} == manifest["bytes"]
    assert all(size < 4096 and not name.endswith((".pt", ".safetensors")) for name, size in during_save), during_save
    assert any(p.suffix in (".pt", ".safetensors") for p in files)


def forge_manifests(victim: Path, round_dir: Path) -> None:
    """Checksums that match the tampered file: the payload must be refused by the loader itself."""
    if victim.parent != round_dir and (victim.parent / "manifest.json").exists():
        write_manifest(victim.parent)
    write_manifest(round_dir, round=2)


@pytest.mark.parametrize("victim", ["state.pt", "policy.pt", "learner.pt"])
def test_a_pickle_payload_is_not_executed(two_rounds, tmp_path, victim):
    out, policy, learner = two_rounds
    newest = out / "checkpoints" / "round_0002"
    targets = [p for p in newest.rglob(victim)]
    if not targets:
        pytest.skip(f"no {victim} in this layout (DeepSpeed keeps its own files)")
    marker = tmp_path / "executed"
    torch.save({"weights": torch.zeros(2), "evil": Payload(marker)}, targets[0])
    forge_manifests(targets[0], newest)
    with pytest.raises(CheckpointError, match="refused or unreadable"):
        load_round(newest, policy, learner)
    assert not marker.exists()


def test_a_payload_in_a_deepspeed_file_is_not_executed(two_rounds, tmp_path):
    out, policy, learner = two_rounds
    newest = out / "checkpoints" / "round_0002"
    targets = sorted(newest.rglob("*model_states.pt"))
    if not targets:
        pytest.skip("plain layout")
    marker = tmp_path / "executed"
    torch.save({"module": Payload(marker)}, targets[0])
    forge_manifests(targets[0], newest)
    with pytest.raises(CheckpointError):
        load_round(newest, policy, learner)
    assert not marker.exists()


def test_load_state_refuses_a_truncated_file_naming_it(tmp_path):
    path = tmp_path / "state.pt"
    torch.save({"round": 3}, path)
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(CheckpointError, match="state.pt"):
        load_state(path)


@pytest.mark.parametrize("deepspeed", [False, True], ids=["plain", "deepspeed"])
def test_prm_learner_falls_back_to_the_previous_intact_save_only_when_asked(tmp_path, capsys, deepspeed):
    learner = PRMLearner(EnsemblePRM(PRMConfig(backbone="tiny-random-llama", dtype="fp32", num_heads=4,
                                               batch_size=4, head_lr=1e-2)),
                          TrainerConfig(deepspeed=deepspeed, resume_check="sha256"))   # a same-size flip: re-hash
    for step in (1, 2, 3):
        learner.global_step = step
        learner.save_checkpoint(tmp_path, {"update": step})
    assert sorted(p.name for p in tmp_path.glob("step*")) == ["step2", "step3"]  # the newest and a fallback
    victim = next(p for p in sorted((tmp_path / "step3").rglob("*")) if p.is_file() and p.name != "manifest.json")
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0x01
    victim.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"step3: file {victim.name} is damaged"):
        learner.load_checkpoint(tmp_path)
    assert learner.load_checkpoint(tmp_path, fall_back=True) == {"update": 2}
    err = capsys.readouterr().err
    assert "step3" in err and victim.name in err and "falls back" in err


def test_the_docs_state_the_checkpoint_format_each_setting_writes(two_rounds):
    out, policy, _ = two_rounds
    files = [p.name for p in (out / "checkpoints" / "round_0002" / "policy").rglob("*") if p.is_file()]
    readme = " ".join((Path(__file__).resolve().parents[1] / "docs" / "online.md").read_text().split())
    if policy.engine is not None:  # trainer.deepspeed=true: DeepSpeed's torch.save archives, no safetensors
        assert not any(name.endswith(".safetensors") for name in files)
        assert ("with `trainer.deepspeed=true` (the default) a round's weights and optimizer are DeepSpeed's own "
                "files (`torch.save` archives, read back with `weights_only=True`)") in readme
    else:
        assert "model.safetensors" in files
        assert "with `trainer.deepspeed=false` the weights are `model.safetensors`" in readme
    assert "(weights in safetensors," not in readme  # the claim that held only for deepspeed=false
