"""Packaging without symlinks: the top-level folders our users asked for install as subpackages of ``decoding``
through setuptools' ``package-dir``; every package folder is listed, nothing is a link, nothing installs as a
top-level ``kernels``, ``evals`` or ``model_pairs``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import decoding

ROOT = Path(__file__).resolve().parent.parent
MAPPED = {"decoding": "decoding", "kernels": "decoding.kernels", "model_pairs": "decoding.model_pairs",
          "evals": "decoding.evals"}


def _pyproject() -> dict:
    if sys.version_info < (3, 11):
        pytest.skip("tomllib needs Python 3.11")
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_folder_is_listed_and_mapped():
    setuptools = _pyproject()["tool"]["setuptools"]
    assert setuptools["package-dir"] == {name: folder for folder, name in MAPPED.items()}
    found = set()
    for folder, name in MAPPED.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((name, *parts)))
    assert found == set(setuptools["packages"])


def test_no_symlinks_in_the_source_tree():
    links = [p for folder in MAPPED for p in (ROOT / folder).rglob("*") if p.is_symlink()]
    assert links == []


def test_the_installed_package_has_no_top_level_kernels_evals_or_model_pairs(tmp_path):
    """Away from the checkout (whose root is on sys.path when tests run from it), only ``decoding`` is installed."""
    code = ("import importlib.util, json; import decoding.kernels, decoding.evals, decoding.model_pairs; "
            "print(json.dumps({n: getattr(importlib.util.find_spec(n), 'origin', None) "
            "for n in ('kernels', 'evals', 'model_pairs')}))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    for name, origin in json.loads(result.stdout).items():
        assert origin is None or not origin.startswith(str(ROOT)), f"{name} installs as a top-level module: {origin}"


def test_the_version_is_the_distributions():
    assert decoding.__version__ == _pyproject()["project"]["version"]
