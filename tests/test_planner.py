"""The memory-fit planner against hand-computed cases and against real artifacts.

Hand cases: the seeds' own numbers (70B at 16/8/4/3 bits, a 7B's INT4 weights and KV cache,
22/32 layers on partial offload, GQA). Real cases: the embedded SmolLM2-135M's F16 GGUF
baseline and its Q8_0 / Q4_K_M / Q2_K quantizations, found in the store or, when only the
baseline is there, made with llama.cpp into a temporary folder; and tiny synthetic GGUFs
(hidden 256: no K-quant fallback) quantized by llama.cpp to check the type mixes tensor by
tensor.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from harness import planner as P

GIB = 2**30
SMOLLM2_CONFIG = {  # SmolLM2-135M's config.json fields (HuggingFaceTB/SmolLM2-135M)
    "num_hidden_layers": 30, "hidden_size": 576, "intermediate_size": 1536,
    "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
    "tie_word_embeddings": True, "model_type": "llama",
}
LLAMA2_7B = {  # Llama-2-7B's config.json fields
    "num_hidden_layers": 32, "hidden_size": 4096, "intermediate_size": 11008,
    "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000,
    "tie_word_embeddings": False,
}
needs_llama_cpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                     reason="needs llama-cpp-python (pip install 'quantgate[llamacpp]')")


# ----------------------------------------------------------------------------- seeds' hand cases


@pytest.mark.parametrize("bits,gb", [(16, 140), (8, 70), (4, 35), (3, 26.25)])
def test_70b_plain_bits_times_params(bits, gb):
    # storage only: 70e9 params x bits / 8, no metadata, nothing kept wider
    assert P.plain_weight_bytes(70e9, bits) == pytest.approx(gb * 1e9)


def test_group_metadata_adds_bits_per_weight():
    # int4 g128: a 16-bit scale per 128 weights = 16/128 = 0.125 bit/weight more
    assert P.bits_per_weight("W4A16", group_size=128) == 4 + 16 / 128 == 4.125
    assert P.weight_bytes_from_params(70e9, "W4A16", group_size=128) == pytest.approx(70e9 * 4.125 / 8)
    extra = P.weight_bytes_from_params(70e9, "W4A16", group_size=128) - P.plain_weight_bytes(70e9, 4)
    assert extra == pytest.approx(70e9 * 0.125 / 8) == pytest.approx(1.09375e9)  # +1.09 GB on 35 GB
    # asymmetric (AutoAWQ): + a 4-bit zero point per group: 4/128 = 0.03125 more
    assert P.bits_per_weight("AWQ", group_size=128) == 4 + 16 / 128 + 4 / 128
    # g64 doubles the scale overhead; GGUF blocks carry their own: Q4_K 144 B / 256 w, Q8_0 34 B / 32 w
    assert P.bits_per_weight("W4A16", group_size=64) == 4.25
    assert P.bits_per_weight("Q4_K_M") == 144 * 8 / 256 == 4.5
    assert P.bits_per_weight("Q8_0") == 34 * 8 / 32 == 8.5


def test_7b_int4_weights_about_3_3_gib():
    shape = P.ModelShape.from_config(LLAMA2_7B)
    assert shape.n_params == 6_738_415_616  # Llama-2-7B's published parameter count
    # the seed's figure: 7e9 params x 4 bits / 8 = 3.5e9 bytes = 3.26 GiB ~ 3.3 GiB
    plain = P.plain_weight_bytes(7e9, 4)
    assert plain == 3.5e9 and round(plain / GIB, 1) == 3.3
    # the full accounting (llm-compressor W4A16 g128): int4 Linear weights + a 16-bit scale per
    # 128 inputs + a 16-byte weight_shape per Linear; embeddings, lm_head, norms at 16 bit
    linear_params = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)
    scales = 32 * 2 * (4 * 4096 * (4096 // 128) + 2 * 11008 * (4096 // 128) + 4096 * (11008 // 128))
    shapes = 32 * 7 * 16
    embed_and_head = 2 * 32000 * 4096 * 2
    norms = (2 * 32 + 1) * 4096 * 2
    by_hand = linear_params // 2 + scales + shapes + embed_and_head + norms
    assert by_hand == 3_864_014_336  # 3.60 GiB: the 16-bit embedding + lm_head alone are 0.49 GiB
    plan = P.plan_memory(LLAMA2_7B, "W4A16", group_size=128, context=8192)
    assert plan["weights"]["bytes"] == by_hand


def test_7b_fp16_kv_cache_batch_32_at_8k():
    # 2 (K, V) x 32 layers x 4096 (32 KV heads x 128) x 8192 tokens x 32 sequences x 2 bytes
    kv = P.kv_cache_bytes(n_layers=32, n_kv_heads=32, head_dim=128, context=8192, batch=32, kv_dtype="f16")
    assert kv == 2 * 32 * 4096 * 8192 * 32 * 2 == 2**37  # = 128 GiB, not 32 GiB
    # 32 GiB is that product at batch 8 (or batch 32 at 2k context): 0.5 MiB per token
    assert P.kv_cache_bytes(32, 32, 128, 8192, 8, "f16") == 32 * GIB
    assert P.kv_cache_bytes(32, 32, 128, 2048, 32, "f16") == 32 * GIB
    plan = P.plan_memory(LLAMA2_7B, "W4A16", context=8192, batch=32)
    assert plan["kv_cache"]["bytes"] == 128 * GIB
    assert plan["kv_cache"]["per_token_bytes"] == 2 * 32 * 4096 * 2 == 512 * 1024


def test_partial_offload_22_of_32_layers():
    # a 5 GiB artifact of 32 equal layers in a 4 GiB budget with 0.5 GiB reserve:
    # (4 - 0.5) / (5 / 32) = 22.4 -> 22 layers on the GPU
    layers = [5 * GIB / 32] * 32
    assert P.layers_that_fit(layers, 4 * GIB, 0.5 * GIB) == 22
    # the KV of an offloaded layer goes with it: 1/32 GiB of KV per layer -> 3.5 / (6/32) = 18.7
    assert P.layers_that_fit(layers, 4 * GIB, 0.5 * GIB, kv_per_layer_bytes=GIB / 32) == 18
    # the output layer is offloaded first (llama.cpp): 0.25 GiB of it -> 3.25 / (5/32) = 20.8
    assert P.layers_that_fit(layers, 4 * GIB, 0.5 * GIB, output_bytes=GIB / 4) == 20
    # the same through offload_plan on a weight plan of 32 equal layers
    weights = P.WeightPlan("gguf", "synthetic", exact=False, tensors=[
        {"name": f"blk.{i}.w", "layer": i, "type": "Q4_K", "bytes": 5 * GIB // 32, "params": 0,
         "role": "linear"} for i in range(32)] + [
        {"name": "output.weight", "layer": None, "type": "Q6_K", "bytes": 0, "params": 0, "role": "output"}])
    off = P.offload_plan(weights, 32, 4 * GIB, 0.5 * GIB, kv_per_layer_bytes=0)
    assert (off["gpu_layers"], off["cpu_layers"], off["n_gpu_layers"]) == (22, 10, 23)
    assert off["gpu_bytes"] == 22 * (5 * GIB // 32) + GIB // 2


def test_gqa_shrinks_kv_proportionally():
    mha = P.plan_memory({**LLAMA2_7B, "num_key_value_heads": 32}, "Q4_K_M", context=4096)
    gqa = P.plan_memory({**LLAMA2_7B, "num_key_value_heads": 8}, "Q4_K_M", context=4096)
    mqa = P.plan_memory({**LLAMA2_7B, "num_key_value_heads": 1}, "Q4_K_M", context=4096)
    assert gqa["kv_cache"]["bytes"] * 4 == mha["kv_cache"]["bytes"] == 2 * 32 * 4096 * 4096 * 2
    assert mqa["kv_cache"]["bytes"] * 32 == mha["kv_cache"]["bytes"]
    # head_dim from the config when given (not hidden / heads)
    odd = P.plan_memory({**LLAMA2_7B, "num_key_value_heads": 8, "head_dim": 256}, "Q8_0", context=1024)
    assert odd["kv_cache"]["bytes"] == 2 * 32 * 8 * 256 * 1024 * 2


def test_kv_dtypes():
    assert P.kv_dtype_bytes("f16") == P.kv_dtype_bytes("bf16") == 2
    assert P.kv_dtype_bytes("fp8") == 1
    assert P.kv_dtype_bytes("q8_0") == 34 / 32  # llama.cpp's block types
    assert P.kv_dtype_bytes("q4_0") == 18 / 32
    with pytest.raises(ValueError):
        P.kv_dtype_bytes("int3")


def test_hf_linear_bytes_by_hand():
    # one 576 x 576 Linear, W4A16 g64 symmetric: 576 rows x (576/8 int32) + 576 x 9 BF16 scales + shape
    s = P._scheme("W4A16", 64, True)
    assert P.hf_linear_bytes(576, 576, s) == 576 * 72 * 4 + 576 * 9 * 2 + 16
    asym = P._scheme("W4A16", 64, False)  # + 4-bit zero points, packed 8 per int32 along the rows
    assert P.hf_linear_bytes(576, 576, asym) == 576 * 72 * 4 + 576 * 9 * 2 + (576 // 8) * 9 * 4 + 16
    assert P.hf_linear_bytes(576, 1536, P._scheme("FP8", None, None)) == 576 * 1536 + 576 * 2
    assert P.hf_linear_bytes(576, 576, P._scheme("MXFP4", None, None)) == 576 * 288 + 576 * 18
    assert P.hf_linear_bytes(576, 576, P._scheme("NVFP4", None, None)) == 576 * 288 + 576 * 36 + 4


def test_quant_names_and_errors():
    assert P.parse_quant("q4_k_m") == ("gguf", "Q4_K_M")
    assert P.parse_quant("awq-w4a16") == ("hf", "AWQ_W4A16")
    assert P.parse_quant("F16") == ("hf", "F16")
    assert P.parse_quant("F16", gguf_source=True) == ("gguf", "F16")
    assert P.parse_quant("gguf:bf16") == ("gguf", "BF16")
    with pytest.raises(ValueError, match="unknown quant type 'Q4_K'; GGUF file types: F32"):
        P.parse_quant("Q4_K")  # a tensor type, not a llama.cpp file type
    with pytest.raises(ValueError, match="config lacks"):
        P.plan_memory({"hidden_size": 8}, "Q8_0")


def test_llamacpp_compute_buffer_matches_measured():
    # llama.cpp's own "CPU compute buffer size" for SmolLM2-135M, n_ubatch 512 (measured with
    # llama-cpp-python 0.3.36): 98.25 MiB at n_ctx 512; 326.38 MiB at 16384 without flash attention
    shape = P.ModelShape.from_config(SMOLLM2_CONFIG)
    assert P.llamacpp_compute_buffer_bytes(shape, 512) == 98.25 * 2**20
    assert P.llamacpp_compute_buffer_bytes(shape, 16384) / (326.38 * 2**20) == pytest.approx(1, abs=0.02)
    assert P.llamacpp_compute_buffer_bytes(shape, 16384, flash_attn=True) == 98.25 * 2**20
    declared = P.plan_memory(SMOLLM2_CONFIG, "Q8_0", reserve_gib=0.5)
    assert declared["reserve"] == {"bytes": GIB // 2, "runtime": "llama-cpp", "source": "declared",
                                   "detail": "0.5 GiB declared", "gib": 0.5}


def test_fit_and_table_and_cli(capsys):
    fits = P.plan_memory("llama-2-7b", "Q4_K_M", budget_gib=24, context=4096)
    tight = P.plan_memory("llama-2-7b", "Q4_K_M", budget_gib=4, context=4096, reserve_gib=0.5)
    assert fits["budget"]["fits"] and fits["offload"]["all_layers_on_gpu"]
    assert not tight["budget"]["fits"]
    off = tight["offload"]
    assert 0 < off["gpu_layers"] < 32 and off["n_gpu_layers"] == off["gpu_layers"] + 1
    assert off["gpu_bytes"] <= 4 * GIB
    table = P.format_table([fits, tight])
    assert table.count("\n") == 3 and f"| {off['gpu_layers']}/32 |" in table
    assert P.run_cli(["llama-2-7b", "-q", "Q4_K_M", "-q", "W4A16", "--budget-gib", "24"]) == 0
    assert P.run_cli(["llama-2-7b", "-q", "Q4_K_M", "--budget-gib", "2"]) == 1
    assert P.run_cli(["llama-2-7b", "-q", "Q9_9"]) == 2
    out = capsys.readouterr()
    assert "| Q4_K_M | gguf | llama-cpp |" in out.out and "unknown quant type 'Q9_9'" in out.err
    assert P.run_cli(["smollm2-135m", "-q", "Q8_0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["weights"]["bytes"] == 143_025_408


def test_module_imports_no_gguf():
    import subprocess
    import sys

    code = "import sys, harness.planner; print('gguf' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# ----------------------------------------------------------------------------- the embedded model


def _store_roots() -> list[Path]:
    import platformdirs

    from harness.store import quantgate_home

    roots = [quantgate_home(), Path(platformdirs.user_cache_dir("quantgate"))]
    return list(dict.fromkeys(r for r in roots if r.is_dir()))


@pytest.fixture(scope="module")
def embedded_f16() -> Path:
    """The embedded model's F16 GGUF baseline: from a store, else derived (needs the
    unpacked model of ``quantgate data fetch``), else skip."""
    from harness.data import WHEEL_ASSETS, asset_path

    key = WHEEL_ASSETS["smollm2-135m"].file_sha256[:24]
    for root in _store_roots():
        path = root / "baselines" / f"{key}-f16" / "model-F16.gguf"
        if path.is_file() and (path.parent / "manifest.json").is_file():
            return path
    if not asset_path("smollm2-135m").is_file():
        pytest.skip("the embedded model is not fetched: run `quantgate data fetch`")
    from harness.baseline import derive
    from harness.config import EMBEDDED_MODEL

    return derive(EMBEDDED_MODEL, "gguf", log=lambda *_: None)


def _embedded_hf(embedded_f16: Path) -> Path:
    """The embedded model's BF16 folder beside its F16 GGUF in the store, of any layout (the
    weights are the same in all), or a path that does not exist."""
    stem = embedded_f16.parent.name.removesuffix("-f16")
    found = sorted(embedded_f16.parent.parent.glob(f"{stem}-hf-bf16*/hf-bf16/config.json"), reverse=True)
    return found[0].parent if found else embedded_f16.parent / "no-hf-bf16"


def _quantize(src: Path, dst: Path, ftype: str) -> None:
    import ctypes

    import llama_cpp

    qp = llama_cpp.llama_model_quantize_default_params()  # as the gguf quantizer's default params
    qp.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(qp))
    assert rc == 0, f"llama_model_quantize {ftype} returned {rc}"


@pytest.fixture(scope="module")
def embedded_artifacts(embedded_f16, tmp_path_factory) -> dict[str, Path]:
    """F16 + Q8_0/Q4_K_M/Q2_K GGUFs of the embedded model: the store's (default params, no
    imatrix), else quantized here with llama.cpp, else skipped."""
    found: dict[str, Path] = {"F16": embedded_f16}
    baseline = f"baseline-{embedded_f16.parent.name.removesuffix('-f16')}"
    for root in _store_roots():
        for man_path in sorted((root / "artifacts").glob("*/manifest.json")):
            try:
                man = json.loads(man_path.read_text())
            except (OSError, ValueError):
                continue
            params = man.get("params") or {}
            default = not (params.get("pure") or params.get("leave_output_tensor")
                           or params.get("output_tensor_type") or params.get("token_embedding_type"))
            if (man.get("method") == "gguf" and man.get("calibration") is None and default
                    and (man.get("key_inputs") or {}).get("baseline") == baseline
                    and (man_path.parent / man.get("entry", "")).is_file()):
                found.setdefault(params.get("type"), man_path.parent / man["entry"])
    missing = [t for t in ("Q8_0", "Q4_K_M", "Q2_K") if t not in found]
    if missing:
        if importlib.util.find_spec("llama_cpp") is None:
            pytest.skip(f"no {missing} artifacts in the store and no llama-cpp-python to make them")
        out = tmp_path_factory.mktemp("planner-gguf")
        for t in missing:
            found[t] = out / f"model-{t}.gguf"
            _quantize(embedded_f16, found[t], t)
    return found


def test_embedded_config_from_gguf(embedded_f16):
    config, tensors = P.read_gguf(embedded_f16)
    for k, v in SMOLLM2_CONFIG.items():
        assert config[k] == v, k
    assert P.ModelShape.from_config(config).n_params == sum(t.n_elements for t, _, _ in tensors) == 134_515_008


@pytest.mark.parametrize("ftype,tolerance", [("F16", 0.03), ("Q8_0", 0.03), ("Q4_K_M", 0.05), ("Q2_K", 0.05)])
def test_embedded_predicted_vs_real_weight_bytes(embedded_artifacts, ftype, tolerance, capsys):
    """Predicted from SmolLM2's config.json fields + the quant type, against the real file's
    tensor bytes (gguf.GGUFReader: sum of n_bytes). Q4_K_M and Q2_K are mixes whose per-tensor
    types come from the planner's port of llama.cpp's recipe, fallbacks included."""
    path = embedded_artifacts[ftype]
    real = sum(n_bytes for _, _, n_bytes in P.read_gguf(path)[1])  # gguf.GGUFReader's n_bytes
    plan = P.plan_memory(SMOLLM2_CONFIG, f"gguf:{ftype}", context=2048)
    predicted = plan["weights"]["bytes"]
    err = (predicted - real) / real
    with capsys.disabled():
        print(f"\n  SmolLM2-135M {ftype}: predicted {predicted} B, real {real} B ({path.name}), "
              f"error {err:+.4%}, {plan['weights']['bits_per_weight']} bits/weight")
    assert abs(err) <= tolerance
    # the file read as-is gives the same per-tensor types as predicted
    as_is = P.plan_memory(path, context=2048)
    assert as_is["exact"] and as_is["weights"]["bytes"] == real
    assert as_is["weights"]["by_type"] == plan["weights"]["by_type"]


def test_embedded_q4_k_m_is_not_4_5_bits(embedded_artifacts):
    """Hidden 576 is not a multiple of 256: llama.cpp falls back from Q4_K to Q5_0 (and from
    Q6_K to Q8_0) on every tensor whose rows are 576 long, so "Q4_K_M" lands at ~6.2 bits."""
    plan = P.plan_memory(SMOLLM2_CONFIG, "Q4_K_M")
    assert P.bits_per_weight("Q4_K_M") == 4.5
    assert plan["weights"]["bits_per_weight"] == pytest.approx(6.165, abs=0.01)
    types = plan["weights"]["by_type"]
    assert set(types) == {"Q5_0", "Q8_0", "Q4_K", "Q6_K", "F32"}  # Q4_K/Q6_K only in ffn_down (rows 1536)
    fell_back = [n for n in plan["notes"] if "fell back" in n]
    assert fell_back and fell_back[0].startswith("180 tensors")  # q,k,v,o,gate,up x 30 layers


def test_embedded_offload_uses_real_layer_bytes(embedded_artifacts):
    path = embedded_artifacts["Q8_0"]
    plan = P.plan_memory(path, context=2048, budget_gib=0.25, reserve_gib=0.1)
    off = plan["offload"]
    per_layer = plan["weights"]["per_layer_bytes"]
    assert len(per_layer) == 30 and len(set(per_layer)) == 1
    # tied embeddings: the output layer holds a duplicate of token_embd (llama.cpp loads it twice)
    assert off["output_layer_bytes"] == plan["weights"]["input_bytes"] + 576 * 4
    kv_layer = 2 * 3 * 64 * 2048 * 2
    avail = 0.25 * GIB - 0.1 * GIB - off["output_layer_bytes"]
    assert off["gpu_layers"] == min(30, int(avail // (per_layer[0] + kv_layer)))
    assert 0 < off["gpu_layers"] < 30


def test_hf_bf16_baseline_predicted_exactly(embedded_f16):
    folder = _embedded_hf(embedded_f16)
    if not (folder / "config.json").is_file():
        pytest.skip("no BF16 safetensors baseline in the store (quantgate data fetch with torch installed)")
    real = P.plan_memory(folder)
    assert real["exact"]
    predicted = P.plan_memory(folder / "config.json", "hf:BF16")
    assert predicted["weights"]["bytes"] == real["weights"]["bytes"] == 269_030_016


def test_store_llmcompressor_artifacts_predicted():
    """Every llm-compressor artifact in the store, predicted from its config + scheme params."""
    checked = 0
    for root in _store_roots():
        for man_path in sorted((root / "artifacts").glob("*/manifest.json")):
            man = json.loads(man_path.read_text())
            folder = man_path.parent / "model"
            if man.get("method") != "llm-compressor" or not (folder / "config.json").is_file():
                continue
            params = man["params"]
            if params.get("ignore") != ["lm_head"]:
                continue
            real = P.plan_memory(folder)["weights"]["bytes"]
            pred = P.plan_memory(SMOLLM2_CONFIG, params["scheme"], group_size=params["group_size"],
                                 symmetric=params["symmetric"])["weights"]["bytes"]
            # NVFP4: llm-compressor stores the per-tensor global scale in BF16, the planner counts FP32
            assert abs(pred - real) <= 2 * 7 * 30, (params["scheme"], pred, real)
            checked += 1
    if not checked:
        pytest.skip("no llm-compressor artifacts of the embedded model in the store")


# ----------------------------------------------------------------------------- llama.cpp's mixes


def _write_synthetic_gguf(path: Path, n_layers=8, hidden=256, heads=4, kv_heads=1, inter=512, vocab=512) -> None:
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(512)
    w.add_embedding_length(hidden)
    w.add_block_count(n_layers)
    w.add_feed_forward_length(inter)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(hidden // heads)
    w.add_vocab_size(vocab)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    rng = np.random.default_rng(0)
    hd = hidden // heads

    def add(name, *shape):  # numpy order: (rows, row length)
        w.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32 if len(shape) == 1 else np.float16))

    add("token_embd.weight", vocab, hidden)
    for i in range(n_layers):
        p = f"blk.{i}."
        add(p + "attn_norm.weight", hidden)
        add(p + "attn_q.weight", heads * hd, hidden)
        add(p + "attn_k.weight", kv_heads * hd, hidden)
        add(p + "attn_v.weight", kv_heads * hd, hidden)
        add(p + "attn_output.weight", hidden, heads * hd)
        add(p + "ffn_norm.weight", hidden)
        add(p + "ffn_gate.weight", inter, hidden)
        add(p + "ffn_up.weight", inter, hidden)
        add(p + "ffn_down.weight", hidden, inter)
    add("output_norm.weight", hidden)
    add("output.weight", vocab, hidden)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@needs_llama_cpp
@pytest.mark.parametrize("ftype", ["Q4_K_M", "Q5_K_M", "Q3_K_M", "Q2_K", "Q4_K_S", "Q6_K"])
def test_type_mix_matches_llama_cpp_tensor_by_tensor(tmp_path_factory, ftype):
    """Hidden 256 (no fallback), untied output, 4 query heads per KV head: the K-quant mixes
    as llama.cpp's quantizer chooses them, every tensor's type equal to the prediction."""
    folder = tmp_path_factory.getbasetemp() / "planner-synth"
    folder.mkdir(exist_ok=True)
    src = folder / "synth-F16.gguf"
    if not src.is_file():
        _write_synthetic_gguf(src)
    out = folder / f"synth-{ftype}.gguf"
    _quantize(src, out, ftype)
    config, tensors = P.read_gguf(src)
    predicted = P.predict_gguf([t for t, _, _ in tensors], ftype, n_heads=4, n_kv_heads=1)
    _, real = P.actual_gguf(out)
    assert {t["name"]: t["type"] for t in predicted.tensors} == {t["name"]: t["type"] for t in real.tensors}
    assert predicted.total == real.total
    if ftype in ("Q4_K_M", "Q5_K_M"):  # use_more_bits: layers 0, 3, 6 and 7 of 8 get Q6_K
        v = {t["layer"]: t["type"] for t in real.tensors if t["name"].endswith("attn_v.weight")}
        assert [i for i, typ in sorted(v.items()) if typ == "Q6_K"] == [0, 3, 6, 7]
    assert not any("fell back" in n for n in predicted.notes)
    assert math.isclose(P.ModelShape.from_config(config).n_params,
                        sum(t.n_elements for t, _, _ in tensors))


# ----------------------------------------------------- the probe process's prediction
# SmolLM2-135M: 30 layers, 3 KV heads x 64, hidden 576, 9 heads, FFN 1536, vocab 49152
KV_F16_PER_TOKEN = 2 * 30 * 3 * 64 * 2


def _compute_buffer_by_hand(ctx: int) -> int:
    ub = min(512, ctx)
    return max(ub * 49152 * 4, ctx * ub * 10 * 4, ub * 1536 * 8) + 2 * ub * 576 * 4


def test_probe_peak_llama_cpp_by_hand(embedded_f16):
    """Session context (289 tokens) + the batch context of the largest batch shape (4 sequences
    of 289 tokens, padded to 512 each), each with its compute buffer; no CUDA context on CPU."""
    p = P.predict_probe_peak(embedded_f16, "llama-cpp", n_ctx=289, shapes=[[97, 1], [97, 4], [289, 4]],
                             device="cpu")
    weights = P.plan_memory(embedded_f16)["weights"]["bytes"]
    kv = KV_F16_PER_TOKEN * (289 + 4 * 512)
    reserve = _compute_buffer_by_hand(289) + _compute_buffer_by_hand(512)
    assert reserve == 58_151_424 + 103_022_592
    assert p["total_gib"] == pytest.approx((weights + kv + reserve) / 2**30, abs=2e-4)
    assert p["kv_cache_gib"] == pytest.approx(kv / 2**30, abs=1e-4)
    assert "4 x 512" in p["workload"]
    # on a GPU the CUDA context reserve comes on top; without batch shapes only the session counts
    gpu = P.predict_probe_peak(embedded_f16, "llama-cpp", n_ctx=289, shapes=None, device="cuda")
    assert gpu["total_gib"] == pytest.approx(
        (weights + KV_F16_PER_TOKEN * 289 + _compute_buffer_by_hand(289)) / 2**30 + 0.25, abs=2e-4)


def test_probe_peak_transformers_dense_weights(embedded_f16):
    """A checkpoint the runtime holds as dense float32: n_params x 4 bytes whatever the file's
    bit width, a float32 KV cache, and from_pretrained's load peak (the stored tensors and
    their float32 copies at once) when that is larger than the workload."""
    folder = _embedded_hf(embedded_f16)
    if not (folder / "config.json").is_file():
        pytest.skip("no BF16 safetensors baseline in the store")
    n_params = P.plan_memory(folder)["model"]["n_params"]
    info = {"dtype": "float32", "weights": "dense", "device": "cpu"}
    p = P.predict_probe_peak(folder, "transformers", n_ctx=289, shapes=[[289, 4]], device="cpu", session_info=info)
    assert p["weights_gib"] == pytest.approx(n_params * 4 / 2**30, abs=1e-4)
    assert p["kv_cache_gib"] == pytest.approx(2 * KV_F16_PER_TOKEN * 289 * 4 / 2**30, abs=1e-4)  # f32: 2x f16
    assert p["total_gib"] == pytest.approx((269_030_016 + n_params * 4) / 2**30, abs=1e-4)
    assert p["workload"].startswith("load")
    # packed weights (decompressed on every forward) stay at the file's bytes, KV in f16
    packed = P.predict_probe_peak(folder, "transformers", n_ctx=289, device="cpu",
                                  session_info={"dtype": "bfloat16", "weights": "packed, decompressed on every forward"})
    assert packed["weights_gib"] == pytest.approx(269_030_016 / 2**30, abs=1e-4)
    # + one prefill of 289 tokens: act(gate), up, their product (3 x 1536) and ~4 x 576 of
    # hidden states per token in bf16, and the last position's float32 logits (vocab 49,152)
    prefill = 289 * (3 * 1536 + 4 * 576) * 2 + 49_152 * 4
    assert packed["total_gib"] == pytest.approx((269_030_016 + KV_F16_PER_TOKEN * 289 + prefill) / 2**30, abs=1e-4)
    assert packed["reserve_gib"] == pytest.approx(prefill / 2**30, abs=1e-4)
