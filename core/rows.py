"""Reading JSON / JSONL records with errors that name file, 1-based line and field, and the one
ProcessBench loader (prm's datasets and judges.eval both read it through here), the HF `datasets`
sources (`hf:<id>[:<config>]`, .parquet) and data_root.

A bad record (not UTF-8, not JSON, a field missing or of the wrong type) raises DataError, or with
skip_bad_rows=True is counted in `skipped` and passed over. A .json file holding a list gives each
item's line as the line its value starts on, with the 1-based item number beside it; a .json file
that holds JSON lines (one object per line) is read as JSONL. A record over MAX_ROW_BYTES is a bad
row (a solution is a few KiB; one of megabytes would take minutes and gigabytes to tokenize).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

# Every command's `data_root` (null: this folder, ../shared/data next to the repository)
DEFAULT_DATA_ROOT = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
MAX_ROW_BYTES = 1 << 20


def data_root(root: str | Path | None = None) -> Path:
    return Path(root) if root else DEFAULT_DATA_ROOT


class DataError(ValueError):
    def __init__(self, file: str | Path, line: "int | Where | None", field_: str | None, problem: str,
                 item: int | None = None):
        unit = "line"
        if isinstance(line, Where):
            line, item, unit = line.line, line.item, line.unit
        where = str(file)
        if line is not None:
            where += f", {unit} {line}" + (f" (item {item})" if item is not None else "")
        if field_:
            where += f", field '{field_}'"
        super().__init__(f"{where}: {problem}")
        self.file, self.line, self.field, self.item = str(file), line, field_, item

    @property
    def row(self) -> int | None:  # older name
        return self.line


@dataclass(frozen=True)
class Where:
    """Where a record is: its 1-based line (or table row), and its 1-based item number in a JSON list.
    Formats as its 0-based position, the number record ids are built from."""
    line: int
    item: int | None = None
    unit: str = "line"  # "row" for tables (parquet)

    @property
    def index(self) -> int:
        return (self.item if self.item is not None else self.line) - 1

    def __str__(self) -> str:
        return str(self.index)

    __format__ = lambda self, spec: format(self.index, spec)  # noqa: E731


@dataclass
class Rows:
    """Iterate (Where, record) of a JSON/JSONL file, turning broken rows into DataErrors."""
    path: Path
    skip_bad_rows: bool = False
    skipped: list[str] = field(default_factory=list)

    def error(self, at: Where | None, name: str | None, problem: str) -> DataError:
        return DataError(self.path, at.line if at else None, name, problem, at.item if at else None)

    def records(self) -> Iterator[tuple[Where, Any]]:
        if not self.path.is_file():
            raise DataError(self.path, None, None, "file not found")
        data = self.path.read_bytes()
        if self.path.suffix == ".json" and data.lstrip()[:1] != b"{":  # a list (or not JSON at all)
            yield from self._json_list(data)
            return
        for n, raw in enumerate(data.split(b"\n"), start=1):
            if not raw.strip():
                continue
            at = Where(n)
            if len(raw) > MAX_ROW_BYTES:
                self.bad(self.error(at, None, f"row of {len(raw)} bytes, over the limit of {MAX_ROW_BYTES}"))
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                self.bad(self.error(at, None, f"not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})"))
                continue
            try:
                yield at, json.loads(text)
            except json.JSONDecodeError as e:
                self.bad(self.error(at, None, f"invalid JSON ({e.msg} at column {e.colno})"))

    def _json_list(self, data: bytes) -> Iterator[tuple[Where, Any]]:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:  # a broken byte breaks the whole document: not skippable
            line = data[:e.start].count(b"\n") + 1
            raise DataError(self.path, line, None, f"not UTF-8 (byte 0x{data[e.start]:02x})") from None
        decoder, pos = json.JSONDecoder(), _skip_ws(text, 0)
        if text[pos:pos + 1] != "[":
            raise DataError(self.path, text.count("\n", 0, pos) + 1, None, "expected a JSON list of records")
        pos, item = _skip_ws(text, pos + 1), 0
        while text[pos:pos + 1] != "]":
            item += 1
            at = Where(text.count("\n", 0, pos) + 1, item)
            start = pos
            try:
                value, pos = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as e:
                raise DataError(self.path, e.lineno, None, f"invalid JSON ({e.msg} at column {e.colno}, in item "
                                f"{item}; the rest of the file cannot be read)") from None
            if pos - start > MAX_ROW_BYTES:  # characters: at least as many bytes
                self.bad(self.error(at, None, f"record of {pos - start} characters, over the limit of "
                                              f"{MAX_ROW_BYTES} bytes"))
            else:
                yield at, value
            pos = _skip_ws(text, pos)
            if text[pos:pos + 1] == ",":
                pos = _skip_ws(text, pos + 1)
            elif text[pos:pos + 1] != "]":
                line = text.count("\n", 0, pos) + 1
                raise DataError(self.path, line, None, "invalid JSON (expected ',' or ']'; truncated file?)")

    def parse(self, fn: Callable[[Where, dict], Any]) -> list:
        out = []
        for at, rec in self.records():
            try:
                if not isinstance(rec, dict):
                    raise self.error(at, None, "row is not a JSON object")
                out.append(fn(at, rec))
            except DataError as e:
                self.bad(e)
        return out

    def bad(self, err: DataError) -> None:
        if not self.skip_bad_rows:
            raise err
        self.skipped.append(str(err))

    def get(self, at: Where, rec: dict, name: str, kind: type | tuple = str) -> Any:
        if name not in rec or rec[name] is None:
            raise self.error(at, name, "missing")
        value = rec[name]
        if not isinstance(value, kind):
            raise self.error(at, name, f"expected {getattr(kind, '__name__', kind)}, got {type(value).__name__}")
        if isinstance(value, str) and not value.strip():
            raise self.error(at, name, "empty")
        return value

    def steps(self, at: Where, rec: dict, name: str, allow_blank: bool = False) -> list[str]:
        """A non-empty list of strings; a blank step is an error unless `allow_blank` (a benchmark whose
        official harness scores such steps keeps them, so its scores stay comparable)."""
        steps = self.get(at, rec, name, list)
        if not steps:
            raise self.error(at, name, "no steps")
        for j, s in enumerate(steps):
            if not isinstance(s, str) or not (allow_blank or s.strip()):
                raise self.error(at, name, f"step {j} (0-based) is empty or not a string")
        return steps

    def first_error(self, at: Where, rec: dict, name: str, n_steps: int) -> int:
        if name not in rec or rec[name] is None:
            raise self.error(at, name, "missing (a first-error index: -1 = all steps correct)")
        value = rec[name]
        if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or not -1 <= value < n_steps:
            raise self.error(at, name, f"label {value!r} out of range [-1, {n_steps - 1}] (0-based step index)")
        return value


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


PROCESSBENCH_SUBSETS = ("gsm8k", "math", "olympiadbench", "omnimath")   # its four files / hub splits


def load_processbench_rows(path: str | Path, skip_bad_rows: bool = False,
                           rows: Rows | None = None) -> tuple[list[dict], list[str]]:
    """Validated ProcessBench rows {id, problem, steps, label, generator, final_answer_correct, line};
    and the messages of rows skipped. `id` defaults to '<file stem>-<item>' when a row has none.
    `rows`: another reader of the same records (prm.data reads hub / parquet sources)."""
    rows = rows if rows is not None else Rows(Path(path), skip_bad_rows)

    def parse(at: Where, rec: dict) -> dict:
        steps = rows.steps(at, rec, "steps")
        row_id = rec.get("id", f"{Path(path).stem}-{at.item}")
        if not isinstance(row_id, str):
            raise rows.error(at, "id", f"expected str, got {type(row_id).__name__}")
        return {"id": row_id, "problem": rows.get(at, rec, "problem"), "steps": steps,
                "label": rows.first_error(at, rec, "label", len(steps)), "generator": rec.get("generator", ""),
                "final_answer_correct": rec.get("final_answer_correct"), "line": at.line}

    return rows.parse(parse), rows.skipped


# ---------------------------------------------------------------- row reading + validation
HUB_PREFIX = "hf:"


def hub_rows(source: str, split: str) -> list[dict]:
    """The rows of `source` through HF `datasets`: `hf:<hub id>[:<config>]` (one split of a hub dataset)
    or a local .parquet file."""
    import datasets

    if source.startswith(HUB_PREFIX):
        name, _, config = source[len(HUB_PREFIX):].partition(":")
        return list(datasets.load_dataset(name, config or None, split=split))
    return list(datasets.load_dataset("parquet", data_files=source, split="train"))


@dataclass
class HubRows(Rows):
    """Rows of a HF `datasets` source (hub_rows), checked like a file's; errors name the 1-based row."""
    split: str = "train"

    def records(self) -> Iterator[tuple[Where, Any]]:
        if not str(self.path).startswith(HUB_PREFIX) and not self.path.is_file():
            raise DataError(self.path, None, None, "file not found")
        for n, rec in enumerate(hub_rows(str(self.path), self.split), start=1):
            yield Where(n, unit="row"), rec


def rows_of(source: str | Path | None, default: Path, split: str = "train", skip_bad_rows: bool = False) -> Rows:
    """`source`: None = the `default` file under data_root; `hf:<id>[:<config>]` or a .parquet file =
    through HF datasets; any other path = that JSON/JSONL file."""
    if source is None:
        return Rows(default, skip_bad_rows)
    if str(source).startswith(HUB_PREFIX) or str(source).endswith(".parquet"):
        return HubRows(Path(source), skip_bad_rows, split=split)
    return Rows(Path(source), skip_bad_rows)


last_skipped: list[str] = []  # messages of rows skipped by the most recent loader call


def finish_rows(rows: Rows, items: list) -> list:
    global last_skipped
    last_skipped = rows.skipped
    if rows.skipped:
        print(f"[prmloop.data] skipped {len(rows.skipped)} bad rows in {rows.path}; first: {rows.skipped[0]}")
    return items

