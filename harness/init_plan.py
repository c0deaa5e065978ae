"""``quantgate init MODEL --gpu-gib N``: a starting plan for one model on one GPU budget.

The memory-fit planner (``harness.planner``) sizes every format the decision table names,
at the context and batch the model will serve, and the table picks the candidates:

- **fits in VRAM** (weights + KV cache + runtime reserve within the budget): FP8 and W4A16
  (GPTQ, AWQ) through llm-compressor on transformers or vLLM, and GGUF Q8_0 / Q4_K_M on
  llama.cpp with every layer on the GPU;
- **does not fit**: GGUF Q4_K_M and IQ4_XS on llama.cpp with partial offload
  (``n_gpu_layers: auto``, resolved by the planner at load against ``gpu_budget_gib``).

Plus a baseline (BF16 on transformers for an HF checkpoint, F16 GGUF on llama.cpp for a GGUF
or the embedded model), suites (perplexity, MMLU, GSM8K) and a starting policy inline. Each
entry carries a YAML comment saying why it is there, with the planner's figures. The YAML is
formatted by hand (comments), read back and checked by ``harness.validate`` before it is
reported written.
"""

from __future__ import annotations

import json
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import planner
from harness.config import EMBEDDED_MODEL
from harness.errors import PlanError

#: the GGUF types proposed whole (fits) and with partial offload (does not fit)
GGUF_WHOLE = ("Q8_0", "Q4_K_M")
GGUF_PARTIAL = ("Q4_K_M", "IQ4_XS")
#: i-quants need an importance matrix, computed from calibration data
I_QUANTS = ("IQ4_XS",)
HF_RUNTIMES = ("transformers", "vllm")

#: (candidate name, llm-compressor scheme, planner quant, needs calibration)
HF_CANDIDATES = (
    ("fp8-dynamic", "fp8-dynamic", "FP8_DYNAMIC", False),
    ("gptq-w4a16", "gptq-w4a16", "GPTQ_W4A16", True),
    ("awq-w4a16", "awq-w4a16", "AWQ_W4A16", True),
)


@dataclass
class Entry:
    """The baseline or one candidate: what goes in the plan, and why (the YAML comment)."""

    name: str
    why: str
    runtime: dict[str, Any]
    quantizer: dict[str, Any] | None = None
    memory: dict[str, Any] | None = None  # the planner's result it was chosen on

    def as_plan(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.quantizer is not None:
            out["quantizer"] = self.quantizer
        out["runtime"] = self.runtime
        return out


@dataclass
class InitPlan:
    name: str
    model: str
    command: str
    header: list[str]
    baseline: Entry
    candidates: list[Entry]
    suites: list[dict[str, Any]]
    probes: dict[str, dict[str, Any]]
    policy: dict[str, Any]
    description: str = ""
    left_out: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    runnable: bool = True  # false: the model has no weights here (a preset, a bare config.json)

    def data(self) -> dict[str, Any]:
        """The plan as the YAML holds it (what ``yaml.safe_load`` of ``render`` gives)."""
        base = self.baseline.as_plan()
        return {
            "name": self.name,
            "description": self.description,
            "baseline": {"name": base["name"], "model": self.model, "runtime": base["runtime"]},
            "candidates": [c.as_plan() for c in self.candidates],
            "suites": self.suites,
            "probes": self.probes,
            "gates": self.policy,
            "tracking": {"experiment": f"quantgate-{self.name}"},
        }


# ------------------------------------------------------------------ figures and words

def _gib(x: float) -> str:
    return f"{x:.2f}" if x >= 1 else f"{x:.3f}"


def _runtime_label(rt: str) -> str:
    return {"llama-cpp": "llama.cpp", "vllm": "vLLM", "transformers": "transformers"}.get(rt, rt)


def _figures(p: dict[str, Any]) -> str:
    return (f"{_gib(p['weights']['gib'])} GiB weights + {_gib(p['kv_cache']['gib'])} GiB KV + "
            f"{_gib(p['reserve']['gib'])} GiB reserve = {_gib(p['total']['gib'])} GiB")


def _group_size(shape: planner.ModelShape) -> int:
    """The largest llm-compressor group size (128, 64, 32) dividing every Linear's inputs."""
    ins = (shape.hidden, shape.intermediate, shape.n_heads * shape.hd)
    for g in (128, 64, 32, 16):
        if all(n % g == 0 for n in ins):
            return g
    return 8


def _slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")
    return (s or "model")[:60]


# ------------------------------------------------------------------ the decision

def _host_gib() -> float:
    import psutil

    return psutil.virtual_memory().total / planner.GIB


def build(model: str, gpu_gib: float, *, context: int = 4096, batch: int = 1, hf_runtime: str = "transformers",
          quick: bool = False, host_gib: float | None = None, command: str = "") -> InitPlan:
    """The plan for ``model`` on ``gpu_gib`` GiB of GPU memory (raises PlanError on bad input)."""
    if not gpu_gib > 0:
        raise PlanError(f"--gpu-gib {gpu_gib:g}: a GPU budget must be more than 0 GiB")
    if context < 16 or batch < 1:
        raise PlanError(f"--context {context} --batch {batch}: the context must be at least 16 tokens and the batch at least 1")
    if hf_runtime not in HF_RUNTIMES:
        raise PlanError(f"--hf-runtime {hf_runtime!r}: allowed: {', '.join(HF_RUNTIMES)}")
    try:
        src = planner.resolve_source(model)
    except (ValueError, OSError, KeyError) as exc:
        raise PlanError(str(exc) if str(model) in str(exc) else f"{model}: {exc}") from None
    shape: planner.ModelShape = src["shape"]
    host = _host_gib() if host_gib is None else float(host_gib)
    g = _group_size(shape)
    gguf_source = src["gguf_file"] is not None
    hf_source = src["hf_folder"] is not None
    runnable = gguf_source or hf_source

    def plan(quant: str, runtime: str, **kw) -> dict[str, Any]:
        try:
            return planner.plan_memory(model, quant, budget_gib=gpu_gib, context=context, batch=batch,
                                       runtime=runtime, **kw)
        except (ValueError, OSError) as exc:
            raise PlanError(f"{model}: planning {quant} on {runtime}: {exc}") from None

    # the baseline's model string, as baseline.model takes it
    text = str(model)
    if text == EMBEDDED_MODEL or text.startswith("embedded:"):
        model_ref = text
        label = text.split(":", 1)[1]
    elif gguf_source:
        model_ref = str(Path(src["gguf_file"]).resolve())
        label = Path(src["gguf_file"]).stem
    elif hf_source:
        model_ref = str(Path(src["hf_folder"]).resolve())
        label = Path(src["hf_folder"]).name
    elif text.lower() in planner.PRESETS:
        model_ref, label = f"./{text.lower()}", text.lower()
    else:  # a config.json or a folder with no weights: the folder it names
        p = Path(text).expanduser()
        folder = p.parent if p.is_file() else p
        model_ref, label = str(folder.resolve()), folder.resolve().name
    name = _slug(f"init-{label}")
    notes: list[str] = []
    if not runnable:
        notes.append(f"{model} has no weights here (a preset or a bare config): set baseline.model in the plan "
                     "to your checkpoint folder or .gguf before `quantgate validate`")
    shaped = f"at {context}x{batch}"

    # ---- baseline
    if gguf_source:
        bp = plan("gguf:F16", "llama-cpp")
        if bp["budget"]["fits"]:
            brt = {"name": "llama-cpp", "params": {"n_gpu_layers": -1}}
            why = f"F16 GGUF on llama.cpp: {_figures(bp)} {shaped} fits {gpu_gib:g} GiB: every layer on the GPU"
        else:
            off = bp["offload"]
            brt = {"name": "llama-cpp", "params": {"n_gpu_layers": "auto", "gpu_budget_gib": gpu_gib}}
            why = (f"F16 GGUF on llama.cpp: {_figures(bp)} {shaped} does not fit {gpu_gib:g} GiB: "
                   f"partial offload ({_layers(off)}), resolved at load")
        baseline = Entry("f16", why + "; it fixes the items every candidate is scored on", brt, memory=bp)
    else:
        bp = plan("hf:BF16", "transformers")
        if bp["budget"]["fits"]:
            brt = {"name": "transformers", "params": {"device": "cuda", "dtype": "bfloat16"}}
            why = f"BF16 on transformers: {_figures(bp)} {shaped} fits {gpu_gib:g} GiB: on the GPU"
        else:
            brt = {"name": "transformers", "params": {"device": "cpu", "dtype": "float32" if shape.n_params < 4e9
                                                       else "bfloat16"}}
            why = (f"BF16 on transformers: {_figures(bp)} {shaped} does not fit {gpu_gib:g} GiB: it runs on the "
                   "CPU (its speed figures are the CPU's)")
        baseline = Entry("bf16", why + "; it fixes the items every candidate is scored on", brt, memory=bp)

    calibration = {"source": "wikitext2", "samples": 8 if quick else 128, "seq_len": 256 if quick else 512, "seed": 0}
    candidates: list[Entry] = []
    left_out: list[str] = []

    # ---- fits in VRAM: FP8 and W4A16 on the HF runtime (needs HF weights: a checkpoint, or
    # the BF16 checkpoint quantgate derives from a GGUF)
    for cname, scheme, quant, needs_data in HF_CANDIDATES:
        p = plan(f"hf:{quant}", hf_runtime, group_size=g)
        what = {"FP8_DYNAMIC": "FP8", "GPTQ_W4A16": "GPTQ W4A16", "AWQ_W4A16": "AWQ W4A16"}[quant] \
            + f" on {_runtime_label(hf_runtime)}"
        if not p["budget"]["fits"]:
            left_out.append(f"{what}: {_figures(p)} {shaped} does not fit {gpu_gib:g} GiB "
                            f"({_runtime_label(hf_runtime)} cannot offload part of the model)")
            continue
        params: dict[str, Any] = {"scheme": scheme}
        if scheme.endswith("w4a16"):
            params["group_size"] = g
        q: dict[str, Any] = {"method": "llm-compressor", "params": params}
        if needs_data:
            q["calibration"] = calibration
        candidates.append(Entry(cname, f"{what}: {_figures(p)} {shaped} fits {gpu_gib:g} GiB"
                                + (f" (group size {g})" if scheme.endswith("w4a16") else ""),
                                _hf_runtime(hf_runtime, p), q, p))

    # ---- GGUF on llama.cpp: whole when it fits, else partial offload; from an HF checkpoint
    # through llama.cpp's converter, when it takes the architecture
    no_gguf = None
    if hf_source:
        from harness.validate import check_baseline_model

        no_gguf = check_baseline_model(model_ref, needs_gguf=True)
        if no_gguf:
            left_out.append(f"GGUF candidates: {no_gguf}")
    whole = {t: plan(t, "llama-cpp", gguf_options=None) for t in GGUF_WHOLE}
    for t in GGUF_WHOLE:
        p = whole[t]
        if no_gguf:
            break
        if p["budget"]["fits"]:
            candidates.append(Entry(t.lower(), f"{t} on llama.cpp: {_figures(p)} {shaped} fits {gpu_gib:g} GiB: "
                                    "every layer on the GPU", {"name": "llama-cpp", "params": {"n_gpu_layers": -1}},
                                    {"method": "gguf", "params": {"type": t}}, p))
        else:
            left_out.append(f"{t} on llama.cpp, whole: {_figures(p)} {shaped} does not fit {gpu_gib:g} GiB")
    short: list[tuple[float, str, dict[str, Any]]] = []  # partial offload: (host GiB needed, type, offload)
    if not whole["Q4_K_M"]["budget"]["fits"] and not no_gguf:
        for t in GGUF_PARTIAL:
            p = plan(t, "llama-cpp", gguf_options={"has_imatrix": True} if t in I_QUANTS else None)
            off = p["offload"]
            need_host = off["host_bytes"] / planner.GIB
            short.append((need_host, t, off))
            if need_host > host:
                left_out.append(f"{t} on llama.cpp, partial offload ({_layers(off)}): needs "
                                f"{_gib(need_host)} GiB of host memory; this machine has {_gib(host)} GiB")
                continue
            q = {"method": "gguf", "params": {"type": t}}
            if t in I_QUANTS:
                q["calibration"] = calibration
            why = (f"{t} on llama.cpp: {_figures(p)} {shaped} does not fit {gpu_gib:g} GiB: partial offload, "
                   f"{_layers(off)} ({_gib(off['gpu_bytes'] / planner.GIB)} GiB on the GPU, "
                   f"{_gib(need_host)} GiB in host memory); n_gpu_layers: auto is resolved again at load, "
                   "for the context the suites load")
            if t in I_QUANTS:
                why += "; an importance matrix from the calibration text"
            candidates.append(Entry(t.lower(), why, {"name": "llama-cpp", "params": {
                "n_gpu_layers": "auto", "gpu_budget_gib": gpu_gib}}, q, p))
            if off["n_gpu_layers"] == 0:
                notes.append(f"{t}: no layer fits {gpu_gib:g} GiB beside llama.cpp's runtime reserve "
                             f"({_gib(p['reserve']['gib'])} GiB) at {context}x{batch}: n_gpu_layers: auto "
                             "resolves to 0 and the model runs from host memory")
    if not candidates and no_gguf:
        raise PlanError(f"{model}: no candidate fits {gpu_gib:g} GiB of GPU memory whole at context {context} x batch "
                        f"{batch}, and GGUF with partial offload is out: {no_gguf}")
    if not candidates:
        why = ""
        if short:
            need, t, off = min(short, key=lambda s: s[0])
            why = (f": the smallest, {t} with {_layers(off)}, needs {_gib(need)} GiB of host memory beside "
                   "them")
        raise PlanError(f"{model}: no candidate fits {gpu_gib:g} GiB of GPU memory and {_gib(host)} GiB of host "
                        f"memory at context {context} x batch {batch}{why}; raise --gpu-gib (or --host-gib), "
                        "or lower --context / --batch")

    suites = _suites(quick)
    probes: dict[str, dict[str, Any]] = {"size": {}, "memory": {}} if quick else {
        "size": {}, "load": {}, "decode": {"prompt_tokens": 64, "gen_tokens": 64, "repetitions": 3}, "memory": {}}
    if batch > 1 and not quick:
        probes["throughput"] = {"prompt_tokens": [512], "batch_sizes": [1, batch], "gen_tokens": 64,
                                "repetitions": 3}
    m = shape
    header = [
        f"Written by `{command or 'quantgate init'}`: a starting plan; edit it freely.",
        f"Model: {label}: {m.n_layers} layers, hidden {m.hidden}, {m.n_heads} heads ({m.n_kv_heads} KV), "
        f"{m.n_params / 1e9:.3f} B params.",
        f"Budget: {gpu_gib:g} GiB of GPU memory at context {context} x batch {batch} (KV cache f16); "
        f"{_gib(host)} GiB of host memory.",
        "Decision table (seed 000, issue 15): what fits in VRAM whole: FP8 and W4A16 (GPTQ, AWQ) on "
        f"{_runtime_label(hf_runtime)}, GGUF Q8_0 / Q4_K_M on llama.cpp with every layer on the GPU; what does "
        "not: GGUF Q4_K_M / IQ4_XS with partial offload (n_gpu_layers: auto, resolved by the memory-fit "
        "planner against gpu_budget_gib when the model loads).",
        "Figures: the memory-fit planner's (`quantgate plan-memory`); runtime reserves are estimates.",
    ]
    out = InitPlan(name=name, model=model_ref, command=command, header=header, baseline=baseline,
                   candidates=candidates, suites=suites, probes=probes, policy=_policy(shape.n_params),
                   left_out=left_out, notes=notes, runnable=runnable)
    out.description = (f"{label} on a {gpu_gib:g} GiB GPU at context {context} x batch {batch}: "
                       + ", ".join(c.name for c in candidates) + f" against {baseline.name}")
    return out


def _layers(off: dict[str, Any]) -> str:
    return (("the output layer and " if off["output_on_gpu"] else "")
            + f"{off['gpu_layers']} of {off['n_layers']} layers on the GPU")


def _hf_runtime(name: str, p: dict[str, Any]) -> dict[str, Any]:
    if name == "vllm":
        # the KV cache the plan was sized for, not vLLM's default share of the whole GPU
        kv = max(0.01, round(p["kv_cache"]["gib"] + 0.005, 2))
        return {"name": "vllm", "params": {"device": "auto", "kv_cache_gib": kv}}
    # packed weights stay packed (dequantize: false), so memory is what the plan sized
    return {"name": "transformers", "params": {"device": "cuda", "dtype": "bfloat16", "dequantize": False}}


def _suites(quick: bool) -> list[dict[str, Any]]:
    if quick:  # 10 windows: the fewest the paired perplexity gate decides on
        return [
            {"suite": "perplexity", "name": "wikitext2",
             "params": {"dataset": "wikitext2", "context_length": 256, "max_tokens": 2560}},
            {"suite": "mmlu", "params": {"num_fewshot": 0, "limit": 12}},
            {"suite": "gsm8k", "params": {"num_fewshot": 5, "limit": 2, "max_gen_toks": 64}},
        ]
    return [
        {"suite": "perplexity", "name": "wikitext2",
         "params": {"dataset": "wikitext2", "context_length": 512, "max_tokens": 32768}},
        {"suite": "mmlu", "params": {"num_fewshot": 0, "limit": 400}},
        {"suite": "gsm8k", "params": {"num_fewshot": 5, "limit": 100, "max_gen_toks": 256}},
    ]


#: GSM8K is gated from this size up; smaller models score near 0 (SmolLM2-135M: 0), and a
#: baseline at 0 leaves a relative gate nothing to compare with (it reports ERROR)
GSM8K_GATE_MIN_PARAMS = 1e9


def _policy(n_params: float) -> dict[str, Any]:
    gates = [
        {"name": "ppl-increase", "kind": "max_increase_pct", "metric": "wikitext2.ppl", "max_pct": 10},
        {"name": "mmlu-drop", "kind": "max_drop", "metric": "mmlu.acc", "max": 0.03},
    ]
    words = "perplexity within 10%, MMLU within 3 points"
    if n_params >= GSM8K_GATE_MIN_PARAMS:
        gates.append({"name": "gsm8k-drop", "kind": "max_drop", "metric": "gsm8k.exact_match_flexible", "max": 0.05})
        words += ", GSM8K within 5 points"
    return {"name": "init-start", "description": f"{words} of the baseline", "inconclusive_blocks": False,
            "alpha": 0.05, "min_items": 30, "gates": gates}


# ------------------------------------------------------------------ YAML by hand

_PLAIN = re.compile(r"[A-Za-z_./][A-Za-z0-9_./+-]*")
_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"}


def _scalar(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if v != int(v) else str(int(v))
    s = str(v)
    if _PLAIN.fullmatch(s) and s.lower() not in _YAML_WORDS:
        return s
    return json.dumps(s)


def _flow(v: Any) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_flow(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_flow(x) for x in v) + "]"
    return _scalar(v)


def _comment(text: str, indent: str, width: int = 100) -> list[str]:
    return textwrap.wrap(text, width=width, initial_indent=f"{indent}# ", subsequent_indent=f"{indent}#   ",
                         break_on_hyphens=False, break_long_words=False)


def _entry_lines(e: Entry, indent: str, first: str) -> list[str]:
    lines = _comment(e.why, indent)
    lines.append(f"{indent}{first}name: {_scalar(e.name)}")
    inner = indent + " " * len(first)
    if e.quantizer is not None:
        q = e.quantizer
        if "calibration" in q:
            lines += [f"{inner}quantizer:", f"{inner}  method: {_scalar(q['method'])}",
                      f"{inner}  params: {_flow(q['params'])}", f"{inner}  calibration: {_flow(q['calibration'])}"]
        else:
            lines.append(f"{inner}quantizer: {_flow(q)}")
    lines.append(f"{inner}runtime: {_flow(e.runtime)}")
    return lines


def render(p: InitPlan) -> str:
    """The plan as commented YAML."""
    lines = [ln for h in p.header for ln in _comment(h, "")]
    if p.left_out:
        lines.append("# Considered and left out:")
        for lo in p.left_out:
            lines += _comment(f"- {lo}", "")
    lines += [f"name: {_scalar(p.name)}", f"description: {_scalar(p.description)}", ""]
    lines += ["baseline:"] + _comment(p.baseline.why, "  ")
    lines += [f"  name: {_scalar(p.baseline.name)}", f"  model: {_scalar(p.model)}"
              + ("    # set this to your checkpoint folder or .gguf" if not p.runnable else ""),
              f"  runtime: {_flow(p.baseline.runtime)}", "", "candidates:"]
    for c in p.candidates:
        lines += _entry_lines(c, "  ", "- ")
    lines += ["", "# the same items for every candidate: perplexity windows, MMLU questions, GSM8K problems",
              "suites:"]
    for s in p.suites:
        lines.append(f"  - {_flow(s)}")
    lines += ["", "probes: " + _flow(p.probes), "",
              "# a starting policy: INCONCLUSIVE is reported, not blocking; tighten it for sign-off (gates/release.yaml),",
              "# and add {name: vram, kind: max_value, metric: memory.peak_vram_gib, max: BUDGET} once it runs on the GPU",
              "gates:"]
    pol = p.policy
    for k in ("name", "description", "inconclusive_blocks", "alpha", "min_items"):
        lines.append(f"  {k}: {_scalar(pol[k])}")
    lines.append("  gates:")
    lines += [f"    - {_flow(g)}" for g in pol["gates"]]
    if not any(g["metric"].startswith("gsm8k.") for g in pol["gates"]):
        lines.append(f"    # GSM8K is measured, not gated: below {GSM8K_GATE_MIN_PARAMS / 1e9:g} B parameters models "
                     "score near 0 on it")
    lines += ["", f"tracking: {_flow({'experiment': f'quantgate-{p.name}'})}", ""]
    return "\n".join(lines)


def write(p: InitPlan, out: str | Path | None = None, *, force: bool = False) -> Path:
    """Write the plan (default ``./<plan name>.yaml``), check that it reads back as built and
    that ``harness.validate`` accepts it; raise PlanError otherwise."""
    import yaml

    from harness.validate import load_plan

    path = Path(out) if out else Path(f"{p.name}.yaml")
    if path.exists() and not force:
        raise PlanError(f"{path}: exists; pass --force to overwrite it, or --out another file")
    text = render(p)
    if yaml.safe_load(text) != p.data():  # pragma: no cover - a formatting bug, not bad input
        raise PlanError(f"{path}: internal error: the written YAML does not read back as the plan")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise PlanError(f"{path}: cannot write the plan: {exc.strerror or exc}") from None
    if p.runnable:
        load_plan(path)  # raises PlanError naming each problem
    return path


def summary(p: InitPlan, path: Path) -> list[str]:
    """What `quantgate init` prints."""
    lines = [f"wrote {path}: plan {p.name!r}, baseline {p.baseline.name} ({p.baseline.runtime['name']}), "
             f"{len(p.candidates)} candidates"]
    for c in p.candidates:
        lines.append(f"  {c.name}: {c.why}")
    lines += [f"note: {n}" for n in p.notes]
    if p.runnable:
        lines.append(f"next: quantgate validate {path} && quantgate run {path}")
    return lines
