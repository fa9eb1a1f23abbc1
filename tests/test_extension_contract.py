"""The extension contract: the toy method of ``docs/adding_a_method.md`` (a complete file on the
page), dropped into ``featvlr/methods/`` of a copy of the project, passes the tests that a new
method file takes part in.

The package, the tests, the docs and ``setup.cfg`` are copied to a temporary folder, the
page's code block becomes ``featvlr/methods/toy_mean.py`` there, and pytest runs on the copy in
a subprocess (``PYTHONPATH`` at the copy). The tests run are the ones that iterate over the
registered methods or over the package's modules, restricted to the toy where they are
parametrized by method (``-k``):

- ``test_import_graph.py`` (all): the file sits in the methods layer, imports nothing above it
  and stays within 450 lines;
- ``test_registry.py`` (all): discovery imports every module of the methods package;
- ``test_method_contract.py`` (all; its per-method cases for every method, the toy among them):
  batch keys declared and checked, options checked when built, ``list_methods(task=...)``;
- ``test_autocast_scores.py`` ``toy_mean``: its step under bf16 autocast scores in float32;
- ``test_bad_inputs.py`` ``toy_mean``: collecting it fails for a numeric option without a
  rule (every method's options are read then), and each bad value of the toy's options is
  refused through ``featvlr train``;
- ``test_toy_method.py`` (all): it trains, evaluates and reloads from inside the package.

The rest of the suite does not iterate over methods, so a method file cannot change its
outcome. About 40 s on one CPU thread.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from doc_toy import PACKAGE_FILE, toy_source

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("featvlr", "tests", "docs", "setup.cfg", "pyproject.toml")
TESTS = ("test_import_graph.py", "test_registry.py", "test_method_contract.py", "test_autocast_scores.py",
         "test_bad_inputs.py", "test_toy_method.py")
SELECT = "toy_mean or test_import_graph or test_registry or test_method_contract or test_toy_method"


def copy_with_toy(dest: Path) -> Path:
    """The project's copy in ``dest`` with the page's toy method in its methods package."""
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dest / name)
    (dest / PACKAGE_FILE).write_text(toy_source(), encoding="utf-8")  # the page's text, whatever is there
    return dest


@pytest.mark.slow
def test_the_documented_toy_method_passes_the_method_tests_from_inside_the_package(tmp_path):
    copy = copy_with_toy(tmp_path / "project")
    path = os.pathsep.join(p for p in (str(copy), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-v", "-x", "-p", "no:cacheprovider", "-o", "addopts=",
                           "--basetemp", str(tmp_path / "basetemp"), "-k", SELECT, *[f"tests/{t}" for t in TESTS]],
                          cwd=copy, env=env, capture_output=True, text=True, timeout=600, check=False)
    report = proc.stdout[-8000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, report
    # the toy is a method of the copied package: its autocast case exists and passed
    assert "test_training_step_scores_in_float32_under_bf16_autocast[toy_mean] PASSED" in proc.stdout, report
    assert "test_every_option_refuses_bad_values[toy_mean-model.embed_dim=0] PASSED" in proc.stdout, report
