"""Every command line the repository prints composes for its command and fits its schema.

The lines are parsed out of README.md, docs/*.md, bench/RESULTS.md, the comments of configs/**/*.yaml
and the docstrings and comments of the rl/, prm/ and judges/ packages, so a line added there is checked
without touching this file. A line is `[torchrun ...] python -m <command> <overrides>` or
`make run ARGS="<overrides>"`; a line ending in ` \\` goes on in the next (its indent and comment mark
dropped); its overrides end at a comment (` #`), a closing backtick or the first word that is no override.
"""
import re
import shlex
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from judges.config import JudgeEvalConfig
from core.config import ConfigError, validate
from prm.config import PRMEvalConfig, PRMTrainConfig
from rl.config import OnlineConfig
from rl.search import SearchConfig

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = {"rl.online": ("online", OnlineConfig), "rl.plan": ("online", OnlineConfig), "rl.search": ("search", SearchConfig),
            "prm.train": ("prm_train", PRMTrainConfig), "prm.eval": ("prm_eval", PRMEvalConfig),
            "judges.eval": ("judge_eval", JudgeEvalConfig)}
MODULE_RE = re.compile(r"-m (" + "|".join(re.escape(m) for m in COMMANDS) + r")(?![\w.])(.*)")
MAKE_RE = re.compile(r'make run ARGS="([^"]*)"')


def sources() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "RESULTS.md",
             *sorted((ROOT / "configs").rglob("*.yaml"))]
    return files + [p for pkg in ("rl", "prm", "judges") for p in sorted((ROOT / pkg).glob("*.py"))]


def overrides(text: str) -> list[str]:
    """The override words at the start of `text` (a command line's tail)."""
    text = text.split("`")[0]
    text = re.split(r"\s#", text)[0]
    words = []
    tokens = shlex.split(text)
    while tokens:
        word = tokens.pop(0)
        if word in ("--config-name", "-cn") and tokens:
            words.append(f"--config-name={tokens.pop(0)}")
        elif "=" in word or word.startswith("~"):
            words.append(word)
        else:
            break
    return words


def logical_lines(path: Path) -> list[tuple[int, str]]:
    """(1-based first line, text) with continued lines (` \\` at the end) joined, minus indent and `#`."""
    out: list[tuple[int, str]] = []
    carry = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if path.suffix == ".yaml":
            line = line.partition("#")[2]   # comments only
        if carry is not None:
            start, text = carry
            line = text + " " + line.strip().lstrip("#").strip()
            number = start
        carry = (number, line[:-1].rstrip()) if line.endswith(" \\") else None
        if carry is None:
            out.append((number, line))
    return out + ([carry] if carry else [])


def command_lines() -> list[tuple[str, str, list[str]]]:
    found = []
    for path in sources():
        for number, line in logical_lines(path):
            where = f"{path.relative_to(ROOT)}:{number}"
            for match in MODULE_RE.finditer(line):
                found.append((where, match.group(1), overrides(match.group(2))))
            for match in MAKE_RE.finditer(line):
                found.append((where, "rl.online", overrides(match.group(1))))
    return found


LINES = command_lines()


def test_every_command_is_documented_somewhere():
    assert {module for _, module, _ in LINES} == set(COMMANDS)
    assert len(LINES) >= 20


@pytest.mark.parametrize("where,module,words", LINES, ids=[f"{w} {m} {' '.join(a)}" for w, m, a in LINES])
def test_documented_command_composes_and_validates(where, module, words):
    compose_and_validate(module, words)


def compose_and_validate(module: str, words: list[str]) -> None:
    """Compose `python -m <module> <words>` as hydra would and validate it against the command's schema."""
    config_name, schema = COMMANDS[module]
    names = [w.split("=", 1)[1] for w in words if w.startswith("--config-name=")]
    args = [w for w in words if not w.startswith(("--config-name=", "hydra."))]
    with initialize_config_module(config_module="configs", version_base=None):
        cfg = compose(config_name=names[0] if names else config_name, overrides=args)
    container = OmegaConf.to_container(cfg, resolve=True)
    try:
        validate(container, schema)
    except ConfigError as err:
        # a GPU command on a machine without one: it must say so (and it does before loading anything)
        if torch.cuda.is_available() or "torch.cuda.is_available() is False" not in str(err):
            raise


def test_search_and_online_build_identical_prompts():
    """rl.search reads the task through rl.online's TaskConfig and tasks.registry: same problems, same system
    prompt, same few-shot turns."""
    from core.models import load_model
    from rl.search import load_task
    from tasks.registry import make_task

    task_keys = ["num_ops=2", "ops=+-*", "seed=5", "split=test"]
    with initialize_config_module(config_module="configs", version_base=None):
        online = compose(config_name="online", overrides=[f"task.{k}" for k in task_keys])
        search = compose(config_name="search", overrides=[f"task.{k}" for k in task_keys] + ["task.limit=4"])
    online = validate(OmegaConf.to_container(online, resolve=True), OnlineConfig)
    search = validate(OmegaConf.to_container(search, resolve=True), SearchConfig)
    _, tok = load_model("tiny-random-llama", "fp32")
    online_task = make_task(online.task)
    problems, search_task = load_task(search.task)
    assert [p.question for p in problems] == [p.question for p in online_task.problems[:4]]
    assert search_task.few_shot and search_task.few_shot == online_task.few_shot
    for p in problems:
        assert search_task.prompt(tok, p.question) == online_task.prompt(tok, p.question)


def test_search_takes_the_task_groups_settings():
    """`rl.search task=chain` poses the chain group's problems (operands 1-9, 3-8 operations), the ones
    `rl.online task=chain` trains on: search.yaml sets no task difficulty of its own."""
    from rl.search import load_task
    from tasks.registry import make_task

    with initialize_config_module(config_module="configs", version_base=None):
        online = compose(config_name="online", overrides=["task=chain"])
        search = compose(config_name="search", overrides=["task=chain", "task.limit=6"])
    online = validate(OmegaConf.to_container(online, resolve=True), OnlineConfig)
    search = validate(OmegaConf.to_container(search, resolve=True), SearchConfig)
    assert (search.task.operand_max, search.task.min_ops, search.task.max_ops) == (9, 3, 8)
    problems, _ = load_task(search.task)
    assert [p.question for p in problems] == [p.question for p in make_task(online.task).problems[:6]]
