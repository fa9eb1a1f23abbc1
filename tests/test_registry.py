"""Method registry: discovery of the methods package, and import errors that surface."""
from __future__ import annotations

import sys

import pytest

from featvlr.methods import registry


def test_every_method_module_is_discovered():
    modules = registry.method_modules()
    assert "featvlr.methods.vse" in modules and "featvlr.methods.combiner" in modules
    assert set(registry.list_methods()) >= {"vse", "hrem", "covlr", "rvlr", "gls", "mlcl", "combiner"}


def test_a_broken_method_module_raises(tmp_path, monkeypatch):
    (tmp_path / "broken_method_mod.py").write_text("import featvlr_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "method_modules", lambda: ["broken_method_mod"])
    monkeypatch.setattr(registry, "_discovered", False)
    with pytest.raises(ModuleNotFoundError, match="featvlr_no_such_dependency"):
        registry.get_method("vse")
    sys.modules.pop("broken_method_mod", None)


def test_a_method_outside_the_package_registers_on_import(tmp_path, monkeypatch):
    (tmp_path / "outside_method_mod.py").write_text(
        "from featvlr.methods import Method, register_method\n"
        "@register_method('outside_test_method')\n"
        "class Outside(Method):\n"
        "    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry._METHODS, "outside_test_method", None)  # removed again on teardown
    del registry._METHODS["outside_test_method"]
    import outside_method_mod  # noqa: F401

    assert registry.get_method("outside_test_method").__name__ == "Outside"
    assert "outside_test_method" in registry.list_methods()
    sys.modules.pop("outside_method_mod", None)
