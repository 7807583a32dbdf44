"""docs/gymnasium.md's example, run as it stands in a fresh interpreter: the documented entry point works."""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "gymnasium.md"
MARKER = "<!-- example: tests/test_gymnasium_doc.py runs this block -->"


def example_code() -> str:
    after = DOC.read_text(encoding="utf-8").split(MARKER, 1)[1]
    match = re.match(r"\s*```python\n(.*?)\n```", after, re.S)
    assert match, f"{DOC}: no ```python block right after the example marker"
    return match.group(1)


def test_the_documented_example_runs_and_earns_the_outcome_reward(tmp_path):
    out = subprocess.run([sys.executable, "-c", example_code()], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    documented = re.findall(r"^(What is .*\?)$", DOC.read_text(encoding="utf-8"), re.M)
    assert lines[0] in documented and lines[-1] == "correct: True", out.stdout
    steps = [tuple(map(float, re.search(r"reward (\S+) \(PRM (\S+)\)", line).groups())) for line in lines[1:-1]]
    assert len(steps) == 2 and all(0.0 < prm < 1.0 for _, prm in steps), steps   # a sigmoid's mean over heads
    # printed to 3 decimals: the difference of two rounded figures is within 0.001 of the true one
    assert abs(steps[0][0] - steps[0][1]) <= 0.001 + 1e-9 and abs(steps[1][0] - steps[1][1] - 1.0) <= 0.001 + 1e-9, steps
