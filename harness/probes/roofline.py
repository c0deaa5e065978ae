"""Decode against the memory-bandwidth roofline.

At batch 1 every generated token reads every weight once, so decode tokens/s × bytes of
weights read per token is the bandwidth the decode loop achieves; divided by the memory's
bandwidth it is the share of the physical limit reached (the rest is kernel-launch, Python
and synchronization overhead, or compute). The KV cache read per token at the prompt length
is given apart (``kv_bytes_per_token``) and in ``pct_of_peak_with_kv``.

Weights read per token: the bytes of every weight tensor the forward pass uses (as the
session holds them: a float32 session of a BF16 checkpoint reads 4 bytes a weight), the
token-embedding table counted as one row unless it is tied to the output layer (then the
output layer reads it whole). From the session's torch model when it has one, else from the
artifact (GGUF tensor sizes; safetensors headers), else from ``Session.weight_bytes()``.

Bandwidth: on a GPU, the datasheet figure for its name (``harness.probes.gpu.BANDWIDTH_TABLE``)
and, with torch on CUDA, a measured device-to-device copy (bytes read + written); ``pct_of_peak``
uses the datasheet figure where the table names the GPU, else the measured one (the notes say
which). On CPU only the measured host copy (numpy) is available. ``bandwidth_gbps`` overrides
both.

Decode tokens/s come from the ``throughput`` probe's batch-1 figure at ``prompt_tokens`` when
it ran in the same process first, else from the ``decode`` probe at that prompt length, else
they are measured here like ``throughput`` does.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from harness.probes import Probe, ProbeContext, record_machine
from harness.probes.timing import shape_key, summarize

GB = 1e9


class RooflineParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt_tokens: int = Field(512, ge=1)
    gen_tokens: int = Field(128, ge=1)
    repetitions: int = Field(5, ge=1)
    warmup: int = Field(1, ge=0)
    measure_bandwidth: bool = Field(True, description="time a memory copy (GPU: 1 GiB device copy)")
    bandwidth_gbps: float | None = Field(None, gt=0, description="use this bandwidth (GB/s) instead")
    device: Literal["auto", "cpu", "cuda"] = "auto"


# ------------------------------------------------------------- weight bytes
def _torch_model(session):
    model = getattr(session, "model", None)
    if model is not None and hasattr(model, "named_parameters") and hasattr(model, "get_input_embeddings"):
        return model
    return None


def torch_weight_bytes(model) -> dict[str, Any]:
    """Bytes of weights one batch-1 decode step reads from a torch model."""
    seen: dict[int, int] = {}
    for p in list(model.parameters()) + [b for b in model.buffers() if b.dim() >= 2]:
        seen.setdefault(p.data_ptr(), p.numel() * p.element_size())
    total = sum(seen.values())
    emb = model.get_input_embeddings()
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = out is not None and getattr(out, "weight", None) is not None and \
        out.weight.data_ptr() == emb.weight.data_ptr()
    w = emb.weight
    emb_bytes = w.numel() * w.element_size()
    if not tied:
        total -= emb_bytes - w.shape[-1] * w.element_size()  # one row looked up
    return {"weight_bytes_per_token": total, "tied_embeddings": tied, "source": "torch model parameters"}


def gguf_weight_bytes(path: Path) -> dict[str, Any]:
    import gguf

    reader = gguf.GGUFReader(path)
    sizes = {t.name: int(t.n_bytes) for t in reader.tensors}
    shapes = {t.name: [int(x) for x in t.shape] for t in reader.tensors}
    total = sum(sizes.values())
    tied = "output.weight" not in sizes
    if not tied and "token_embd.weight" in sizes:
        rows = shapes["token_embd.weight"][-1]  # gguf shapes are (n_embd, n_vocab)
        total -= sizes["token_embd.weight"] - sizes["token_embd.weight"] // max(rows, 1)
    return {"weight_bytes_per_token": total, "tied_embeddings": tied, "source": "GGUF tensor sizes"}


def _safetensors_sizes(path: Path) -> dict[str, int]:
    sizes = {}
    for f in sorted(path.glob("*.safetensors")):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, meta in header.items():
            if name != "__metadata__":
                a, b = meta["data_offsets"]
                sizes[name] = b - a
    return sizes


def safetensors_weight_bytes(path: Path) -> dict[str, Any]:
    sizes = _safetensors_sizes(path)
    config = json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else {}
    emb = next((n for n in sizes if n.endswith("embed_tokens.weight")), None)
    tied = bool(config.get("tie_word_embeddings", False)) or not any(n.endswith("lm_head.weight") for n in sizes)
    total = sum(sizes.values())
    if emb and not tied:
        vocab = int(config.get("vocab_size") or 1)
        total -= sizes[emb] - sizes[emb] // vocab
    return {"weight_bytes_per_token": total, "tied_embeddings": tied,
            "source": "safetensors headers (stored dtype)"}


def weight_bytes(session, artifact_path: Path | None) -> dict[str, Any]:
    model = _torch_model(session)
    if model is not None:
        return torch_weight_bytes(model)
    if artifact_path is not None:
        p = Path(artifact_path)
        if p.is_file():
            with open(p, "rb") as fh:
                magic = fh.read(4)
            if magic == b"GGUF":
                return gguf_weight_bytes(p)
        if p.is_dir() and any(p.glob("*.safetensors")):
            return safetensors_weight_bytes(p)
    hook = getattr(session, "weight_bytes", None)
    if callable(hook):
        return {"weight_bytes_per_token": int(hook()), "tied_embeddings": None, "source": "Session.weight_bytes()"}
    raise ValueError("roofline: cannot tell the bytes of weights read per token for this session/artifact")


# ----------------------------------------------------------------- KV bytes
def kv_bytes_per_token(session, artifact_path: Path | None, context: int) -> int | None:
    """Bytes of K and V cache one decode step reads at ``context`` tokens (None if unknown)."""
    model = _torch_model(session)
    if model is not None:
        c = model.config
        heads = getattr(c, "num_attention_heads", None)
        kv = getattr(c, "num_key_value_heads", None) or heads
        hd = getattr(c, "head_dim", None) or (c.hidden_size // heads if heads else None)
        layers = getattr(c, "num_hidden_layers", None)
        if not (kv and hd and layers):
            return None
        elem = getattr(model.dtype, "itemsize", None) or next(model.parameters()).element_size()
        return 2 * layers * kv * hd * elem * context
    if artifact_path is not None and Path(artifact_path).is_file():
        import gguf

        try:
            fields = gguf.GGUFReader(artifact_path).fields
            arch = fields["general.architecture"].contents()
            get = lambda k: fields[f"{arch}.{k}"].contents() if f"{arch}.{k}" in fields else None  # noqa: E731
            layers, heads = get("block_count"), get("attention.head_count")
            kv = get("attention.head_count_kv") or heads
            hd = get("attention.key_length") or (get("embedding_length") // heads if heads else None)
            if not (layers and kv and hd):
                return None
            return 2 * int(layers) * int(kv) * int(hd) * 2 * context  # llama.cpp's default F16 cache
        except Exception:
            return None
    return None


# -------------------------------------------------------------- the probe
def session_device(session) -> str:
    dev = getattr(session, "device", None)
    if isinstance(dev, str):
        return "cuda" if dev.startswith("cuda") else "cpu"
    try:
        d = (session.info() or {}).get("device")
    except Exception:
        d = None
    return "cuda" if isinstance(d, str) and d.startswith("cuda") else "cpu"


class RooflineProbe(Probe):
    name = "roofline"
    Params = RooflineParams
    metrics = {
        "decode_tps": "higher",
        "weight_bytes_per_token": "lower",
        "kv_bytes_per_token": "lower",
        "achieved_gbps": "higher",
        "bandwidth_table_gbps": "higher",
        "bandwidth_measured_gbps": "higher",
        "pct_of_peak": "higher",
        "pct_of_table": "higher",
        "pct_of_measured": "higher",
        "pct_of_peak_with_kv": "higher",
    }
    # after throughput / decode, whose figures it reuses, and after memory: its bandwidth test
    # copies 512 MiB (host) or 2 GiB (GPU) of buffers that are not the model's memory
    order = 110

    def context_length(self, params: RooflineParams) -> int:
        return params.prompt_tokens + params.gen_tokens + 1

    def _decode_tps(self, ctx: ProbeContext, params: RooflineParams) -> tuple[float, str]:
        runs = (ctx.notes.get("throughput") or {}).get("runs") or {}
        key = shape_key("decode_tps", params.prompt_tokens, 1)
        if key in runs:
            return summarize(runs[key])["median"], f"throughput probe ({key})"
        from harness.probes.throughput import run_shape

        r = run_shape(ctx.session, params.prompt_tokens, 1, params.gen_tokens, params.repetitions, params.warmup)
        ctx.notes.setdefault("roofline", {})["runs"] = r
        return summarize(r["decode_tps"])["median"], "measured by the roofline probe"

    def measure(self, ctx: ProbeContext, params: RooflineParams) -> dict[str, float]:
        record_machine(ctx)
        from harness.probes import gpu

        session = ctx.session
        device = session_device(session) if params.device == "auto" else params.device
        tps, tps_source = self._decode_tps(ctx, params)
        wb = weight_bytes(session, ctx.artifact_path)
        kvb = kv_bytes_per_token(session, ctx.artifact_path, params.prompt_tokens + params.gen_tokens // 2)
        achieved = tps * wb["weight_bytes_per_token"]
        out = {"decode_tps": tps, "weight_bytes_per_token": float(wb["weight_bytes_per_token"]),
               "achieved_gbps": achieved / GB}
        if kvb is not None:
            out["kv_bytes_per_token"] = float(kvb)
        notes: dict[str, Any] = {"device": device, "decode_tps_source": tps_source, **wb,
                                 "kv_context_tokens": params.prompt_tokens + params.gen_tokens // 2}
        table = measured = None
        if device == "cuda":
            name = gpu.gpu_name()
            notes["gpu"] = name
            hit = gpu.table_bandwidth(name)
            if hit:
                table = hit[0]
                notes["table_source"] = hit[1]
            torch = gpu.torch_cuda()
            if params.measure_bandwidth and torch is not None:
                measured = gpu.measure_cuda_bandwidth(torch)
                notes["measured_by"] = "torch device-to-device copy of 1 GiB, read + write bytes, median of 20"
        elif params.measure_bandwidth:
            measured = gpu.measure_host_bandwidth()
            notes["measured_by"] = "numpy copy of 256 MiB (host memory), read + write bytes, median of 5"
        peak, which = None, None
        if params.bandwidth_gbps:
            peak, which = params.bandwidth_gbps * GB, "bandwidth_gbps parameter"
        elif table:
            peak, which = table, "datasheet (table by GPU name)"
        elif measured:
            peak, which = measured, "measured copy"
        if table:
            out["bandwidth_table_gbps"] = table / GB
            out["pct_of_table"] = 100 * achieved / table
        if measured:
            out["bandwidth_measured_gbps"] = measured / GB
            out["pct_of_measured"] = 100 * achieved / measured
        if peak:
            out["pct_of_peak"] = 100 * achieved / peak
            if kvb is not None:
                out["pct_of_peak_with_kv"] = 100 * tps * (wb["weight_bytes_per_token"] + kvb) / peak
        notes["peak_source"] = which
        ctx.notes.setdefault("roofline", {}).update(notes)
        return out
