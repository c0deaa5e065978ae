"""Adapter registries: what ``get`` loads must subclass the registry's declared base class."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import EntryPoint

import pytest

from harness import registry as registry_module
from harness.registry import Registry, import_path
from harness.suites import Suite


class GoodSuite(Suite):
    name = "good"


class NotASuite:
    name = "not-a-suite"


NOT_A_CLASS = object()
#: this module as pytest imported it (import paths below must find these very classes)
HERE = __name__

KINDS = {
    "runtimes": ("harness.runtimes", "harness.runtimes:Runtime"),
    "quantizers": ("harness.quantizers", "harness.quantizers:Quantizer"),
    "suites": ("harness.suites", "harness.suites:Suite"),
    "probes": ("harness.probes", "harness.probes:Probe"),
}


def _registry(builtin: dict[str, str] | None = None) -> Registry:
    return Registry("suites", builtin or {}, base="harness.suites:Suite")


@pytest.fixture()
def no_entry_points(monkeypatch):
    monkeypatch.setattr(registry_module, "entry_points", lambda group: [])


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_builtin_subclasses_its_base(kind):
    """The four kinds declare their base, and every built-in (and installed entry point) loads
    as a subclass of it."""
    import importlib

    package, base_path = KINDS[kind]
    reg = importlib.import_module(package).REGISTRY
    assert reg.kind == kind
    base = import_path(base_path)
    assert reg.base() is base
    for name in reg.names():
        assert issubclass(reg.get(name), base), name


def test_base_is_resolved_lazily():
    """Declaring a base by import path imports nothing until a lookup needs it."""
    reg = Registry("suites", {"x": "no_such_module_anywhere:X"}, base="no_such_base_module:Base")
    assert "x" in reg and reg.names() == ["x"]  # names and membership never import
    with pytest.raises(ModuleNotFoundError):
        reg.get("x")


def test_lookup_imports_no_backend():
    """Looking names up, and the base classes, stays free of heavy backends."""
    code = (
        "import sys\n"
        "from harness.runtimes import REGISTRY as R\nfrom harness.quantizers import REGISTRY as Q\n"
        "from harness.suites import REGISTRY as S\nfrom harness.probes import REGISTRY as P\n"
        "for reg in (R, Q, S, P):\n    reg.names(); reg.base()\n"
        "heavy = {'torch', 'transformers', 'vllm', 'llama_cpp', 'mlflow', 'lm_eval', 'llmcompressor', 'awq', 'ray'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_get_rejects_a_builtin_path_to_a_non_subclass(no_entry_points):
    reg = _registry({"bad": f"{HERE}:NotASuite", "good": f"{HERE}:GoodSuite"})
    assert reg.get("good") is GoodSuite
    with pytest.raises(TypeError) as err:
        reg.get("bad")
    msg = str(err.value)
    assert "suites 'bad'" in msg and f"{HERE}:NotASuite" in msg and "harness.suites:Suite" in msg
    with pytest.raises(TypeError):  # not cached: every lookup fails the same way
        reg.get("bad")


def test_get_rejects_a_non_class(no_entry_points):
    reg = _registry({"obj": f"{HERE}:NOT_A_CLASS"})
    with pytest.raises(TypeError, match=rf"suites 'obj' \(built-in: {HERE}:NOT_A_CLASS\) is object"):
        reg.get("obj")


def test_entry_point_to_a_non_subclass_names_the_entry_point(monkeypatch):
    eps = [EntryPoint(name="third", value=f"{HERE}:NotASuite", group="quantgate.suites"),
           EntryPoint(name="fine", value=f"{HERE}:GoodSuite", group="quantgate.suites"),
           EntryPoint(name="perplexity", value=f"{HERE}:NotASuite", group="quantgate.suites")]
    monkeypatch.setattr(registry_module, "entry_points", lambda group: [e for e in eps if e.group == group])
    reg = _registry({"perplexity": "harness.suites.perplexity:PerplexitySuite"})
    assert reg.names() == ["fine", "perplexity", "third"]
    assert reg.get("fine") is GoodSuite
    # a built-in is not shadowed by an entry point of the same name
    assert reg.get("perplexity").__name__ == "PerplexitySuite"
    with pytest.raises(TypeError) as err:
        reg.get("third")
    msg = str(err.value)
    assert "entry point 'third' of group 'quantgate.suites'" in msg
    assert f"{HERE}:NotASuite" in msg and "not a subclass of harness.suites:Suite" in msg


def test_register_a_class_is_checked_at_once(no_entry_points):
    reg = _registry()
    reg.register("good", GoodSuite)
    assert reg.get("good") is GoodSuite and "good" in reg
    with pytest.raises(TypeError, match=rf"suites 'bad' \(registered\) is class {HERE}:NotASuite"):
        reg.register("bad", NotASuite)
    assert "bad" not in reg


def test_register_a_path_is_checked_on_get(no_entry_points):
    reg = _registry()
    reg.register("later", f"{HERE}:NotASuite")  # not imported yet
    assert "later" in reg
    with pytest.raises(TypeError, match=rf"suites 'later' \(registered: {HERE}:NotASuite\)"):
        reg.get("later")
    with pytest.raises(ValueError, match="not an import path"):
        reg.register("typo", "tests.test_registry.GoodSuite")


def test_register_refuses_a_taken_name_unless_replace(no_entry_points):
    reg = _registry({"perplexity": "harness.suites.perplexity:PerplexitySuite"})
    reg.get("perplexity")
    with pytest.raises(ValueError, match="already registered .built-in: harness.suites.perplexity:PerplexitySuite"):
        reg.register("perplexity", GoodSuite)
    reg.register("perplexity", GoodSuite, replace=True)
    assert reg.get("perplexity") is GoodSuite  # the cached class is dropped


def test_register_in_a_real_registry_is_checked():
    from harness.suites import REGISTRY

    with pytest.raises(TypeError, match="not a subclass of harness.suites:Suite"):
        REGISTRY.register("test-not-a-suite", NotASuite)
    assert "test-not-a-suite" not in REGISTRY


def test_no_base_means_no_check(no_entry_points):
    reg = Registry("things", {"obj": f"{HERE}:NOT_A_CLASS"})
    assert reg.base() is None
    assert reg.get("obj") is NOT_A_CLASS


def test_unknown_name_lists_the_allowed(no_entry_points):
    reg = _registry({"a": f"{HERE}:GoodSuite"})
    with pytest.raises(KeyError, match="unknown suites 'b'; allowed: a"):
        reg.get("b")


def test_import_path_dotted_attribute():
    assert import_path(f"{HERE}:GoodSuite.name") == "good"
    with pytest.raises(ValueError):
        import_path("no colon here")
