"""CHANGELOG.md's table of renamed settings holds: every old override fails at start-up with a message that
names its key, and the new one composes and validates. The schemas keep no tombstone fields for old keys:
struct mode rejects them."""
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.errors import HydraException
from omegaconf import OmegaConf

from core.config import ConfigError, validate
from tests.test_commands import COMMANDS, compose_and_validate

ROOT = Path(__file__).resolve().parent.parent
ROW_RE = re.compile(r"^\| `([\w.]+)` \| `([^`]+)` \| `([^`]+)` \|$")


def renames() -> list[tuple[str, str, str]]:
    rows = [ROW_RE.match(line) for line in (ROOT / "CHANGELOG.md").read_text(encoding="utf-8").splitlines()]
    return [m.groups() for m in rows if m]


RENAMES = renames()


def test_the_changelog_lists_the_renames():
    # the five commands that had settings renamed; newer commands (rl.plan) have none
    assert len(RENAMES) >= 30 and {module for module, _, _ in RENAMES} == set(COMMANDS) - {"rl.plan"}


@pytest.mark.parametrize("module,old,new", RENAMES, ids=[f"{m} {o}" for m, o, _ in RENAMES])
def test_an_old_key_fails_naming_it_and_the_new_one_composes(module, old, new):
    config_name, schema = COMMANDS[module]
    key = old.split("=")[0]
    with pytest.raises((HydraException, ConfigError)) as err:
        with initialize_config_module(config_module="configs", version_base=None):
            cfg = compose(config_name=config_name, overrides=[old])
        validate(OmegaConf.to_container(cfg, resolve=True), schema)
    message = f"{err.value} {err.value.__cause__}"
    assert key in message, message
    compose_and_validate(module, new.split())


@pytest.mark.parametrize("path", ["prm/config.py", "rl/config.py", "rl/search.py", "judges/config.py",
                                  "core/config.py"])
def test_no_schema_keeps_a_tombstone_for_an_old_key(path):
    text = (ROOT / path).read_text(encoding="utf-8")
    assert "renamed" not in text.lower() and "reject_moved_keys" not in text


@pytest.mark.parametrize("name", ["online", "search", "prm_train", "prm_eval", "judge_eval"])
def test_a_key_forced_in_with_plus_fails_in_every_command(monkeypatch, tmp_path, name):
    """`+mode=active` composes (hydra adds the key), so the schema must still refuse it, before any model loads."""
    from tests.test_config_ranges import MAINS
    from tests.test_configs import _compose, _no_model_may_load

    _no_model_may_load(monkeypatch)
    with pytest.raises(ConfigError, match="Key 'mode' not in"):
        MAINS[name](_compose(name, ["+mode=active", f"trainer.out_dir={tmp_path}/out"]))
    assert not (tmp_path / "out").exists()
