"""Name → adapter lookup for quantizers, runtimes, suites and probes.

Built-in adapters are listed by import path (one line each, in the kind's
``__init__``), so that looking a name up never imports a heavy backend; third
parties register through the entry-point group ``quantgate.<kind>``.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any


class Registry:
    def __init__(self, kind: str, builtin: dict[str, str]):
        self.kind = kind
        self._paths = dict(builtin)
        self._loaded: dict[str, Any] = {}
        self._scanned = False

    def _scan_entry_points(self) -> None:
        if self._scanned:
            return
        self._scanned = True
        for ep in entry_points(group=f"quantgate.{self.kind}"):
            self._paths.setdefault(ep.name, ep.value)

    def names(self) -> list[str]:
        self._scan_entry_points()
        return sorted(self._paths)

    def __contains__(self, name: str) -> bool:
        self._scan_entry_points()
        return name in self._paths

    def get(self, name: str) -> Any:
        self._scan_entry_points()
        if name not in self._loaded:
            if name not in self._paths:
                raise KeyError(f"unknown {self.kind} {name!r}; allowed: {', '.join(self.names())}")
            module, _, attr = self._paths[name].partition(":")
            self._loaded[name] = getattr(importlib.import_module(module), attr)
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
