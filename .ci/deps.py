"""The declared dependency range, read from pyproject.toml, for .ci/run and .ci/newest.

    python .ci/deps.py floor NAME   the lowest version declared for NAME ("torch>=2.13" -> 2.13)
    python .ci/deps.py top NAME     fails unless the installed NAME is the newest minor its upper bound admits
                                    ("transformers>=5.17,<5.26" wants 5.25.x): a fresh resolve that lands lower
                                    means CI no longer tests the top of the range
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def requirement(name: str) -> str:
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    found = [d for d in deps if re.match(re.escape(name) + r"\b", d)]
    if len(found) != 1:
        sys.exit(f"pyproject.toml declares {name} {len(found)} times; expected once")
    return found[0]


def bound(name: str, operator: str) -> str:
    match = re.search(operator + r"\s*([\d.]+)", requirement(name))
    if match is None:
        sys.exit(f"{requirement(name)!r} has no {operator} bound")
    return match.group(1)


def check_top(name: str) -> None:
    major, minor = (int(part) for part in bound(name, "<").split(".")[:2])
    installed = importlib.metadata.version(name)
    if tuple(int(part) for part in installed.split(".")[:2]) != (major, minor - 1):
        sys.exit(f"{name} {installed} is installed; the declared range ({requirement(name)}) tops out at "
                 f"{major}.{minor - 1}: is that release yanked, or did pip resolve an older one?")
    print(f"{name} {installed}: the top of the declared range ({requirement(name)})")


if __name__ == "__main__":
    command, package = sys.argv[1:3]
    if command == "floor":
        print(bound(package, ">="))
    elif command == "top":
        check_top(package)
    else:
        sys.exit(f"unknown command {command!r}: floor or top")
