"""Name → adapter lookup for quantizers, runtimes, suites, probes and gates.

Built-in adapters are listed by import path (one line each, in the kind's
``__init__``), so that looking a name up never imports a heavy backend; third
parties register through the entry-point group ``quantgate.<kind>``, or in code
with ``REGISTRY.register(name, "package.module:Class")`` (or the class itself).

Each registry declares the base class its adapters must subclass, as an import
path too (``"harness.suites:Suite"``); ``get`` checks what it loads against it (as
lm-eval's ``Registry(base_cls=...)`` does), so a misdeclared entry point fails at
lookup with its name and path rather than somewhere inside a run.
"""

from __future__ import annotations

import importlib
import re
from importlib.metadata import entry_points
from typing import Any

_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def import_path(path: str) -> Any:
    """The object an import path ``package.module:Attr`` (``Attr`` may be dotted) names."""
    if not _PATH.fullmatch(path):
        raise ValueError(f"{path!r} is not an import path 'package.module:Name'")
    module, _, attr = path.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _qualname(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


class Registry:
    """Adapters of one kind by name: ``kind`` names them in messages and the entry-point group
    ``quantgate.<kind>``; ``builtin`` maps names to import paths; ``base`` (an import path,
    resolved on the first ``get``/``register``, or a class) is what every adapter must subclass."""

    def __init__(self, kind: str, builtin: dict[str, str], base: str | type | None = None):
        self.kind = kind
        self._base = base
        self._paths: dict[str, str | type] = dict(builtin)
        self._origin: dict[str, str] = dict.fromkeys(builtin, "built-in")
        self._loaded: dict[str, Any] = {}
        self._scanned = False

    def _scan_entry_points(self) -> None:
        if self._scanned:
            return
        self._scanned = True
        group = f"quantgate.{self.kind}"
        for ep in entry_points(group=group):
            if ep.name not in self._paths:
                self._paths[ep.name] = ep.value
                self._origin[ep.name] = f"entry point {ep.name!r} of group {group!r}"

    def base(self) -> type | None:
        """The class adapters must subclass (imported on first use), or None: no check."""
        if isinstance(self._base, str):
            self._base = import_path(self._base)
        return self._base

    def names(self) -> list[str]:
        self._scan_entry_points()
        return sorted(self._paths)

    def __contains__(self, name: str) -> bool:
        self._scan_entry_points()
        return name in self._paths

    def _checked(self, name: str, obj: Any, where: str) -> Any:
        base = self.base()
        if base is not None and not (isinstance(obj, type) and issubclass(obj, base)):
            got = f"class {_qualname(obj)}" if isinstance(obj, type) else f"{type(obj).__name__} {obj!r}"
            raise TypeError(f"{self.kind} {name!r} ({where}) is {got}, which is not a subclass of "
                            f"{_qualname(base)}")
        return obj

    def register(self, name: str, target: str | type, replace: bool = False) -> None:
        """Add an adapter under ``name``: an import path ``package.module:Class`` (imported and
        checked on the first ``get``) or a class (checked now). A name already taken (built-in,
        entry point or registered) raises ValueError unless ``replace``."""
        self._scan_entry_points()
        if name in self._paths and not replace:
            raise ValueError(f"{self.kind} {name!r} is already registered ({self._origin[name]}: "
                             f"{self._describe(self._paths[name])}); pass replace=True to override")
        if isinstance(target, str):
            if not _PATH.fullmatch(target):
                raise ValueError(f"{self.kind} {name!r}: {target!r} is not an import path 'package.module:Class'")
        else:
            self._checked(name, target, "registered")
        self._paths[name] = target
        self._origin[name] = "registered"
        self._loaded.pop(name, None)

    @staticmethod
    def _describe(target: str | type) -> str:
        return target if isinstance(target, str) else _qualname(target)

    def get(self, name: str) -> Any:
        self._scan_entry_points()
        if name not in self._loaded:
            if name not in self._paths:
                raise KeyError(f"unknown {self.kind} {name!r}; allowed: {', '.join(self.names())}")
            target = self._paths[name]
            where = self._origin[name]
            if isinstance(target, str):
                where = f"{where}: {target}"
                obj = import_path(target)
            else:
                obj = target
            self._loaded[name] = self._checked(name, obj, where)
        return self._loaded[name]


def package_version(dist: str) -> str:
    """Installed version of a distribution, without importing it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def package_missing(module: str, what: str, dist: str, extra: str) -> str | None:
    """A one-line reason when ``module`` cannot be imported, else None (no import done)."""
    import importlib.util

    try:
        if importlib.util.find_spec(module) is not None:
            return None
    except (ImportError, ValueError):
        pass
    return f"{what} needs the Python package '{dist}', which is not installed; install it with: pip install 'quantgate[{extra}]'"
