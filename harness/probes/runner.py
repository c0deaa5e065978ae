"""Run a plan's probes on one loaded session, as the pipeline's probe worker does, and keep the
probes' notes (machine, raw repetitions, skipped shapes, bandwidth source) beside the figures.

``probe_worker`` returns ``{"figures": {probe: {metric: value}}, "notes": {...}, "load_seconds":
s}``; the pipeline and the benchmarks call it in a spawned process
(``harness.isolate.run_isolated``).
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Any


def _hook(spec: str):
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def _rss_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # the figure is a bonus; the probes run without it
        return None


def probe_worker(runtime_name: str, runtime_params: dict, artifact_path: str, probes: dict[str, dict],
                 session_hooks: str | None = None, preload: tuple[str, ...] = ()) -> dict[str, Any]:
    """``session_hooks``: "module:function" called with the loaded session before any probe
    runs (e.g. to attach ``greedy_decode_batch`` to a session class that lacks it).
    ``preload``: modules imported first, before harness's own (numpy, pydantic): the pipeline
    passes the runtime's ``import_modules``. A CUDA build of llama-cpp-python segfaulted loading
    a model in a worker that had set up harness and the probes first, and ran when llama_cpp was
    imported before anything else (H100, 2026-11-23)."""
    import sys

    # the pool's initializer (harness.isolate) imports ``preload`` before this task is unpickled and
    # notes whether numpy came first; called directly, this process's own state says it
    from harness.isolate import numpy_before_preload

    numpy_first = numpy_before_preload()
    if numpy_first is None:
        numpy_first = "numpy" in sys.modules
    for module in preload:
        importlib.import_module(module)
    from harness.probes import REGISTRY, ProbeContext, record_machine
    from harness.runtimes import REGISTRY as RUNTIMES

    runtime = RUNTIMES.get(runtime_name)()
    for module in runtime.import_modules:  # before the probes' sampler (NVML) starts
        importlib.import_module(module)
    # creating the probes then starts the memory probe's sampler before the model loads
    chosen = sorted(((REGISTRY.get(n)(), raw) for n, raw in probes.items()), key=lambda p: p[0].order)
    chosen = [(p, p.Params.model_validate(raw or {})) for p, raw in chosen]
    ctx = ProbeContext(artifact_path=Path(artifact_path))
    ctx.notes["imports"] = {"preload": list(preload), "numpy_loaded_before_preload": numpy_first}
    if any(p.needs_session for p, _ in chosen):
        n_ctx = max([64] + [p.context_length(params) for p, params in chosen])
        ctx.notes["n_ctx"] = n_ctx
        ctx.notes["rss_before_load_bytes"] = _rss_bytes()
        runtime.purpose = "probe"  # nothing here scores: a runtime skips what only scoring needs
        t0 = time.perf_counter()
        ctx.session = runtime.load(Path(artifact_path), runtime.Params.model_validate(runtime_params), n_ctx)
        ctx.load_seconds = time.perf_counter() - t0
        if session_hooks:
            _hook(session_hooks)(ctx.session)
    figures: dict[str, dict[str, float]] = {}
    try:
        for probe, params in chosen:
            t0 = time.perf_counter()
            figures[probe.name] = probe.measure(ctx, params)
            ctx.notes.setdefault("probe_seconds", {})[probe.name] = round(time.perf_counter() - t0, 3)
        record_machine(ctx)
        if ctx.session is not None:
            ctx.notes["session_info"] = ctx.session.info()
    finally:
        if ctx.session is not None:
            ctx.session.close()
    return {"figures": figures, "notes": ctx.notes, "load_seconds": ctx.load_seconds}
