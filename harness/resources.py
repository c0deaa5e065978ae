"""The files quantgate ships beside its code, and where a plan or policy name points.

Three kinds: ``suites`` (lm-eval task YAMLs with their ``quantgate_tasks.py``, the JSON
cases), ``gates`` (gate policies) and ``configs`` (example plans). A checkout keeps them at
the top level (``suites/``, ``gates/``, ``configs/``); a built wheel packs them into the
package as ``harness/shipped/<kind>/`` (pyproject.toml: ``[tool.setuptools] package-dir``).
Everything that reads one goes through this module, so an installed quantgate runs the same
suites and finds the same policies as a checkout.

- ``shipped(kind)``: the folder, as an ``importlib.resources`` Traversable
- ``shipped_path(kind)``: the same folder as a real directory (lm-eval's task loader and
  YAML reader need one; copied out once per process when the package is zipped)
- ``names(kind)``: the shipped plans or policies (``gates``/``configs``), by name
- ``find_policy(ref, plan_dir)``, ``find_plan(ref)``: a path or a name, resolved

Stdlib only: importing this is cheap.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

KINDS = ("suites", "gates", "configs")
_PACKED = "shipped"  # harness/shipped/<kind>/ in a wheel
_extracted: dict[str, Path] = {}


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown kind of shipped files {kind!r}: one of {', '.join(KINDS)}")


def _checkout_root() -> Path | None:
    """The source tree this package runs from (a plain checkout, or ``pip install -e``)."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() and (root / "harness").is_dir() else None


def shipped(kind: str) -> Traversable:
    """The shipped folder of ``kind`` (suites | gates | configs): the copy packed into the
    installed package, else the checkout's top-level folder."""
    _check_kind(kind)
    packed = resources.files("harness") / _PACKED / kind
    if packed.is_dir():
        return packed
    root = _checkout_root()
    if root is not None and (root / kind).is_dir():
        return root / kind
    raise FileNotFoundError(
        f"quantgate's shipped {kind}/ folder is missing: neither harness/{_PACKED}/{kind}/ in the "
        f"installed package nor {kind}/ beside a checkout (a wheel built without package data?)")


def _copy_tree(src: Traversable, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for child in src.iterdir():
        if child.is_dir():
            if child.name != "__pycache__":
                _copy_tree(child, dest / child.name)
        else:
            (dest / child.name).write_bytes(child.read_bytes())


def shipped_path(kind: str) -> Path:
    """``shipped(kind)`` as a directory on the file system. A zipped package (a wheel or zip
    on sys.path) is copied out once per process and removed at exit."""
    folder = shipped(kind)
    if isinstance(folder, Path):
        return folder
    if kind not in _extracted:
        # importlib.resources.as_file takes a directory only from Python 3.12 on
        tmp = Path(tempfile.mkdtemp(prefix=f"quantgate-{kind}-"))
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)
        _copy_tree(folder, tmp / kind)
        _extracted[kind] = tmp / kind
    return _extracted[kind]


def names(kind: str) -> list[str]:
    """The shipped policies (``gates``) or plans (``configs``): the names of their YAML files."""
    if kind == "suites":
        raise ValueError("names() lists plans (configs) or policies (gates), not suites")
    return sorted(p.name[: -len(".yaml")] for p in shipped(kind).iterdir()
                  if p.is_file() and p.name.endswith(".yaml"))


def _candidates(ref: str, folder: str, bases: list[Path]) -> list[Path]:
    out = []
    for base in bases:
        out += [base / ref, base / folder / ref, base / folder / f"{ref}.yaml"]
    return out


def _shipped_file(kind: str, ref: str) -> Path | None:
    """A bare name (``smoke``, ``smoke.yaml`` or ``gates/smoke.yaml``) among the shipped files."""
    parts = Path(ref).parts
    if len(parts) == 2 and parts[0] == kind:
        parts = parts[1:]
    if len(parts) != 1 or parts[0] in ("..", "."):
        return None
    name = parts[0]
    folder = shipped(kind)
    for candidate in (name, f"{name}.yaml"):
        if (folder / candidate).is_file():
            return shipped_path(kind) / candidate
    return None


def find_policy(ref: str, plan_dir: str | Path | None = None) -> Path | None:
    """The policy file a reference (a path or a name like ``smoke``) names, or None.

    Looked up in order: an absolute path as given; ``REF``, ``gates/REF`` and
    ``gates/REF.yaml`` under the plan's folder, the working directory and the plan's
    parent folder (the project root of ``configs/PLAN.yaml``); then the policies shipped
    with quantgate (``names("gates")``)."""
    path = Path(ref).expanduser()
    if path.is_absolute():
        return path if path.is_file() else None
    bases = [Path(plan_dir), Path.cwd(), Path(plan_dir).parent] if plan_dir is not None else [Path.cwd()]
    for candidate in _candidates(str(path), "gates", bases):
        if candidate.is_file():
            return candidate
    return _shipped_file("gates", str(path))


def find_plan(ref: str | Path) -> Path | None:
    """The plan file a reference (a path, or a name like ``smoke``) names, or None.

    Looked up in order: the path as given (relative to the working directory); ``configs/REF``
    and ``configs/REF.yaml`` under the working directory; then the plans shipped with
    quantgate (``names("configs")``)."""
    path = Path(ref).expanduser()
    if path.is_file():
        return path
    if path.is_absolute():
        return None
    for candidate in _candidates(str(path), "configs", [Path.cwd()])[1:]:
        if candidate.is_file():
            return candidate
    return _shipped_file("configs", str(path))
