"""Memory-fit planner: will this candidate fit, and how much of it on the GPU?

Bit width predicts storage, not speed or fit. This module plans memory as

    weights (with their quantization metadata and the tensors kept at higher precision)
  + KV cache (at a declared context length, batch size and KV dtype)
  + runtime reserve (compute buffers, CUDA context: a declared overhead)

and, for a GGUF on llama.cpp, how many layers fit on the GPU with the rest offloaded.

Inputs: an HF ``config.json`` dict, a checkpoint folder (its config.json; the real
safetensors bytes when no quant type is asked for), a GGUF file (its metadata and tensor
shapes; its real tensor types when no quant type is asked for), a preset name
(``llama-2-7b`` ...) or ``embedded:smollm2-135m``.

Quant types. HF formats (as llm-compressor / compressed-tensors writes them): F32, F16,
BF16, FP8 (per-channel; ``FP8_TENSOR`` per-tensor), W8A8 / W8A16 INT8 (per-channel),
W4A16 / GPTQ / AWQ (4 bit + a 16-bit scale per group, + a 4-bit zero point per group when
asymmetric), MXFP4 (4 bit + an 8-bit scale per 32), NVFP4 (4 bit + an FP8 scale per 16 + an
FP32 scale per tensor). Embeddings, lm_head, norms and biases stay at 16 bit. GGUF: every
llama.cpp file type (Q8_0, Q4_K_M, IQ3_M ...), with block sizes from ``gguf.GGML_QUANT_SIZES``
and the per-tensor type mix of llama.cpp's ``llama_tensor_get_type`` (ported below from the
llama.cpp that llama-cpp-python 0.3.36 vendors), including its fallback to a 32-block type
when a row's length is not a multiple of 256.

Nothing heavy is imported at module level; ``gguf`` is imported when first needed.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import re
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GIB = 1 << 30
MIB = 1 << 20

# --------------------------------------------------------------------------------------
# model shapes
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    """The few config.json fields that decide a dense decoder's tensor shapes."""

    n_layers: int
    hidden: int
    intermediate: int
    n_heads: int
    n_kv_heads: int
    vocab: int
    tied: bool = False
    head_dim: int | None = None
    attention_bias: bool = False  # q, k, v and o projections have biases
    qkv_bias: bool = False  # q, k, v only (Qwen2)
    mlp_bias: bool = False
    arch: str = "llama"
    name: str = ""

    @property
    def hd(self) -> int:
        return self.head_dim or self.hidden // self.n_heads

    @property
    def n_params(self) -> int:
        return sum(t.n_elements for t in model_tensors(self))

    @classmethod
    def from_config(cls, config: dict[str, Any], name: str = "") -> ModelShape:
        cfg = dict(config.get("text_config") or {}) or config
        missing = [k for k in ("num_hidden_layers", "hidden_size", "intermediate_size",
                               "num_attention_heads", "vocab_size") if k not in cfg]
        if missing:
            raise ValueError(f"config lacks {', '.join(missing)}")
        model_type = str(cfg.get("model_type") or config.get("model_type") or "llama")
        return cls(
            n_layers=int(cfg["num_hidden_layers"]),
            hidden=int(cfg["hidden_size"]),
            intermediate=int(cfg["intermediate_size"]),
            n_heads=int(cfg["num_attention_heads"]),
            n_kv_heads=int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"]),
            vocab=int(cfg["vocab_size"]),
            tied=bool(cfg.get("tie_word_embeddings", config.get("tie_word_embeddings", False))),
            head_dim=int(cfg["head_dim"]) if cfg.get("head_dim") else None,
            attention_bias=bool(cfg.get("attention_bias", False)),
            qkv_bias=model_type == "qwen2",
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            arch=model_type,
            name=name or str(cfg.get("_name_or_path") or config.get("_name_or_path") or ""),
        )

    def to_config(self) -> dict[str, Any]:
        return {"num_hidden_layers": self.n_layers, "hidden_size": self.hidden,
                "intermediate_size": self.intermediate, "num_attention_heads": self.n_heads,
                "num_key_value_heads": self.n_kv_heads, "vocab_size": self.vocab,
                "tie_word_embeddings": self.tied, "head_dim": self.hd, "model_type": self.arch}


#: HF config.json values of a few well-known dense models (for hand examples and the CLI).
PRESETS: dict[str, dict[str, Any]] = {
    "llama-2-7b": dict(num_hidden_layers=32, hidden_size=4096, intermediate_size=11008,
                       num_attention_heads=32, num_key_value_heads=32, vocab_size=32000),
    "llama-2-13b": dict(num_hidden_layers=40, hidden_size=5120, intermediate_size=13824,
                        num_attention_heads=40, num_key_value_heads=40, vocab_size=32000),
    "llama-2-70b": dict(num_hidden_layers=80, hidden_size=8192, intermediate_size=28672,
                        num_attention_heads=64, num_key_value_heads=8, vocab_size=32000),
    "llama-3-8b": dict(num_hidden_layers=32, hidden_size=4096, intermediate_size=14336,
                       num_attention_heads=32, num_key_value_heads=8, vocab_size=128256),
    "llama-3-70b": dict(num_hidden_layers=80, hidden_size=8192, intermediate_size=28672,
                        num_attention_heads=64, num_key_value_heads=8, vocab_size=128256),
    "smollm2-135m": dict(num_hidden_layers=30, hidden_size=576, intermediate_size=1536,
                         num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                         tie_word_embeddings=True),
}


def preset(name: str) -> ModelShape:
    key = name.lower()
    if key not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return ModelShape.from_config({**PRESETS[key], "model_type": "llama"}, name=key)


@dataclass(frozen=True)
class TensorSpec:
    """One tensor, named as in GGUF, shape in ggml order: ``shape[0]`` is the row length."""

    name: str
    shape: tuple[int, ...]
    layer: int | None = None  # repeating-layer index, None for embeddings/output
    src_type: str = "F16"  # the type it has in an unquantized GGUF (1-D tensors: F32)

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def rows(self) -> int:
        return self.n_elements // self.shape[0]

    @property
    def role(self) -> str:
        """embedding | output | norm | bias | linear | other"""
        if self.name.startswith("token_embd"):
            return "embedding"
        if self.name == "output.weight":
            return "output"
        if self.name.endswith("_norm.weight") or self.name.endswith("norm.weight"):
            return "norm"
        if self.name.endswith(".bias"):
            return "bias"
        if len(self.shape) >= 2 and self.name.endswith(".weight"):
            return "linear"
        return "other"


def model_tensors(shape: ModelShape) -> list[TensorSpec]:
    """The tensors of a llama-style dense decoder, in the order llama.cpp's converter writes them."""
    h, hd, inter = shape.hidden, shape.hd, shape.intermediate
    q, kv = shape.n_heads * hd, shape.n_kv_heads * hd
    out = [TensorSpec("token_embd.weight", (h, shape.vocab))]
    for i in range(shape.n_layers):
        p = f"blk.{i}."
        layer = [
            TensorSpec(p + "attn_norm.weight", (h,), i, "F32"),
            TensorSpec(p + "attn_q.weight", (h, q), i),
            TensorSpec(p + "attn_k.weight", (h, kv), i),
            TensorSpec(p + "attn_v.weight", (h, kv), i),
            TensorSpec(p + "attn_output.weight", (q, h), i),
            TensorSpec(p + "ffn_norm.weight", (h,), i, "F32"),
            TensorSpec(p + "ffn_gate.weight", (h, inter), i),
            TensorSpec(p + "ffn_up.weight", (h, inter), i),
            TensorSpec(p + "ffn_down.weight", (inter, h), i),
        ]
        if shape.attention_bias or shape.qkv_bias:
            layer += [TensorSpec(p + "attn_q.bias", (q,), i, "F32"),
                      TensorSpec(p + "attn_k.bias", (kv,), i, "F32"),
                      TensorSpec(p + "attn_v.bias", (kv,), i, "F32")]
        if shape.attention_bias:
            layer.append(TensorSpec(p + "attn_output.bias", (h,), i, "F32"))
        if shape.mlp_bias:
            layer += [TensorSpec(p + "ffn_gate.bias", (inter,), i, "F32"),
                      TensorSpec(p + "ffn_up.bias", (inter,), i, "F32"),
                      TensorSpec(p + "ffn_down.bias", (h,), i, "F32")]
        out += layer
    out.append(TensorSpec("output_norm.weight", (h,), None, "F32"))
    if not shape.tied:
        out.append(TensorSpec("output.weight", (h, shape.vocab)))
    return out


def _layer_of(name: str) -> int | None:
    m = re.match(r"blk\.(\d+)\.", name) or re.search(r"\blayers\.(\d+)\.", name)
    return int(m.group(1)) if m else None


# --------------------------------------------------------------------------------------
# reading checkpoints
# --------------------------------------------------------------------------------------


def read_gguf(path: str | Path) -> tuple[dict[str, Any], list[tuple[TensorSpec, str, int]]]:
    """(an HF-style config from the GGUF metadata, [(tensor, its real type, its n_bytes)])."""
    p = Path(path).resolve()
    st = p.stat()
    config, tensors = _read_gguf_cached(str(p), st.st_mtime_ns, st.st_size)
    return dict(config), list(tensors)


@functools.lru_cache(maxsize=32)
def _read_gguf_cached(path: str, _mtime_ns: int, _size: int):
    import gguf

    reader = gguf.GGUFReader(path)

    def field_value(key: str, default=None):
        f = reader.fields.get(key)
        return f.contents() if f is not None else default

    arch = field_value("general.architecture", "llama")
    tensors = [(TensorSpec(t.name, tuple(int(x) for x in t.shape), _layer_of(t.name),
                           t.tensor_type.name), t.tensor_type.name, int(t.n_bytes))
               for t in reader.tensors]
    names = {t.name for t, _, _ in tensors}
    n_heads = int(field_value(f"{arch}.attention.head_count"))
    hidden = int(field_value(f"{arch}.embedding_length"))
    vocab = field_value(f"{arch}.vocab_size")
    if vocab is None:
        tokens = reader.fields.get("tokenizer.ggml.tokens")
        vocab = len(tokens.data) if tokens is not None else None
    if vocab is None:
        vocab = next(t.shape[1] for t, _, _ in tensors if t.name == "token_embd.weight")
    config = {
        "model_type": arch,
        "num_hidden_layers": int(field_value(f"{arch}.block_count")),
        "hidden_size": hidden,
        "intermediate_size": int(field_value(f"{arch}.feed_forward_length")),
        "num_attention_heads": n_heads,
        "num_key_value_heads": int(field_value(f"{arch}.attention.head_count_kv", n_heads)),
        "head_dim": int(field_value(f"{arch}.attention.key_length", hidden // n_heads)),
        "vocab_size": int(vocab),
        "tie_word_embeddings": "output.weight" not in names,
        "_name_or_path": str(field_value("general.name", Path(path).stem)),
    }
    return config, tuple(tensors)


def read_safetensors(folder: str | Path) -> list[tuple[str, str, int]]:
    """[(tensor name, dtype, n_bytes)] from the headers of every ``*.safetensors`` in ``folder``."""
    out = []
    for f in sorted(Path(folder).glob("*.safetensors")):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            a, b = meta["data_offsets"]
            out.append((name, meta["dtype"], int(b - a)))
    return out


# --------------------------------------------------------------------------------------
# quant types
# --------------------------------------------------------------------------------------

#: llama.cpp file types (llama-quantize names) and their default tensor type
GGUF_FTYPES: dict[str, str] = {
    "F32": "F32", "F16": "F16", "BF16": "BF16",
    "Q4_0": "Q4_0", "Q4_1": "Q4_1", "Q5_0": "Q5_0", "Q5_1": "Q5_1", "Q8_0": "Q8_0",
    "Q2_K": "Q2_K", "Q2_K_S": "Q2_K", "Q3_K_S": "Q3_K", "Q3_K_M": "Q3_K", "Q3_K_L": "Q3_K",
    "Q4_K_S": "Q4_K", "Q4_K_M": "Q4_K", "Q5_K_S": "Q5_K", "Q5_K_M": "Q5_K", "Q6_K": "Q6_K",
    "IQ1_S": "IQ1_S", "IQ1_M": "IQ1_M", "IQ2_XXS": "IQ2_XXS", "IQ2_XS": "IQ2_XS",
    "IQ2_S": "IQ2_XS", "IQ2_M": "IQ2_S", "IQ3_XXS": "IQ3_XXS", "IQ3_XS": "IQ3_S",
    "IQ3_S": "IQ3_S", "IQ3_M": "IQ3_S", "IQ4_NL": "IQ4_NL", "IQ4_XS": "IQ4_XS",
    "TQ1_0": "TQ1_0", "TQ2_0": "TQ2_0", "MXFP4_MOE": "MXFP4",
}
_FLOAT_GGML = {"F32", "F16", "BF16"}


@dataclass(frozen=True)
class HFScheme:
    """How one Linear weight (out x in) is stored by compressed-tensors."""

    kind: str  # float | int | fp8 | mxfp4 | nvfp4
    bits: int
    strategy: str = "channel"  # channel | tensor | group
    group_size: int | None = None
    symmetric: bool = True
    #: bytes of one scale: 2 (the model's dtype, BF16/F16) as llm-compressor writes them
    scale_bytes: int = 2
    #: pack-quantized formats also store a 2 x int64 ``weight_shape`` per Linear
    shape_bytes: int = 0


HF_SCHEMES: dict[str, HFScheme] = {
    "F32": HFScheme("float", 32), "FP32": HFScheme("float", 32),
    "F16": HFScheme("float", 16), "FP16": HFScheme("float", 16),
    "BF16": HFScheme("float", 16),
    "FP8": HFScheme("fp8", 8, "channel"), "FP8_DYNAMIC": HFScheme("fp8", 8, "channel"),
    "FP8_CHANNEL": HFScheme("fp8", 8, "channel"),
    "FP8_TENSOR": HFScheme("fp8", 8, "tensor", scale_bytes=4),
    "W8A8": HFScheme("int", 8, "channel"), "W8A8_INT8": HFScheme("int", 8, "channel"),
    "INT8": HFScheme("int", 8, "channel"),
    "W8A16": HFScheme("int", 8, "channel", shape_bytes=16),
    "RTN_W8A16": HFScheme("int", 8, "channel", shape_bytes=16),
    "W4A16": HFScheme("int", 4, "group", 128, shape_bytes=16),
    "INT4": HFScheme("int", 4, "group", 128, shape_bytes=16),
    "RTN_W4A16": HFScheme("int", 4, "group", 128, shape_bytes=16),
    "GPTQ": HFScheme("int", 4, "group", 128, shape_bytes=16),
    "GPTQ_W4A16": HFScheme("int", 4, "group", 128, shape_bytes=16),
    # AutoAWQ: asymmetric, a 4-bit zero point per group; the project's llm-compressor
    # "awq-w4a16" scheme defaults to symmetric (its params' ``symmetric: true``)
    "AWQ": HFScheme("int", 4, "group", 128, symmetric=False, shape_bytes=16),
    "AWQ_W4A16": HFScheme("int", 4, "group", 128, shape_bytes=16),
    "MXFP4": HFScheme("mxfp4", 4, "group", 32, scale_bytes=1),
    "NVFP4": HFScheme("nvfp4", 4, "group", 16, scale_bytes=1),
}


def _norm_quant(quant: str) -> str:
    return re.sub(r"[\s\-.]+", "_", quant.strip()).upper()


def parse_quant(quant: str | None, *, gguf_source: bool = False) -> tuple[str, str]:
    """("gguf" | "hf", canonical name). ``gguf:`` / ``hf:`` prefixes force the format;
    otherwise llama.cpp file types are GGUF, F16/BF16/F32 follow the source."""
    if quant is None:
        return ("gguf" if gguf_source else "hf"), "AS_IS"
    fmt = None
    q = quant.strip()
    if ":" in q:
        fmt, q = (s.strip().lower() for s in q.split(":", 1))
        if fmt not in ("gguf", "hf"):
            raise ValueError(f"quant prefix {fmt!r}: use gguf: or hf:")
    name = _norm_quant(q)
    if fmt is None:
        if name in GGUF_FTYPES and name not in _FLOAT_GGML:
            fmt = "gguf"
        elif name in HF_SCHEMES and name not in ("F32", "F16", "BF16"):
            fmt = "hf"
        else:
            fmt = "gguf" if gguf_source else "hf"
    if name not in GGUF_FTYPES and name not in HF_SCHEMES:
        raise ValueError(f"unknown quant type {quant!r}; GGUF file types: {', '.join(GGUF_FTYPES)}; "
                         f"HF schemes: {', '.join(HF_SCHEMES)}")
    table = GGUF_FTYPES if fmt == "gguf" else HF_SCHEMES
    if name == "FP32" and fmt == "gguf":
        name = "F32"
    if name == "FP16" and fmt == "gguf":
        name = "F16"
    if name not in table:
        raise ValueError(f"unknown {fmt} quant type {quant!r}; allowed: {', '.join(table)}")
    return fmt, name


def ggml_type_size(type_name: str) -> tuple[int, int]:
    """(block size, bytes per block) of a ggml tensor type, from ``gguf.GGML_QUANT_SIZES``."""
    import gguf

    try:
        t = gguf.GGMLQuantizationType[type_name]
    except KeyError:
        raise ValueError(f"unknown ggml type {type_name!r}") from None
    return gguf.GGML_QUANT_SIZES[t]


def ggml_tensor_bytes(type_name: str, shape: tuple[int, ...]) -> int:
    block, size = ggml_type_size(type_name)
    if shape[0] % block:
        raise ValueError(f"row length {shape[0]} is not a multiple of {type_name}'s block {block}")
    return math.prod(shape) // block * size


def plain_weight_bytes(n_params: float, bits: float) -> float:
    """The storage-only formula: parameters x bits / 8 (no metadata, nothing kept wider)."""
    return n_params * bits / 8


def bits_per_weight(quant: str, *, group_size: int | None = None, symmetric: bool | None = None) -> float:
    """Nominal bits per quantized weight, metadata included (per group/block, not per channel).

    GGUF types: block bytes x 8 / block size (a file type: its default tensor type, so the
    nominal figure of a mix such as Q4_K_M is Q4_K's 4.5). HF int4: 4 + 16/g (+ 4/g asym)."""
    fmt, name = parse_quant(quant)
    if fmt == "gguf":
        block, size = ggml_type_size(GGUF_FTYPES[name])
        return size * 8 / block
    s = _scheme(name, group_size, symmetric)
    if s.kind == "float":
        return float(s.bits)
    if s.strategy == "group":
        extra = s.scale_bytes * 8 / s.group_size
        if not s.symmetric:
            extra += s.bits / s.group_size
        return s.bits + extra
    return float(s.bits)  # per-channel / per-tensor scales: negligible per weight


def weight_bytes_from_params(n_params: float, quant: str, **kw) -> float:
    """Hand-example estimate: every parameter at ``bits_per_weight(quant)``."""
    return n_params * bits_per_weight(quant, **kw) / 8


def _scheme(name: str, group_size: int | None, symmetric: bool | None) -> HFScheme:
    s = HF_SCHEMES[name]
    kw: dict[str, Any] = {}
    if group_size is not None and s.kind == "int" and s.strategy == "group":
        kw["group_size"] = int(group_size)
    if symmetric is not None and s.kind == "int":
        kw["symmetric"] = bool(symmetric)
    if kw:
        from dataclasses import replace

        s = replace(s, **kw)
    return s


def hf_linear_bytes(out_features: int, in_features: int, s: HFScheme) -> int:
    """Bytes of one Linear (out x in) under scheme ``s``, as compressed-tensors stores it."""
    n = out_features * in_features
    if s.kind == "float":
        return n * s.bits // 8
    if s.kind in ("fp8", "int") and s.bits == 8:
        scales = out_features if s.strategy == "channel" else 1
        return n + scales * s.scale_bytes + s.shape_bytes
    if s.kind == "int":  # packed into int32 along the input dimension
        per_word = 32 // s.bits
        packed = out_features * math.ceil(in_features / per_word) * 4
        groups = math.ceil(in_features / s.group_size)
        scales = out_features * groups * s.scale_bytes
        zeros = 0 if s.symmetric else math.ceil(out_features * s.bits / 32) * groups * 4
        return packed + scales + zeros + s.shape_bytes
    if s.kind == "mxfp4":
        return out_features * math.ceil(in_features / 2) + out_features * math.ceil(in_features / 32)
    if s.kind == "nvfp4":
        return (out_features * math.ceil(in_features / 2) + out_features * math.ceil(in_features / 16)
                + 4)  # one FP32 global scale per tensor
    raise ValueError(s)


# --------------------------------------------------------------------------------------
# llama.cpp's per-tensor type choice (llama-quant.cpp, llama-cpp-python 0.3.36)
# --------------------------------------------------------------------------------------

_IQ2_MIX = {"IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M"}


def _category(name: str) -> str:
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for key, cat in (("attn_qkv.weight", "attn_qkv"), ("attn_kv_b.weight", "attn_kv_b"),
                     ("attn_v.weight", "attn_v"), ("attn_k.weight", "attn_k"),
                     ("attn_q.weight", "attn_q"), ("attn_output.weight", "attn_output"),
                     ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"), ("ffn_down", "ffn_down")):
        if key in name:
            return cat
    return "other"


def _allows_quantization(t: TensorSpec, leave_output_tensor: bool) -> bool:
    if len(t.shape) < 2 or not t.name.endswith("weight"):
        return False
    if "_norm.weight" in t.name or "ffn_gate_inp.weight" in t.name:
        return False
    if leave_output_tensor and t.name == "output.weight":
        return False
    return not any(s in t.name for s in ("position_embd", "token_types", "ssm_conv1d", "attn_rel_b"))


def _block(type_name: str) -> int:
    return ggml_type_size(type_name)[0]


def _fallback(t: TensorSpec, new: str) -> tuple[str, bool]:
    ncols = t.shape[0]
    qk = _block(new)
    if ncols % qk == 0:
        return new, False
    if new in ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_XS"):
        ret = "IQ4_NL"
    elif new in ("Q2_K", "Q3_K", "TQ1_0", "TQ2_0"):
        ret = "Q4_0"
    elif new == "Q4_K":
        ret = "Q5_0"
    elif new == "Q5_K":
        ret = "Q5_1"
    elif new == "Q6_K":
        ret = "Q8_0"
    else:
        ret = new
    if ncols % _block(ret):
        ret = "F16"
    return ret, True


def gguf_tensor_types(tensors: list[TensorSpec], ftype: str, *, n_heads: int, n_kv_heads: int,
                      arch: str = "llama", has_imatrix: bool | None = None, pure: bool = False,
                      leave_output_tensor: bool = False, output_tensor_type: str | None = None,
                      token_embedding_type: str | None = None) -> list[tuple[TensorSpec, str, bool]]:
    """[(tensor, ggml type, fell back)] as ``llama-quantize`` would choose for ``ftype``.

    A port of ``llama_tensor_get_type`` for dense models (MoE rules, --tensor-type
    overrides and model-type checks other than Llama-2-70B's are not modelled). Counters
    (i_attention_wv, i_ffn_down ...) follow the list order, as llama.cpp follows the file's."""
    ftype = _norm_quant(ftype)
    default = GGUF_FTYPES[ftype]
    if has_imatrix is None:
        has_imatrix = ftype.startswith("IQ")
    n_layers = 1 + max((t.layer for t in tensors if t.layer is not None), default=-1)
    n_gqa = n_heads // max(n_kv_heads, 1)
    is_70b = arch == "llama" and n_layers == 80 and n_heads != n_kv_heads
    tied = not any(t.name == "output.weight" for t in tensors)
    n_attention_wv = sum(1 for t in tensors if _category(t.name) in ("attn_v", "attn_qkv", "attn_kv_b"))
    st = {"wv": 0, "down": 0, "gate": 0, "up": 0}
    n_ffn = n_layers

    def more_bits(i: int, n: int) -> bool:
        return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2

    def impl(t: TensorSpec, new: str, cat: str) -> str:
        if cat == "output" or (tied and cat == "token_embd"):
            if output_tensor_type:
                return output_tensor_type
            if ftype == "MXFP4_MOE" or arch == "falcon" or t.shape[0] % _block(new):
                return "Q8_0"
            if ftype in ("IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M"):
                return "Q5_K"
            return "Q6_K" if new != "Q8_0" else new
        if ftype == "MXFP4_MOE":
            return "MXFP4" if len(t.shape) > 2 else "Q8_0"
        if cat == "token_embd":
            if token_embedding_type:
                return token_embedding_type
            if ftype in ("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ1_M"):
                return "Q2_K"
            if ftype in ("IQ2_S", "IQ2_M", "IQ3_XXS"):
                return "IQ3_S"
            if ftype in ("TQ1_0", "TQ2_0"):
                return "Q4_K"
            return new
        attn_v_like = cat in ("attn_v", "attn_qkv", "attn_kv_b")
        if ftype in _IQ2_MIX:
            if attn_v_like:
                new = "Q4_K" if n_gqa >= 4 else ("IQ3_S" if ftype in ("IQ2_S", "IQ2_M") else "Q2_K")
                st["wv"] += 1
            elif cat == "ffn_down":
                if st["down"] < n_ffn // 8:
                    new = "IQ3_S" if ftype in ("IQ2_S", "IQ2_M") else "Q2_K"
                st["down"] += 1
            elif cat == "attn_output":
                if ftype in ("IQ1_S", "IQ1_M"):
                    new = "IQ2_XXS"
                elif ftype in ("IQ2_S", "IQ2_M"):
                    new = "IQ3_S"
            return new
        if attn_v_like:
            i = st["wv"]
            if ftype == "Q2_K":
                new = "Q4_K" if n_gqa >= 4 else "Q3_K"
            elif ftype == "Q2_K_S" and n_gqa >= 4:
                new = "Q4_K"
            elif ftype == "IQ3_XXS":
                new = "Q4_K" if n_gqa >= 4 else ("IQ3_S" if not has_imatrix else "IQ3_XXS")
            elif ftype in ("IQ3_XS", "IQ3_S") and n_gqa >= 4:
                new = "Q4_K"
            elif ftype == "IQ3_M":
                new = "Q4_K"
            elif ftype == "Q3_K_M":
                new = "Q5_K" if i < 2 else "Q4_K"
            elif ftype == "Q3_K_L":
                new = "Q5_K"
            elif ftype in ("IQ4_NL", "IQ4_XS") and n_gqa >= 4:
                new = "Q5_K"
            elif ftype in ("Q4_K_M", "Q5_K_M") and more_bits(i, n_attention_wv):
                new = "Q6_K"
            elif ftype == "Q4_K_S" and i < 4:
                new = "Q5_K"
            if is_70b and new in ("Q3_K", "Q4_K"):
                new = "Q5_K"
            st["wv"] += 1
            return new
        if cat in ("attn_k", "attn_q"):
            if ftype == "IQ3_XS":
                return "IQ3_XXS"
            if ftype == "IQ3_XXS":
                return "IQ2_S"
            return new
        if cat == "ffn_down":
            i, n = st["down"], n_ffn  # llama.cpp counts (it parses the name only for MoE)
            falcon = arch == "falcon"
            if ftype == "Q2_K":
                new = "Q3_K"
            elif ftype == "Q2_K_S":
                if i < n // 8:
                    new = "Q4_K"
            elif ftype == "IQ3_XXS" and not has_imatrix:
                new = "Q4_K" if i < n // 8 else "Q3_K"
            elif ftype == "Q3_K_M":
                new = ("Q5_K" if i < n // 16 else
                       "Q4_K" if (not falcon or more_bits(i, n)) else "Q3_K")
            elif ftype == "IQ3_M" and i < n // 8:
                new = "Q4_K"
            elif ftype == "Q3_K_L":
                new = "Q4_K" if falcon else "Q5_K"
            elif ftype == "Q4_K_M":
                if falcon:
                    new = "Q6_K" if i < n // 16 else ("Q5_K" if more_bits(i, n) else "Q4_K")
                elif more_bits(i, n):
                    new = "Q6_K"
            elif i < n // 8 and ftype in ("IQ4_NL", "IQ4_XS") and not has_imatrix:
                new = "Q5_K"
            elif ftype == "Q5_K_M" and more_bits(i, n):
                new = "Q6_K"
            elif ftype == "Q4_K_S" and not falcon and i < n // 8:
                new = "Q5_K"
            elif ftype in ("Q4_0", "Q5_0") and has_imatrix and i < n // 8:
                new = "Q4_1" if ftype == "Q4_0" else "Q5_1"
            st["down"] += 1
            return new
        if cat == "attn_output":
            if arch != "falcon":
                new = {"Q2_K": "Q3_K", "IQ3_XXS": "IQ3_S", "Q3_K_M": "Q4_K",
                       "Q3_K_L": "Q5_K", "IQ3_M": "Q4_K"}.get(ftype, new)
            elif ftype == "Q3_K_L":
                new = "Q4_K"
            return new
        if cat in ("ffn_gate", "ffn_up"):
            key = "gate" if cat == "ffn_gate" else "up"
            i = st[key]
            if ftype == "IQ3_XS" and n_ffn // 8 <= i < 7 * n_ffn // 8:
                new = "IQ3_XXS"
            st[key] += 1
            return new
        return new

    out = []
    for t in tensors:
        cat = _category(t.name)
        if not _allows_quantization(t, leave_output_tensor):
            out.append((t, t.src_type, False))
            continue
        if token_embedding_type and cat == "token_embd":
            out.append((t, token_embedding_type, False))
            continue
        if output_tensor_type and cat == "output":
            out.append((t, output_tensor_type, False))
            continue
        new = default
        fell = False
        if default not in _FLOAT_GGML:
            if not pure:
                new = impl(t, new, cat)
            new, fell = _fallback(t, new)
        out.append((t, new, fell))
    return out


# --------------------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------------------


@dataclass
class WeightPlan:
    """Bytes per tensor and where each one belongs (a layer, or input/output)."""

    fmt: str  # gguf | hf
    quant: str
    exact: bool  # read from the artifact itself
    tensors: list[dict[str, Any]] = field(default_factory=list)  # name, layer, type, bytes, params, role
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(t["bytes"] for t in self.tensors)

    @property
    def n_params(self) -> int:
        return sum(t["params"] for t in self.tensors)

    def by(self, key: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.tensors:
            out[t[key]] = out.get(t[key], 0) + t["bytes"]
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def per_layer(self, n_layers: int) -> list[int]:
        out = [0] * n_layers
        for t in self.tensors:
            if t["layer"] is not None and t["layer"] < n_layers:
                out[t["layer"]] += t["bytes"]
        return out

    def input_bytes(self) -> int:
        return sum(t["bytes"] for t in self.tensors if t["role"] == "embedding")

    def output_bytes(self) -> int:
        """What llama.cpp puts in the output layer: output norm + output (the tied embedding
        table again when there is no output.weight: llama.cpp loads a duplicate)."""
        own = sum(t["bytes"] for t in self.tensors if t["layer"] is None and t["role"] != "embedding")
        if self.fmt == "gguf" and not any(t["name"] == "output.weight" for t in self.tensors):
            own += self.input_bytes()
        return own


def _row(name: str, layer: int | None, type_: str, nbytes: int, params: int, role: str) -> dict[str, Any]:
    return {"name": name, "layer": layer, "type": type_, "bytes": int(nbytes), "params": int(params),
            "role": role}


def predict_gguf(tensors: list[TensorSpec], ftype: str, *, n_heads: int, n_kv_heads: int,
                 arch: str = "llama", **recipe) -> WeightPlan:
    chosen = gguf_tensor_types(tensors, ftype, n_heads=n_heads, n_kv_heads=n_kv_heads, arch=arch, **recipe)
    plan = WeightPlan("gguf", _norm_quant(ftype), exact=False)
    fell = 0
    for t, typ, fb in chosen:
        plan.tensors.append(_row(t.name, t.layer, typ, ggml_tensor_bytes(typ, t.shape), t.n_elements, t.role))
        fell += fb
    name = _norm_quant(ftype)
    if name not in GGUF_FTYPES or GGUF_FTYPES[name] in _FLOAT_GGML:
        plan.notes.append("GGUF float file: 2-D weights at the file type, 1-D tensors F32 (as llama.cpp's converter writes them)")
    elif not recipe.get("pure"):
        plan.notes.append(
            f"GGUF {name}: per-tensor types from a port of llama.cpp's llama_tensor_get_type "
            "(the llama.cpp vendored by llama-cpp-python 0.3.36); an approximation for other llama.cpp "
            "versions, MoE models, --tensor-type overrides, and for which layers get the bigger types "
            "when the file's tensor order is not layer order")
    if fell:
        plan.notes.append(f"{fell} tensors fell back to a 32-block type: their row length is not a "
                          "multiple of the 256-weight K-/I-quant block (llama.cpp's tensor_type_fallback)")
    return plan


def predict_hf(tensors: list[TensorSpec], scheme_name: str, *, group_size: int | None = None,
               symmetric: bool | None = None, keep_dtype_bytes: int = 2,
               quantize_lm_head: bool = False) -> WeightPlan:
    s = _scheme(scheme_name, group_size, symmetric)
    plan = WeightPlan("hf", scheme_name, exact=False)
    for t in tensors:
        role = t.role
        if role == "linear" or (role == "output" and quantize_lm_head):
            in_f, out_f = t.shape[0], t.rows
            if s.kind == "int" and s.strategy == "group" and in_f % s.group_size:
                plan.notes.append(f"{t.name}: {in_f} inputs is not a multiple of group size {s.group_size}; "
                                  "counted with a last partial group (llm-compressor may refuse it)")
            nbytes = hf_linear_bytes(out_f, in_f, s)
            typ = scheme_name
        else:  # embeddings, lm_head, norms, biases: kept in the model's dtype
            width = s.bits // 8 if s.kind == "float" else keep_dtype_bytes
            nbytes, typ = t.n_elements * width, "F32" if width == 4 else "BF16/F16"
        plan.tensors.append(_row(t.name, t.layer, typ, nbytes, t.n_elements, role))
    if s.kind != "float":
        extra = {"int": "int32-packed weights" if s.bits == 4 else "int8 weights",
                 "fp8": "FP8 weights", "mxfp4": "FP4 weights", "nvfp4": "FP4 weights"}[s.kind]
        meta = []
        if s.strategy == "group":
            meta.append(f"a {s.scale_bytes * 8}-bit scale per {s.group_size}")
            if not s.symmetric:
                meta.append(f"a {s.bits}-bit zero point per {s.group_size}")
        elif s.strategy == "channel":
            meta.append("a 16-bit scale per output channel")
        else:
            meta.append("one scale per tensor")
        if s.kind == "nvfp4":
            meta.append("an FP32 global scale per tensor")
        if s.shape_bytes:
            meta.append("a 16-byte weight_shape per Linear")
        plan.notes.append(
            f"{scheme_name}: Linear layers as {extra} + {', '.join(meta)} (compressed-tensors layout); "
            f"embeddings{'' if quantize_lm_head else ', lm_head'}, norms and biases kept at 16 bit; "
            "a tied lm_head is stored once")
    return plan


def actual_gguf(path: str | Path) -> tuple[dict[str, Any], WeightPlan]:
    config, tensors = read_gguf(path)
    plan = WeightPlan("gguf", "AS_IS", exact=True)
    for t, typ, nbytes in tensors:
        plan.tensors.append(_row(t.name, t.layer, typ, nbytes, t.n_elements, t.role))
    kinds = {t["type"] for t in plan.tensors if t["role"] == "linear"}
    plan.quant = "/".join(sorted(kinds))
    return config, plan


def _hf_role(name: str) -> str:
    if "embed_tokens" in name or name.endswith("wte.weight"):
        return "embedding"
    if name.startswith("lm_head"):
        return "output"
    if "norm" in name:
        return "norm"
    if name.endswith(".bias"):
        return "bias"
    return "linear"


def actual_hf(folder: str | Path) -> WeightPlan:
    plan = WeightPlan("hf", "AS_IS", exact=True)
    for name, dtype, nbytes in read_safetensors(folder):
        plan.tensors.append(_row(name, _layer_of(name), dtype, nbytes, 0, _hf_role(name)))
    return plan


# --------------------------------------------------------------------------------------
# KV cache and runtime reserve
# --------------------------------------------------------------------------------------

_KV_BYTES = {"F32": 4.0, "FP32": 4.0, "F16": 2.0, "FP16": 2.0, "BF16": 2.0, "FP8": 1.0,
             "FP8_E4M3": 1.0, "FP8_E5M2": 1.0, "INT8": 1.0,
             # llama.cpp's quantized cache types (--cache-type-k/-v): bytes per block of 32 values
             # (ggml's block_q8_0 = 32 int8 + an f16 scale ...), without the gguf package
             "Q8_0": 34 / 32, "Q4_0": 18 / 32, "Q4_1": 20 / 32, "Q5_0": 22 / 32, "Q5_1": 24 / 32,
             "IQ4_NL": 18 / 32}


def kv_dtype_bytes(kv_dtype: str) -> float:
    """Bytes per cached element: 2 for f16/bf16, 1 for fp8/int8, llama.cpp block types
    (q8_0 = 34/32, q4_0 = 18/32 ...) from their block sizes. "K/V" (e.g. "q8_0/f16": K and V
    caches of different types, as llama.cpp's type_k and type_v allow) gives their mean."""
    if "/" in kv_dtype:
        k, v = kv_dtype.split("/", 1)
        return (kv_dtype_bytes(k) + kv_dtype_bytes(v)) / 2
    name = _norm_quant(kv_dtype)
    if name in _KV_BYTES:
        return _KV_BYTES[name]
    try:
        block, size = ggml_type_size(name)
    except ValueError:
        raise ValueError(f"unknown KV dtype {kv_dtype!r}: use f16, bf16, f32, fp8, int8 or a "
                         "llama.cpp cache type (q8_0, q4_0, ...)") from None
    return size / block


def kv_cache_bytes(n_layers: int, n_kv_heads: int, head_dim: int, context: int, batch: int = 1,
                   kv_dtype: str = "f16") -> float:
    """2 (K and V) x layers x kv_heads x head_dim x context x batch x bytes(kv dtype)."""
    return 2 * n_layers * n_kv_heads * head_dim * context * batch * kv_dtype_bytes(kv_dtype)


def shape_kv_bytes(shape: ModelShape, context: int, batch: int = 1, kv_dtype: str = "f16") -> float:
    return kv_cache_bytes(shape.n_layers, shape.n_kv_heads, shape.hd, context, batch, kv_dtype)


RUNTIMES = ("llama-cpp", "vllm", "transformers")
#: fixed part of each runtime's reserve: CUDA context, cuBLAS workspace, allocator slack;
#: vLLM adds CUDA graphs and its profiled activation peak.
#: transformers: NVML's peak less torch.cuda.max_memory_reserved was 0.69 GiB (H200, 8B shape)
#: and 0.74 GiB (H100, 135M): CUDA context and libraries outside PyTorch's allocator.
CONTEXT_RESERVE_GIB = {"llama-cpp": 0.25, "vllm": 1.0, "transformers": 0.75}


def transformers_activation_bytes(shape: ModelShape, tokens: int, batch: int = 1, dtype_bytes: int = 2) -> int:
    """The activation peak of one transformers prefill of ``batch`` x ``tokens`` (one forward pass,
    no chunking): the MLP holds act(gate), up and their product (3 x intermediate per token)
    beside the residual stream, its norm and an attention projection (~4 x hidden), plus the
    last position's float32 logits (``logits_to_keep=1``, as ``generate()``). On the 8B shape at
    32 x 512 tokens: 1.81 GiB; torch's allocated peak less weights and KV cache was 1.84 GiB."""
    per_token = 3 * shape.intermediate + 4 * shape.hidden
    return int(batch * tokens * per_token * dtype_bytes + batch * shape.vocab * 4)


def _runtime(name: str | None, fmt: str) -> str:
    if name is None:
        return "llama-cpp" if fmt == "gguf" else "transformers"
    n = name.lower().replace("_", "-").replace(".", "-")
    n = {"llamacpp": "llama-cpp", "llama-cpp-python": "llama-cpp", "hf": "transformers"}.get(n, n)
    if n not in RUNTIMES:
        raise ValueError(f"unknown runtime {name!r}; allowed: {', '.join(RUNTIMES)}")
    return n


def llamacpp_compute_buffer_bytes(shape: ModelShape, context: int, n_ubatch: int = 512,
                                  flash_attn: bool = False) -> int:
    """llama.cpp's compute buffer for one ubatch: the largest of the logits
    (n_ubatch x vocab x F32) and, without flash attention, the attention scores and mask
    (n_ctx x n_ubatch x (heads + 1) x F32), plus two hidden-state buffers.

    Checked on this machine against llama.cpp's own report for SmolLM2-135M (CPU,
    n_ubatch 512): 98.25 MiB at n_ctx 512 (estimate 98.25), 99.38 at 4096 (98.25),
    326.38 at 16384 without flash attention (322.25)."""
    ub = min(n_ubatch, context)
    logits = ub * shape.vocab * 4
    attn = 0 if flash_attn else context * ub * (shape.n_heads + 1) * 4
    ffn = ub * shape.intermediate * 4 * 2
    return max(logits, attn, ffn) + 2 * ub * shape.hidden * 4


def runtime_reserve(runtime: str, shape: ModelShape | None, context: int,
                    reserve_gib: float | None = None, flash_attn: bool = False,
                    device: str = "cuda", batch: int = 1, prefill_tokens: int | None = None,
                    dtype_bytes: int = 2) -> dict[str, Any]:
    """Memory beside weights and KV cache. ``device`` "cpu": host memory of a CPU run, where
    no CUDA context exists: llama.cpp's compute buffer or transformers' prefill activations
    only. transformers prefills ``batch`` x ``prefill_tokens`` (default: the whole context) in
    one pass; llama.cpp's compute buffer is per ubatch of 512 whatever the batch."""
    if reserve_gib is not None:
        return {"bytes": int(reserve_gib * GIB), "runtime": runtime, "source": "declared",
                "detail": f"{reserve_gib:g} GiB declared"}
    act = transformers_activation_bytes(shape, prefill_tokens or context, batch, dtype_bytes) \
        if runtime == "transformers" and shape is not None else 0
    act_detail = f"prefill activations ~{act / MIB:.0f} MiB ({batch} x {prefill_tokens or context} tokens)"
    if device == "cpu":
        if act:
            return {"bytes": act, "runtime": runtime, "source": "default", "detail": f"CPU: {act_detail}"}
        buf = llamacpp_compute_buffer_bytes(shape, context, flash_attn=flash_attn) \
            if runtime == "llama-cpp" and shape is not None else 0
        return {"bytes": int(buf), "runtime": runtime, "source": "default",
                "detail": f"CPU: compute buffer ~{buf / MIB:.0f} MiB" if buf else "CPU: none modelled"}
    ctx_gib = CONTEXT_RESERVE_GIB[runtime]
    if act:
        return {"bytes": int(act + ctx_gib * GIB), "runtime": runtime, "source": "default",
                "detail": f"{act_detail} + {ctx_gib:g} GiB CUDA context"}
    if runtime == "llama-cpp" and shape is not None:
        buf = llamacpp_compute_buffer_bytes(shape, context, flash_attn=flash_attn)
        return {"bytes": int(buf + ctx_gib * GIB), "runtime": runtime, "source": "default",
                "detail": f"compute buffer ~{buf / MIB:.0f} MiB (n_ubatch 512, flash_attn "
                          f"{'on' if flash_attn else 'off'}) + {ctx_gib:g} GiB CUDA context"}
    return {"bytes": int(ctx_gib * GIB), "runtime": runtime, "source": "default",
            "detail": f"{ctx_gib:g} GiB CUDA context/workspace (estimate; declare --reserve-gib to override)"}


# --------------------------------------------------------------------------------------
# offload
# --------------------------------------------------------------------------------------


def layers_that_fit(layer_bytes: list[int] | list[float], budget_bytes: float, reserve_bytes: float = 0,
                    *, output_bytes: float = 0, kv_per_layer_bytes: float = 0) -> int:
    """How many repeating layers fit on the GPU. llama.cpp offloads from the last layer
    backwards, the output layer first; each offloaded layer takes its KV with it."""
    avail = budget_bytes - reserve_bytes - output_bytes
    used, n = 0.0, 0
    if avail < 0:
        return 0
    for b in reversed(list(layer_bytes)):
        if used + b + kv_per_layer_bytes > avail:
            break
        used += b + kv_per_layer_bytes
        n += 1
    return n


def offload_plan(weights: WeightPlan, n_layers: int, budget_bytes: float, reserve_bytes: float,
                 kv_per_layer_bytes: float) -> dict[str, Any]:
    per_layer = weights.per_layer(n_layers)
    out_b, in_b = weights.output_bytes(), weights.input_bytes()
    output_fits = budget_bytes - reserve_bytes - out_b >= 0
    k = layers_that_fit(per_layer, budget_bytes, reserve_bytes, output_bytes=out_b,
                        kv_per_layer_bytes=kv_per_layer_bytes) if output_fits else 0
    if output_fits:
        gpu_w = out_b + sum(per_layer[n_layers - k:])
        cpu_w = in_b + sum(per_layer[: n_layers - k])
    else:  # nothing offloaded: every tensor once, in host memory
        gpu_w, cpu_w = 0, weights.total
    return {
        "n_layers": n_layers,
        "gpu_layers": k,
        "cpu_layers": n_layers - k,
        "output_on_gpu": output_fits,
        "n_gpu_layers": (k + 1) if output_fits else 0,  # llama.cpp's -ngl counts the output layer
        "gpu_bytes": int(gpu_w + k * kv_per_layer_bytes + (reserve_bytes if output_fits else 0)),
        "host_bytes": int(cpu_w + (n_layers - k) * kv_per_layer_bytes),
        "layer_bytes": per_layer,
        "input_bytes_on_cpu": in_b,
        "output_layer_bytes": out_b,
        "all_layers_on_gpu": k == n_layers and output_fits,
    }


# --------------------------------------------------------------------------------------
# the plan
# --------------------------------------------------------------------------------------


def _gib(b: float) -> float:
    return round(b / GIB, 4)


def resolve_source(source: str | Path | dict[str, Any] | ModelShape) -> dict[str, Any]:
    """{"shape", "tensors", "gguf_file", "hf_folder", "label"} for any accepted input."""
    if isinstance(source, ModelShape):
        return {"shape": source, "tensors": model_tensors(source), "gguf_file": None,
                "hf_folder": None, "label": source.name or "config"}
    if isinstance(source, dict):
        shape = ModelShape.from_config(source)
        return {"shape": shape, "tensors": model_tensors(shape), "gguf_file": None,
                "hf_folder": None, "label": shape.name or "config"}
    text = str(source)
    if text.lower() in PRESETS:
        shape = preset(text)
        return {"shape": shape, "tensors": model_tensors(shape), "gguf_file": None,
                "hf_folder": None, "label": shape.name}
    if text.startswith("embedded:"):
        from harness.baseline import source_file

        source = source_file(text)
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        config, tensors = read_gguf(path)
        shape = ModelShape.from_config(config)
        return {"shape": shape, "tensors": [t for t, _, _ in tensors], "gguf_file": path,
                "hf_folder": None, "label": path.name}
    if path.is_file() and path.name.endswith(".json"):
        shape = ModelShape.from_config(json.loads(path.read_text()))
        folder = path.parent if any(path.parent.glob("*.safetensors")) else None
        return {"shape": shape, "tensors": model_tensors(shape), "gguf_file": None,
                "hf_folder": folder, "label": str(path)}
    if path.is_dir():
        cfg = path / "config.json"
        if not cfg.is_file():
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) == 1:
                return resolve_source(ggufs[0])
            raise ValueError(f"{path}: no config.json (and not exactly one .gguf)")
        shape = ModelShape.from_config(json.loads(cfg.read_text()), name=path.name)
        folder = path if any(path.glob("*.safetensors")) else None
        return {"shape": shape, "tensors": model_tensors(shape), "gguf_file": None,
                "hf_folder": folder, "label": path.name}
    raise ValueError(f"{source!r} is neither a preset ({', '.join(PRESETS)}), a config.json, "
                     "a checkpoint folder nor a .gguf file")


def plan_memory(source: str | Path | dict[str, Any] | ModelShape, quant: str | None = None, *,
                budget_gib: float | None = None, context: int = 4096, batch: int = 1,
                kv_dtype: str = "f16", runtime: str | None = None, reserve_gib: float | None = None,
                group_size: int | None = None, symmetric: bool | None = None,
                flash_attn: bool = False, quantize_lm_head: bool = False,
                gguf_options: dict[str, Any] | None = None, device: str = "cuda") -> dict[str, Any]:
    """Weights + KV cache + runtime reserve for one candidate, and whether it fits.

    ``quant`` None: the artifact as it is (a GGUF file's real tensor types, a folder's real
    safetensors bytes). ``quantize_lm_head``: an HF scheme quantizes an untied lm_head too
    (llm-compressor's default ``ignore: [lm_head]`` keeps it at 16 bit). ``gguf_options``: has_imatrix, pure, leave_output_tensor,
    output_tensor_type, token_embedding_type (as the gguf quantizer's params). ``device``: "cuda"
    (GPU memory, the default) or "cpu" (host memory of a CPU run: no CUDA context reserve)."""
    src = resolve_source(source)
    shape: ModelShape = src["shape"]
    fmt, qname = parse_quant(quant, gguf_source=src["gguf_file"] is not None)
    if qname == "AS_IS":
        if src["gguf_file"] is not None:
            _, weights = actual_gguf(src["gguf_file"])
        elif src["hf_folder"] is not None:
            weights = actual_hf(src["hf_folder"])
        else:
            raise ValueError("no quant type given and no artifact to read: name a quant type")
    elif fmt == "gguf":
        weights = predict_gguf(src["tensors"], qname, n_heads=shape.n_heads, n_kv_heads=shape.n_kv_heads,
                               arch=shape.arch, **(gguf_options or {}))
    else:
        tensors = src["tensors"]
        weights = predict_hf(tensors, qname, group_size=group_size, symmetric=symmetric,
                             quantize_lm_head=quantize_lm_head)
    rt = _runtime(runtime, weights.fmt)
    kv = shape_kv_bytes(shape, context, batch, kv_dtype)
    reserve = runtime_reserve(rt, shape, context, reserve_gib, flash_attn, device, batch=batch)
    w = weights.total
    total = w + kv + reserve["bytes"]
    n_params = weights.n_params or shape.n_params
    notes = list(dict.fromkeys(weights.notes))
    notes.append("KV cache: 2 x layers x kv_heads x head_dim x context x batch x bytes (GQA-aware; "
                 "no sliding window, no paging granularity, llama.cpp pads n_ctx to 256)")
    if reserve["source"] == "default":
        notes.append(f"runtime reserve is an estimate for {rt}: {reserve['detail']}")
    result: dict[str, Any] = {
        "source": src["label"],
        "model": {"name": shape.name, "arch": shape.arch, "n_layers": shape.n_layers,
                  "hidden": shape.hidden, "intermediate": shape.intermediate, "n_heads": shape.n_heads,
                  "n_kv_heads": shape.n_kv_heads, "head_dim": shape.hd, "vocab": shape.vocab,
                  "tied": shape.tied, "n_params": shape.n_params},
        "quant": quant if quant is not None else f"as-is ({weights.quant})",
        "format": weights.fmt,
        "exact": weights.exact,
        "weights": {"bytes": w, "gib": _gib(w),
                    "bits_per_weight": round(w * 8 / n_params, 3) if n_params else None,
                    "by_type": weights.by("type"), "by_role": weights.by("role"),
                    "per_layer_bytes": weights.per_layer(shape.n_layers),
                    "input_bytes": weights.input_bytes(), "output_layer_bytes": weights.output_bytes()},
        "kv_cache": {"bytes": int(kv), "gib": _gib(kv), "dtype": kv_dtype, "context": context,
                     "batch": batch, "per_token_bytes": kv / (context * batch) if context * batch else 0,
                     "per_layer_bytes": kv / shape.n_layers},
        "reserve": {**reserve, "gib": _gib(reserve["bytes"])},
        "runtime": rt,
        "total": {"bytes": int(total), "gib": _gib(total)},
        "budget": None,
        "offload": None,
        "notes": notes,
    }
    if budget_gib is not None:
        budget = budget_gib * GIB
        result["budget"] = {"gib": budget_gib, "bytes": int(budget), "fits": total <= budget,
                            "headroom_gib": _gib(budget - total)}
        if weights.fmt == "gguf" and rt == "llama-cpp":
            result["offload"] = offload_plan(weights, shape.n_layers, budget, reserve["bytes"],
                                             kv / shape.n_layers)
    return result


# --------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------


def format_table(plans: list[dict[str, Any]]) -> str:
    """A Markdown table, one row per plan_memory() result."""
    head = ["candidate", "format", "runtime", "weights GiB", "bits/w", "KV GiB", "reserve GiB",
            "total GiB", "budget GiB", "fits", "GPU layers"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in plans:
        b, o = p.get("budget"), p.get("offload")
        fits = "—" if not b else ("yes" if b["fits"] else "no")
        layers = "—"
        if o:
            layers = f"{o['gpu_layers']}/{o['n_layers']}" + ("" if o["output_on_gpu"] else " (output on CPU)")
        bpw = p["weights"]["bits_per_weight"]
        lines.append("| " + " | ".join([
            str(p["quant"]) + ("" if not p["exact"] else " (read)"), p["format"], p["runtime"],
            f"{p['weights']['gib']:.3f}", f"{bpw:.2f}" if bpw else "—", f"{p['kv_cache']['gib']:.3f}",
            f"{p['reserve']['gib']:.3f}", f"{p['total']['gib']:.3f}",
            f"{b['gib']:g}" if b else "—", fits, layers]) + " |")
    return "\n".join(lines)


def build_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = p or argparse.ArgumentParser(prog="quantgate plan-memory",
                                     description="predict weights + KV cache + runtime reserve, and fit")
    p.add_argument("source", help="config.json, checkpoint folder, .gguf file, preset "
                                  f"({', '.join(PRESETS)}) or embedded:smollm2-135m")
    p.add_argument("--quant", "-q", action="append",
                   help="quant type, repeatable (Q4_K_M, Q8_0, W4A16, AWQ, FP8, NVFP4, hf:BF16, gguf:F16 ...); "
                        "none: the artifact as it is")
    p.add_argument("--budget-gib", type=float, help="GPU memory budget in GiB")
    p.add_argument("--context", type=int, default=4096)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--kv-dtype", default="f16")
    p.add_argument("--runtime", help=f"{', '.join(RUNTIMES)} (default: llama-cpp for GGUF, else transformers)")
    p.add_argument("--reserve-gib", type=float, help="declared runtime overhead (replaces the default estimate)")
    p.add_argument("--group-size", type=int, help="int4 group size (default 128)")
    sym = p.add_mutually_exclusive_group()
    sym.add_argument("--symmetric", dest="symmetric", action="store_true", default=None)
    sym.add_argument("--asymmetric", dest="symmetric", action="store_false")
    p.add_argument("--flash-attn", action="store_true", help="llama.cpp compute buffer with flash attention")
    p.add_argument("--json", action="store_true", help="print the plans as JSON")
    return p


def run_cli(args: list[str] | argparse.Namespace | None = None) -> int:
    """``quantgate plan-memory``. Exit 0: every plan fits (or no budget given); 1: a plan
    does not fit the budget whole (see its GPU layers for a partial offload); 2: bad input."""
    ns = args if isinstance(args, argparse.Namespace) else build_parser().parse_args(args)
    try:
        plans = [plan_memory(ns.source, q, budget_gib=ns.budget_gib, context=ns.context, batch=ns.batch,
                             kv_dtype=ns.kv_dtype, runtime=ns.runtime, reserve_gib=ns.reserve_gib,
                             group_size=ns.group_size, symmetric=ns.symmetric, flash_attn=ns.flash_attn)
                 for q in (ns.quant or [None])]
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if ns.json:
        print(json.dumps(plans, indent=1, default=str))
    else:
        m = plans[0]["model"]
        print(f"{plans[0]['source']}: {m['n_layers']} layers, hidden {m['hidden']}, {m['n_heads']} heads "
              f"({m['n_kv_heads']} KV), vocab {m['vocab']}, {m['n_params'] / 1e9:.3f} B params; "
              f"context {ns.context} x batch {ns.batch}, KV {ns.kv_dtype}")
        print(format_table(plans))
        for note in dict.fromkeys(n for p in plans for n in p["notes"]):
            print(f"- {note}")
    return 0 if all(p["budget"] is None or p["budget"]["fits"] for p in plans) else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_cli())


# --------------------------------------------------------------------------------------
# the probe process's own workload
# --------------------------------------------------------------------------------------


def predict_probe_peak(source: str | Path, runtime: str, *, n_ctx: int, shapes: list[list[int]] | None = None,
                       device: str = "cpu", session_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """The model memory a probe process should peak at: weights + KV cache + runtime buffers
    for the session it loaded (``n_ctx``, batch 1) and the largest batch workload the
    throughput probe ran (``shapes``: [tokens per sequence, batch]).

    llama.cpp keeps the session's context and a second context for batch decoding (its own KV
    cache, ``n_ctx`` per sequence padded to 256, and compute buffer) alive together: they add.
    transformers grows and frees a dynamic cache per call: the largest of them counts; when the
    session decompressed the weights to dense tensors (``session_info``: weights "dense", the
    compute dtype), they take n_params x that dtype's bytes whatever the file's bit width, and
    the KV cache is in that dtype too. Other runtimes: the session's context only."""
    rt = _runtime(runtime, "gguf" if str(source).endswith(".gguf") else "hf")
    info = session_info or {}
    dense = {"float32": 4, "bfloat16": 2, "float16": 2}.get(str(info.get("dtype")))
    kv_dtype = "f32" if dense == 4 else "f16"
    if rt != "transformers" or "dense" not in str(info.get("weights", "")):
        dense = None
    if rt != "transformers":
        kv_dtype = "f16"
    # a quantized KV cache, as the session recorded it (llama.cpp type_k/type_v, vLLM's dtype)
    cache = info.get("kv_cache") or {}
    if rt == "llama-cpp" and cache.get("type_k"):
        k, v = cache["type_k"], cache.get("type_v") or "f16"
        kv_dtype = k if k == v else f"{k}/{v}"
    elif rt == "vllm" and str(cache.get("dtype", "")).startswith("fp8"):
        kv_dtype = "fp8"
    main = plan_memory(source, None, context=n_ctx, batch=1, runtime=rt, device=device, kv_dtype=kv_dtype)
    # [tokens per sequence, batch(, prompt tokens)]: notes before the prompt was recorded have two
    workloads = [(s[0], s[1], s[2] if len(s) > 2 else s[0]) for s in (shapes or [])]
    batched = [w for w in workloads if w[1] > 1]
    kv, reserve, how = main["kv_cache"]["bytes"], main["reserve"]["bytes"], "session context"
    if batched and rt == "llama-cpp":
        t, b, _ = max(batched, key=lambda s: -(-s[0] // 256) * 256 * s[1])
        per_seq = -(-t // 256) * 256
        extra = plan_memory(source, None, context=per_seq, batch=b, runtime=rt, device=device, kv_dtype=kv_dtype)
        kv += extra["kv_cache"]["bytes"]
        reserve += extra["reserve"]["bytes"]
        how = f"session context + batch context ({b} x {per_seq} tokens)"
    elif rt == "transformers" and main["reserve"]["source"] == "default":
        # a dynamic cache grows and is freed per call: the workload with the largest KV cache
        # (full length) plus prefill activations (prompt) sets the peak
        shape = resolve_source(source)["shape"]

        def need(t: int, b: int, prompt: int) -> tuple[float, dict]:
            r = runtime_reserve(rt, shape, t, device=device, batch=b, prefill_tokens=prompt,
                                dtype_bytes=dense or 2)
            return shape_kv_bytes(shape, t, b, kv_dtype) + r["bytes"], r

        (t, b, prompt), (_, r) = max(((w, need(*w)) for w in [(n_ctx, 1, n_ctx), *batched]),
                                     key=lambda x: x[1][0])
        kv, reserve = shape_kv_bytes(shape, t, b, kv_dtype), r["bytes"]
        if b > 1:
            how = f"dynamic cache at batch {b} x {t} tokens, prefill {b} x {prompt}"
    w = stored = main["weights"]["bytes"]
    weights_as = f"{main['quant']} as stored"
    total = w + kv + reserve
    if dense:
        w = main["model"]["n_params"] * dense
        weights_as = f"dense {info.get('dtype')} (decompressed at load): n_params x {dense} bytes"
        total = w + kv + reserve
        if stored != w and stored + w > total:
            # from_pretrained holds the checkpoint's tensors and their converted copies at once
            total, how = stored + w, "load: the stored tensors and their dense copies at once"
    return {"device": device, "runtime": rt, "n_ctx": n_ctx, "workload": how, "weights_as": weights_as,
            "kv_dtype": kv_dtype, "weights_gib": _gib(w), "kv_cache_gib": _gib(kv), "reserve_gib": _gib(reserve),
            "total_gib": _gib(total), "exact_weights": main["exact"] and not dense}
