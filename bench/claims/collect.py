"""What `python -m bench.claims.run <claim> --collect` writes: the claim's raw rows, its per-unit figures and
the code its steps ran on, from the runs finished under --out.

With --merge, the committed files are the record and --out adds to it: rows of the (unit, arm) pairs that --out
has no finished run for are kept (runs made under another --out, or on another machine, and collected there),
and a pair found under --out replaces its committed rows. A claim's seeds can so be split over machines
(`--seeds`), each collected in turn. Without --merge the files are written from --out alone.

With --compare nothing is written: each (unit, arm) finished under --out is compared with its committed rows,
the check that a rebuild elsewhere reproduces them before runs made on both are merged.
"""
from __future__ import annotations

import json
from pathlib import Path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def merged_rows(committed: list[dict], new: list[dict]) -> list[dict]:
    """The committed rows of every (unit, arm) the new rows lack, then the new rows."""
    fresh = {(r["unit"], r["arm"]) for r in new}
    return [r for r in committed if (r["unit"], r["arm"]) not in fresh] + new


def merged_code(committed: dict[str, list[str]], new: dict[str, list[str]]) -> dict[str, list[str]]:
    """code version -> steps launched on it, over both records (a step listed once per version)."""
    out = {version: list(steps) for version, steps in committed.items()}
    for version, steps in new.items():
        out.setdefault(version, []).extend(s for s in steps if s not in out[version])
    return out


def write_collected(path: Path, rows: list[dict], merge: bool) -> list[dict]:
    """Write `rows` to `path` (merged with what it holds when `merge`); returns what was written."""
    rows = merged_rows(read_jsonl(path), rows) if merge else rows
    write_jsonl(path, rows)
    return rows


def write_code(path: Path, used: dict[str, list[str]], merge: bool) -> dict[str, list[str]]:
    """The code record beside the raw file; nothing is written when there is nothing to say (launches made
    before they were recorded)."""
    if merge and path.is_file():
        used = merged_code(json.loads(path.read_text()), used)
    if used:
        path.write_text(json.dumps(used, indent=1) + "\n")
    return used


def compared(committed: list[dict], new: list[dict]) -> list[str]:
    """Per (unit, arm) of the new rows: whether its rows equal the committed ones (as sets: the order rows are
    written in does not matter), how many differ, or that none are committed."""
    def by_pair(rows: list[dict]) -> dict[tuple, set[str]]:
        out: dict[tuple, set[str]] = {}
        for r in rows:
            out.setdefault((r["unit"], r["arm"]), set()).add(json.dumps(r, sort_keys=True))
        return out
    old, fresh = by_pair(committed), by_pair(new)
    lines = []
    for (unit, arm), rows in sorted(fresh.items()):
        if (unit, arm) not in old:
            lines.append(f"{unit} {arm}: {len(rows)} rows, none committed")
        elif rows == old[unit, arm]:
            lines.append(f"{unit} {arm}: {len(rows)} rows, identical to the committed rows")
        else:
            lines.append(f"{unit} {arm}: differs: {len(rows - old[unit, arm])} of {len(rows)} rows not committed, "
                         f"{len(old[unit, arm] - rows)} of {len(old[unit, arm])} committed rows not here")
    return lines
