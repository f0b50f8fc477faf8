"""Packaging without symlinks: the top-level folders our users asked for install as subpackages of ``decoding``
through setuptools' ``package-dir``; every package folder is listed, nothing is a link, nothing installs as a
top-level ``kernels``, ``evals`` or ``model_pairs``, and no root folder can shadow an installed module of its name
when Python starts in the repository root (``python -c``, ``python -m pytest``)."""

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
        for module in (ROOT / folder).rglob("*.py"):
            parts = module.parent.relative_to(ROOT / folder).parts
            if "__pycache__" not in parts:
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


SHADOWABLE = ("kernels", "evals", "model_pairs", "tests")


def test_no_root_folder_is_a_regular_package():
    """A root folder with an ``__init__.py`` (or a root ``kernels.py``) wins over any installed module of its name
    whenever the root is ``sys.path[0]``; without one it is at most a namespace portion, which loses to it."""
    offenders = [p.name for name in SHADOWABLE for p in (ROOT / name / "__init__.py", ROOT / f"{name}.py")
                 if p.exists()]
    assert offenders == []


def test_no_root_folder_shadows_an_installed_module_of_its_name(tmp_path):
    """From the repository root, ``import kernels`` (and ``evals``, ``model_pairs``, ``tests``) finds the installed
    module, not our folder: fake installed packages on ``PYTHONPATH`` (which comes after the root, as site-packages
    does) must be the ones imported."""
    for name in SHADOWABLE:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("INSTALLED = True\n")
    code = ("import json, importlib; print(json.dumps({n: getattr(importlib.import_module(n), 'INSTALLED', False) "
            f"for n in {SHADOWABLE!r}}}))")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    env.pop("PYTHONSAFEPATH", None)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == dict.fromkeys(SHADOWABLE, True)


def test_hugging_faces_kernels_and_a_model_class_import_from_the_repository_root():
    """transformers 5.25 imports Hugging Face's ``kernels`` from every model class; our ``kernels/`` must not be
    what it finds. Where that package is not installed (older transformers) the fake-package test above covers it."""
    outside = subprocess.run([sys.executable, "-c", "import importlib.util as u; print(bool(u.find_spec('kernels')))"],
                             cwd="/", capture_output=True, text=True, timeout=120)
    if outside.stdout.strip() != "True":
        pytest.skip("Hugging Face's kernels package is not installed")
    code = ("import kernels, decoding.kernels.ops; from transformers import LlamaForCausalLM; "
            "print(kernels.__file__)")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert not result.stdout.strip().startswith(str(ROOT)), result.stdout
