"""Write constraints.txt: the exact versions, in this environment, of everything detbench needs
(its dependencies, the ``tf-cpu`` and ``dev`` extras, transitively). ``make install`` installs
with ``-c constraints.txt``, so a fresh clone gets the TensorFlow and NumPy that produced the
numbers; ``make lock`` refreshes it from the current .venv.

Run: ``python scripts/lock.py [EXTRA ...] > constraints.txt`` (default extras: tf-cpu dev)."""

from __future__ import annotations

import re
import sys
from importlib import metadata

from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = "detbench"


def _name(text: str) -> str:
    return re.sub(r"[-_.]+", "-", text).lower()


def closure(root: str, extras: list[str]) -> dict[str, str]:
    """Canonical name -> installed version of ``root``'s requirements (with ``extras``),
    transitively; requirements whose markers do not apply here are skipped."""
    env = default_environment()
    found: dict[str, str] = {}
    todo: list[tuple[str, tuple[str, ...]]] = [(root, tuple(extras))]
    while todo:
        name, wanted = todo.pop()
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            print(f"# not installed here: {name}", file=sys.stderr)
            continue
        for text in dist.requires or []:
            req = Requirement(text)
            ok = req.marker is None or any(
                req.marker.evaluate({**env, "extra": e}) for e in ("", *wanted))
            if not ok:
                continue
            key = _name(req.name)
            if key in found or key == _name(root):
                continue
            try:
                found[key] = metadata.version(req.name)
            except metadata.PackageNotFoundError:
                continue
            todo.append((req.name, tuple(req.extras)))
    return found


def main(argv: list[str]) -> int:
    extras = argv or ["tf-cpu", "dev"]
    pins = closure(ROOT, extras)
    for one, other in (("tensorflow-cpu", "tensorflow"), ("tensorflow", "tensorflow-cpu")):
        if one in pins and other not in pins:
            pins[other] = pins[one]  # TF_EXTRA=tf or tf-cpu: the same TensorFlow version
    print(f"# make lock: exact versions for detbench[{','.join(extras)}], from "
          f"Python {sys.version.split()[0]}; installed by make install (-c constraints.txt)")
    for key in sorted(pins):
        print(f"{key}=={pins[key]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
