"""The layer contract of the ``harness`` package, read from the source (AST: nothing is
imported, except by ``test_importing_the_core_loads_no_backend`` in a fresh interpreter).

Every ``import`` in ``harness/`` is collected, at module level (including class bodies and
top-level ``if``/``try``; ``if TYPE_CHECKING:`` blocks are marked as such) and inside
functions. The contract:

(a) no import cycle among harness modules counting module-level imports; the cycles that
    function-level imports still close are listed in ``KNOWN_FUNCTION_LEVEL_CYCLES``; none joins
    a pair in ``NEVER_CYCLIC``, and the imports in ``FORBIDDEN`` do not occur at any level;
(b) no module imports another module's private name (``from harness.x import _y``) nor reads
    ``x._y`` of another harness module;
(c) the core (``CORE``) imports no backend (``BACKENDS``) and no specific adapter module
    (``harness.runtimes.<x>`` …) at module level, directly or through other harness modules;
(d) imports go downward through ``LAYERS`` (or stay within a layer); a function-level import
    may reach up to an adapter registry package (``REGISTRY_PACKAGES``: a name lookup, which
    imports no adapter).

Exceptions live in ``ALLOWED`` (one entry per import, with its owner and its way out). An
entry that no longer matches an import fails the test, so the list only shrinks.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "harness"

# ------------------------------------------------------------------ the contract
#: bottom first. A module may import modules of its own layer or of a lower one. ``x.*``
#: names a package and everything in it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # stdlib/numpy-level utilities: no harness import outside this layer
    ("foundation", ("harness", "harness.errors", "harness.registry", "harness.stats", "harness.store",
                    "harness.isolate", "harness.resources", "harness.progress", "harness.machine",
                    "harness.sandbox", "harness.journal", "harness.failures", "harness.gguf_check",
                    "harness.loadgen")),
    # the plan and result schemas; pinned data and the text sources built on it
    ("schemas & data", ("harness.config", "harness.results", "harness.data", "harness.sources",
                        "harness.calibration", "harness.scoring")),
    # what works on plans and results: validation, gates, baselines, reports, tracking
    ("services", ("harness.validate", "harness.overlap", "harness.gates.*", "harness.compare", "harness.baseline", "harness.converter",
                  "harness.planner", "harness.report.*", "harness.tracking", "harness.history", "harness.init_plan",
                  "harness.release", "harness.verify")),
    # adapters: registries (package __init__) and one module per backend/suite/probe
    ("adapters", ("harness.runtimes.*", "harness.quantizers.*", "harness.suites.*", "harness.probes.*",
                  "harness.lmeval")),
    # running a plan
    ("orchestration", ("harness.pipeline", "harness.stages")),
    # where the stages run: the executors call the pipeline's task functions
    ("execution", ("harness.executors.*",)),
    # the command line
    ("entry", ("harness.cli", "harness.__main__")),
]

#: packages whose ``__init__`` is a name -> import-path registry: a function-level import of
#: one looks a name up (imports no adapter), so it may point up the layers
REGISTRY_PACKAGES = ("harness.runtimes", "harness.quantizers", "harness.suites", "harness.probes", "harness.gates",
                     "harness.executors")

#: the core never imports a backend or a specific adapter module at module level
CORE = ("harness.config", "harness.pipeline", "harness.stages", "harness.store", "harness.results",
        "harness.gates.*", "harness.stats", "harness.report.*", "harness.validate", "harness.registry")
BACKENDS = ("llama_cpp", "torch", "transformers", "vllm", "mlflow", "lm_eval", "llmcompressor", "awq", "ray")
ADAPTER_PACKAGES = ("harness.runtimes", "harness.quantizers", "harness.suites", "harness.probes")

#: pairs that must never sit on one import cycle (function-level imports counted)
NEVER_CYCLIC = [("harness.calibration", "harness.suites.perplexity"), ("harness.config", "harness.validate")]
#: (importer, imported) never, at any level: text comes from harness.sources, and the plan's
#: structure (config) does not know its name checks (validate)
FORBIDDEN = [("harness.calibration", "harness.suites.perplexity"), ("harness.suites.perplexity", "harness.calibration"),
             ("harness.suites.lm_eval_tasks", "harness.calibration"), ("harness.config", "harness.validate")]

#: (importer, imported, enclosing function or None at module level) -> why it is allowed today
ALLOWED: dict[tuple[str, str, str | None], str] = {}

#: cycles closed only by function-level imports (a package __init__ and its own modules),
#: with their owner; each should go (the entry then fails as stale: delete it)
KNOWN_FUNCTION_LEVEL_CYCLES: dict[frozenset[str], str] = {}


# ------------------------------------------------------------------ reading the imports
@dataclass(frozen=True)
class Import:
    importer: str
    target: str  # a harness module, or a top-level external package
    internal: bool
    module_level: bool
    type_checking: bool
    function: str | None
    names: tuple[str, ...]
    line: int

    def where(self) -> str:
        at = "module level" if self.module_level else f"in {self.function}()"
        return f"{self.importer} -> {self.target} ({at}, line {self.line})"


def _modname(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES: dict[str, Path] = {_modname(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def _owning_module(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _absolute(importer: str, level: int, module: str | None) -> str:
    if level == 0:
        return module or ""
    base = importer.split(".")
    if not _is_package(importer):
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Collector(ast.NodeVisitor):
    def __init__(self, module: str):
        self.module = module
        self.imports: list[Import] = []
        self.bound: dict[str, str] = {}  # local name -> harness module it names
        self.private_uses: list[str] = []
        self._function: list[str] = []
        self._type_checking = 0

    def _add(self, target: str, internal: bool, names: tuple[str, ...], node: ast.AST) -> None:
        if internal and target == self.module:
            return
        self.imports.append(Import(self.module, target, internal, not self._function, self._type_checking > 0,
                                   self._function[-1] if self._function else None, names, node.lineno))

    # scopes
    def _visit_function(self, node) -> None:
        self._function.append(node.name)
        self.generic_visit(node)
        self._function.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = _visit_function

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self._function.append("<lambda>")
        self.generic_visit(node)
        self._function.pop()

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self._type_checking += 1
            for child in node.body:
                self.visit(child)
            self._type_checking -= 1
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    # imports
    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name == "harness" or alias.name.startswith("harness."):
                target = _owning_module(alias.name)
                self._add(target, True, (), node)
                if alias.asname:
                    self.bound[alias.asname] = target
                else:
                    self.bound["harness"] = "harness"
            else:
                self._add(alias.name.split(".")[0], False, (), node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        full = _absolute(self.module, node.level, node.module)
        if not (full == "harness" or full.startswith("harness.")):
            self._add(full.split(".")[0], False, tuple(a.name for a in node.names), node)
            return
        for alias in node.names:
            sub = f"{full}.{alias.name}"
            if sub in MODULES:  # `from harness.report import figures`: the submodule
                self._add(sub, True, (), node)
                self.bound[alias.asname or alias.name] = sub
            else:
                owner = _owning_module(full)
                self._add(owner, True, (alias.name,), node)
                if alias.name.startswith("_") and not alias.name.startswith("__") and owner != self.module:
                    self.private_uses.append(f"{self.module}:{node.lineno} imports {owner}.{alias.name}")

    # x._y of another harness module
    def visit_Attribute(self, node: ast.Attribute) -> None:
        chain = []
        cur: ast.expr = node
        while isinstance(cur, ast.Attribute):
            chain.append(cur.attr)
            cur = cur.value
        if isinstance(cur, ast.Name) and cur.id in self.bound:
            chain.reverse()
            module = self.bound[cur.id]
            for attr in chain:
                if f"{module}.{attr}" in MODULES:
                    module = f"{module}.{attr}"
                    continue
                if attr.startswith("_") and not attr.startswith("__") and module != self.module:
                    self.private_uses.append(f"{self.module}:{node.lineno} reads {module}.{attr}")
                break
            return  # the inner Attribute nodes are the same chain
        self.generic_visit(node)


def _collect() -> tuple[list[Import], list[str]]:
    imports, private = [], []
    for module, path in MODULES.items():
        c = _Collector(module)
        c.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        imports += c.imports
        private += c.private_uses
    return imports, private


IMPORTS, PRIVATE_USES = _collect()
INTERNAL = [i for i in IMPORTS if i.internal]


def _matches(module: str, pattern: str) -> bool:
    if pattern.endswith(".*"):
        pkg = pattern[:-2]
        return module == pkg or module.startswith(pkg + ".")
    return module == pattern


def _layer(module: str) -> int | None:
    found = [i for i, (_, pats) in enumerate(LAYERS) for p in pats if _matches(module, p)]
    return found[0] if len(found) == 1 else None


def _allowed(imp: Import) -> bool:
    return (imp.importer, imp.target, imp.function) in ALLOWED


def _graph(imports) -> dict[str, set[str]]:
    g: dict[str, set[str]] = defaultdict(set)
    for i in imports:
        g[i.importer].add(i.target)
    return g


def _cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[frozenset[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(frozenset(comp))

    for v in sorted(MODULES):
        if v not in index:
            strong(v)
    return out


def _runtime_imports() -> list[Import]:
    """Imports that run: TYPE_CHECKING blocks left out."""
    return [i for i in INTERNAL if not i.type_checking]


def _fmt(cycles) -> str:
    return "; ".join(" <-> ".join(sorted(c)) for c in cycles)


# ------------------------------------------------------------------ (a) cycles
def test_every_module_is_read():
    assert "harness.config" in MODULES and "harness.suites.perplexity" in MODULES
    assert len(INTERNAL) > 50


def test_no_module_level_cycles():
    cycles = _cycles(_graph(i for i in _runtime_imports() if i.module_level))
    assert not cycles, f"module-level import cycles: {_fmt(cycles)}"


def test_function_level_cycles_are_the_known_ones():
    """Counting function-level imports too (allowlisted imports left out), the cycles left are
    exactly the known ones: a new one fails, and so does a known one that is gone."""
    cycles = set(_cycles(_graph(i for i in _runtime_imports() if not _allowed(i))))
    new = cycles - set(KNOWN_FUNCTION_LEVEL_CYCLES)
    gone = set(KNOWN_FUNCTION_LEVEL_CYCLES) - cycles
    assert not new, f"new import cycles (function-level imports included): {_fmt(new)}"
    assert not gone, f"fixed, delete from KNOWN_FUNCTION_LEVEL_CYCLES: {_fmt(gone)}"


def test_named_pairs_never_cycle():
    cycles = _cycles(_graph(i for i in _runtime_imports() if not _allowed(i)))
    for a, b in NEVER_CYCLIC:
        assert not [c for c in cycles if a in c and b in c], f"{a} and {b} are on one import cycle"
    forbidden = [i.where() for i in INTERNAL if (i.importer, i.target) in FORBIDDEN and not _allowed(i)]
    assert not forbidden, "forbidden imports:\n" + "\n".join(forbidden)
    # the layering that NEVER_CYCLIC stands for: both sides take text from harness.sources
    for m in ("harness.calibration", "harness.suites.perplexity", "harness.suites.lm_eval_tasks"):
        assert "harness.sources" in {i.target for i in INTERNAL if i.importer == m}, m


# ------------------------------------------------------------------ (b) private names
def test_no_private_names_across_modules():
    assert not PRIVATE_USES, "private names used across modules:\n" + "\n".join(PRIVATE_USES)


# ------------------------------------------------------------------ (c) the core
def _core_modules() -> list[str]:
    return [m for m in MODULES if any(_matches(m, p) for p in CORE)]


def _is_adapter_module(module: str) -> bool:
    """``harness.runtimes.llama_cpp`` and the like; not the registry package itself."""
    return any(module.startswith(pkg + ".") for pkg in ADAPTER_PACKAGES)


def test_core_imports_no_backend_at_module_level():
    assert set(_core_modules()) >= {"harness.config", "harness.pipeline", "harness.store", "harness.results",
                                    "harness.gates", "harness.stats", "harness.report", "harness.validate",
                                    "harness.registry"}
    module_level = [i for i in IMPORTS if i.module_level and not i.type_checking]
    bad = [i.where() for i in module_level if i.importer in _core_modules()
           and ((not i.internal and i.target in BACKENDS) or (i.internal and _is_adapter_module(i.target)))]
    assert not bad, "the core imports a backend or an adapter module at module level:\n" + "\n".join(bad)


def test_core_reaches_no_backend_through_other_modules():
    """The module-level closure of each core module (harness modules it imports at module level,
    and theirs) imports no backend and no adapter module at module level."""
    module_level = [i for i in IMPORTS if i.module_level and not i.type_checking]
    internal = _graph(i for i in module_level if i.internal)
    external = _graph(i for i in module_level if not i.internal)
    problems = []
    for core in _core_modules():
        seen, todo = {core}, [core]
        while todo:
            for nxt in internal.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        problems += [f"{core} -> ... -> {m} imports {b}" for m in sorted(seen) for b in external.get(m, ())
                     if b in BACKENDS]
        problems += [f"{core} -> ... -> {m}" for m in sorted(seen) if _is_adapter_module(m)]
    assert not problems, "\n".join(problems)


def test_importing_the_core_loads_no_backend():
    """The same, as it runs: a fresh interpreter imports the core (function-level imports
    executed at import time included) without a backend or an adapter module."""
    code = (
        "import importlib, json, sys\n"
        f"for m in {sorted(_core_modules())!r}:\n    importlib.import_module(m)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {BACKENDS!r}"
        f" or any(m.startswith(p + '.') for p in {ADAPTER_PACKAGES!r}))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout


# ------------------------------------------------------------------ (d) layers
def test_every_module_has_one_layer():
    unplaced = [m for m in MODULES if _layer(m) is None]
    assert not unplaced, f"put each module in exactly one layer of LAYERS: {unplaced}"


def test_imports_go_down_the_layers():
    up = []
    for i in INTERNAL:
        a, b = _layer(i.importer), _layer(i.target)
        if a is None or b is None or b <= a or _allowed(i):
            continue
        if not i.module_level and i.target in REGISTRY_PACKAGES:
            continue  # a name lookup in a registry
        up.append(f"{i.where()}: {LAYERS[a][0]} -> {LAYERS[b][0]}")
    assert not up, "imports up the layers:\n" + "\n".join(up)


def test_allowlist_is_current():
    """Each ALLOWED entry still matches an import (else delete it)."""
    present = {(i.importer, i.target, i.function) for i in INTERNAL}
    stale = [k for k in ALLOWED if k not in present]
    assert not stale, f"stale ALLOWED entries, delete them: {stale}"
