"""House rule: crysray's imports form layers with no cycles (tools/check_layers.py)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

from support import REPO

SCRIPT = REPO / "tools" / "check_layers.py"


def _checker():
    spec = importlib.util.spec_from_file_location("check_layers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_crysray_has_no_import_cycles_and_no_upward_imports():
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    assert result.stdout.strip().endswith("0 layering faults in " + str(REPO / "crysray"))


def test_the_checker_finds_cycles_and_places_modules_by_longest_prefix():
    check = _checker()
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert check.cycles(graph) == [["a", "b", "c"]]
    assert check.cycles({"a": {"b"}, "b": set()}) == []
    names = [name for name, _ in check.LAYERS]
    assert names[check.layer_of("crysray.methods.kldm")] == "maths"
    assert names[check.layer_of("crysray.structures")] == "core"
    assert check.layer_of("crysray.nowhere") is None


def test_the_checker_reports_an_upward_import(tmp_path, monkeypatch):
    """A core module importing a method is reported, with both layers named."""
    check = _checker()
    package = tmp_path / "crysray"
    (package / "methods").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "methods" / "__init__.py").write_text("")
    (package / "methods" / "m.py").write_text("import crysray.types\n")
    (package / "types.py").write_text("def f():\n    from crysray.methods import m\n")
    monkeypatch.setattr(check, "PACKAGE", package)
    faults = check.faults()
    assert "crysray.types (core) imports crysray.methods.m (maths), a higher layer" in faults
    assert "import cycle: crysray.methods.m -> crysray.types" in faults
