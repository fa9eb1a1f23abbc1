"""The toy method of ``docs/adding_a_method.md``, read from the page itself.

:func:`toy_source` is the page's code block that registers ``toy_mean`` (a complete
``featvlr/methods/toy_mean.py``); :func:`load_toy_method` is that module: the package's, when
the file has been dropped into ``featvlr/methods/``, else the block imported as ``toy_mean_doc``.
"""
from __future__ import annotations

import importlib
import re
import sys
import types
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding_a_method.md"
PACKAGE_MODULE = "featvlr.methods.toy_mean"
PACKAGE_FILE = "featvlr/methods/toy_mean.py"
DOC_MODULE = "toy_mean_doc"


def toy_source() -> str:
    """The one ```python block of the page that registers ``toy_mean``."""
    blocks = re.findall(r"^```python\n(.*?)^```$", DOC.read_text(encoding="utf-8"), re.S | re.M)
    toy = [b for b in blocks if '@register_method("toy_mean")' in b]
    assert len(toy) == 1, f"{DOC}: expected one code block registering toy_mean, found {len(toy)}"
    return toy[0]


def load_toy_method() -> types.ModuleType:
    """The toy method's module (see the module docstring); importing it registers ``toy_mean``."""
    try:
        return importlib.import_module(PACKAGE_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != PACKAGE_MODULE:
            raise
    if DOC_MODULE not in sys.modules:
        module = types.ModuleType(DOC_MODULE)
        module.__file__ = str(DOC)
        sys.modules[DOC_MODULE] = module  # dataclasses and type hints look the module up by name
        try:
            exec(compile(toy_source(), str(DOC), "exec"), module.__dict__)  # noqa: S102 - the page's code
        except BaseException:
            del sys.modules[DOC_MODULE]
            raise
    return sys.modules[DOC_MODULE]
