"""KV-cache quantization as a candidate axis: llama.cpp ``type_k``/``type_v``, vLLM
``kv_cache_dtype``, transformers' quantized cache; the planner's KV bytes; the report's pair
label ("gguf Q4_K_M + KV q8_0"). Param validation first (fast), then real llama.cpp on the
embedded model (slow)."""

from __future__ import annotations

import json

import pytest
import yaml
from pydantic import ValidationError

from tests.conftest import ROOT, run_cli

# ------------------------------------------------------------------ params (fast)


def test_llama_cpp_kv_params_validate():
    from harness.runtimes.llama_cpp import KV_CACHE_TYPES, QUANTIZED_KV, LlamaCppParams

    p = LlamaCppParams()
    assert (p.type_k, p.type_v) == ("f16", "f16")
    for t in KV_CACHE_TYPES:
        LlamaCppParams(type_k=t, type_v=t, flash_attn="on")
    LlamaCppParams(type_k="q4_0", type_v="q4_0")  # auto: llama.cpp turns flash attention on for it
    LlamaCppParams(type_k="q8_0", flash_attn="off")  # a quantized K alone runs without it
    with pytest.raises(ValidationError, match="needs flash attention"):
        LlamaCppParams(type_v="q8_0", flash_attn="off")
    with pytest.raises(ValidationError):
        LlamaCppParams(type_k="q2_k")  # not a cache type llama.cpp accepts
    assert QUANTIZED_KV == set(KV_CACHE_TYPES) - {"f32", "f16", "bf16"}


def test_llama_cpp_kv_type_ids_match_ggml():
    """The ids passed to ``Llama(type_k=...)`` are ggml's (gguf's enum is the same numbering)."""
    import gguf

    from harness.runtimes.llama_cpp import KV_CACHE_TYPES, _ggml_type

    for name, ident in KV_CACHE_TYPES.items():
        assert gguf.GGMLQuantizationType[name.upper()].value == ident, name
    llama_cpp = pytest.importorskip("llama_cpp")
    for name in KV_CACHE_TYPES:
        if hasattr(llama_cpp, f"GGML_TYPE_{name.upper()}"):
            assert _ggml_type(llama_cpp, name) == KV_CACHE_TYPES[name], name


def test_kv_params_enter_result_key_and_hook():
    from harness.runtimes import Runtime
    from harness.runtimes.llama_cpp import LlamaCppParams, LlamaCppRuntime
    from harness.runtimes.transformers import TransformersParams, TransformersRuntime
    from harness.runtimes.vllm import VllmParams, VllmRuntime

    rt = LlamaCppRuntime()
    base = rt.result_identity(LlamaCppParams())
    assert rt.result_identity(LlamaCppParams(type_k="q8_0", type_v="q8_0")) != base
    assert rt.result_identity(LlamaCppParams(type_v="q4_0")) != base
    assert rt.kv_cache_dtype(LlamaCppParams()) is None
    assert rt.kv_cache_dtype(LlamaCppParams(type_k="q8_0", type_v="q8_0")) == "q8_0"
    assert rt.kv_cache_dtype(LlamaCppParams(type_k="q8_0")) == "q8_0/f16"
    v = VllmRuntime()
    assert v.kv_cache_dtype(VllmParams()) is None
    assert v.kv_cache_dtype(VllmParams(kv_cache_dtype="fp8")) == "fp8"
    assert v.result_identity(VllmParams(kv_cache_dtype="fp8")) != v.result_identity(VllmParams())
    assert TransformersRuntime().kv_cache_dtype(TransformersParams(kv_cache="quanto-int4")) is None
    assert Runtime.kv_cache_dtype(Runtime(), LlamaCppParams()) is None


def test_vllm_kv_cache_dtype_validation():
    from harness.runtimes.vllm import VllmParams, check_kv_cache_dtype

    assert VllmParams().kv_cache_dtype == "auto"
    for dt in ("fp8", "fp8_e4m3", "fp8_e5m2"):
        VllmParams(kv_cache_dtype=dt)
        check_kv_cache_dtype(dt, on_cpu=False)  # the CUDA build: passed to LLM(kv_cache_dtype=...)
        with pytest.raises(ValueError) as exc:
            check_kv_cache_dtype(dt, on_cpu=True)
        msg = str(exc.value)
        assert "\n" not in msg and dt in msg and "CPU" in msg and "kv_cache_dtype: auto" in msg
    check_kv_cache_dtype("auto", on_cpu=True)
    with pytest.raises(ValidationError):
        VllmParams(kv_cache_dtype="int4")


def test_transformers_kv_cache_param():
    import importlib.util

    from harness.runtimes.transformers import TransformersParams, kv_cache_unavailable

    assert TransformersParams().kv_cache == "none"
    for kv in ("quanto-int4", "quanto-int2", "hqq-int8", "hqq-int4", "hqq-int2"):
        TransformersParams(kv_cache=kv)
    with pytest.raises(ValidationError):
        TransformersParams(kv_cache="quanto-int8")  # quanto quantizes a cache to 2 or 4 bits only
    assert kv_cache_unavailable("none") is None
    for kv, module, package in (("quanto-int4", "optimum", "optimum-quanto"), ("hqq-int4", "hqq", "hqq")):
        msg = kv_cache_unavailable(kv)
        if importlib.util.find_spec(module) is None:
            assert msg and f"pip install {package}" in msg and kv in msg and "\n" not in msg
        else:
            assert msg is None or package in msg


def test_planner_kv_dtype_bytes():
    import gguf

    from harness import planner

    assert planner.kv_dtype_bytes("q8_0") == 34 / 32
    assert planner.kv_dtype_bytes("q4_0") == 18 / 32
    for name in ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl"):
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name.upper()]]
        assert planner.kv_dtype_bytes(name) == size / block, name
    assert planner.kv_dtype_bytes("q8_0/f16") == (34 / 32 + 2) / 2
    assert planner.kv_dtype_bytes("fp8") == 1
    f16 = planner.plan_memory("smollm2-135m", "F16", context=4096, kv_dtype="f16")["kv_cache"]["bytes"]
    q8 = planner.plan_memory("smollm2-135m", "F16", context=4096, kv_dtype="q8_0")["kv_cache"]["bytes"]
    q4 = planner.plan_memory("smollm2-135m", "F16", context=4096, kv_dtype="q4_0")["kv_cache"]["bytes"]
    assert q8 / f16 == pytest.approx(17 / 32) and q4 / f16 == pytest.approx(9 / 32)
    with pytest.raises(ValueError, match="unknown KV dtype"):
        planner.kv_dtype_bytes("q3_x")


def test_report_names_the_pair():
    from harness.report.markdown import kv_cache_label
    from harness.results import Record, RuntimeInfo

    def rec(params, name="llama-cpp"):
        return Record(name="c", role="candidate", runtime=RuntimeInfo(name=name, params=params))

    assert kv_cache_label(rec({"type_k": "f16", "type_v": "f16"})) == ""
    assert kv_cache_label(rec({"type_k": "q8_0", "type_v": "q8_0"})) == " + KV q8_0"
    assert kv_cache_label(rec({"type_k": "q8_0", "type_v": "f16"})) == " + KV K q8_0 / V f16"
    assert kv_cache_label(rec({"kv_cache_dtype": "fp8"}, "vllm")) == " + KV fp8"
    assert kv_cache_label(rec({"kv_cache_dtype": "auto", "kv_cache_gib": 2.0}, "vllm")) == ""
    assert kv_cache_label(rec({"kv_cache": "quanto-int4"}, "transformers")) == " + KV quanto-int4"
    assert kv_cache_label(rec({"kv_cache": "none"}, "transformers")) == ""
    assert kv_cache_label(Record(name="b", role="baseline")) == ""


def test_shipped_kv_plan_validates():
    res = run_cli("validate", str(ROOT / "configs" / "kv-cache.yaml"))
    assert res.returncode == 0, res.stdout + res.stderr


def test_plan_refuses_quantized_v_without_flash_attn(tmp_path):
    plan = yaml.safe_load((ROOT / "configs" / "kv-cache.yaml").read_text())
    plan["candidates"][0]["runtime"]["params"]["flash_attn"] = "off"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(plan, sort_keys=False))
    res = run_cli("validate", str(bad))
    assert res.returncode == 2
    assert "candidates[0].runtime" in res.stderr and "needs flash attention" in res.stderr, res.stderr


# ------------------------------------------------------------------ real llama.cpp (slow)

#: the windows the plan below is measured on: the first 4 x 1024 tokens of WikiText-2 test
WINDOWS = {"context_length": 1024, "max_tokens": 4096}


@pytest.fixture(scope="module")
def kv_sessions(qg_home):
    """The embedded model's F16 GGUF loaded with an f16, a q8_0 and a q4_0 KV cache (flash
    attention auto: on for the CPU, forced on for a quantized V): one 256-token window scored,
    a greedy decode and a batch of two. (The perplexity figures come from the plan run below,
    on the same three caches: the numbers are not measured twice.)"""
    from harness import baseline
    from harness.config import EMBEDDED_MODEL
    from harness.runtimes.llama_cpp import LlamaCppParams, LlamaCppRuntime
    from harness.suites.perplexity import PerplexityParams, token_windows

    path = baseline.derive(EMBEDDED_MODEL, "gguf", log=lambda m: None)
    rt = LlamaCppRuntime()
    out: dict[str, dict] = {}
    for kv in ("f16", "q8_0", "q4_0"):
        session = rt.load(path, LlamaCppParams(n_threads=2, type_k=kv, type_v=kv), 256)
        try:
            window = token_windows(PerplexityParams(context_length=256, max_tokens=256), session)[0]
            lp = session.token_logprobs(window)
            # the context swapped in for the quantized V cache still generates and batches
            decode = session.greedy_decode(window[:16], 4)
            batch = session.greedy_decode_batch([window[:16], window[16:32]], 4)
            out[kv] = {"logprobs": lp, "info": session.info(), "decode": decode, "batch": batch}
        finally:
            session.close()
    return out


@pytest.mark.slow
def test_quantized_kv_scores_generates_and_batches(kv_sessions):
    import numpy as np

    f16 = kv_sessions["f16"]["logprobs"]
    assert len(f16) == 255 and np.isfinite(f16).all()
    for kv in ("q8_0", "q4_0"):
        lp = kv_sessions[kv]["logprobs"]
        assert lp.shape == f16.shape and not np.array_equal(lp, f16)  # the cache type took effect
        assert abs(lp.mean() - f16.mean()) < 0.5, (kv, lp.mean(), f16.mean())  # not a broken load
        assert len(kv_sessions[kv]["decode"]["tokens"][0]) == 4 and len(kv_sessions[kv]["batch"]["tokens"]) == 2


@pytest.mark.slow
def test_session_info_records_kv_types(kv_sessions):
    assert kv_sessions["f16"]["info"]["kv_cache"] == {"type_k": "f16", "type_v": "f16"}
    for kv in ("q8_0", "q4_0"):
        info = kv_sessions[kv]["info"]
        assert info["kv_cache"]["type_k"] == kv and info["kv_cache"]["type_v"] == kv
        assert "flash attention" in info["kv_cache"]["note"]
        assert info["flash_attn"] == {"requested": "auto", "resolved": "on"}


@pytest.mark.slow
def test_flash_attn_on_matches_auto_for_quantized_v(qg_home):
    """flash_attn on takes the direct path (Llama() made with the quantized V cache): the same
    numbers as auto's swapped-in context."""
    import numpy as np

    from harness import baseline
    from harness.config import EMBEDDED_MODEL
    from harness.runtimes.llama_cpp import LlamaCppParams, LlamaCppRuntime
    from harness.suites.perplexity import PerplexityParams, token_windows

    path = baseline.derive(EMBEDDED_MODEL, "gguf", log=lambda m: None)
    rt = LlamaCppRuntime()
    logp = {}
    for fa in ("on", "auto"):
        session = rt.load(path, LlamaCppParams(n_threads=2, type_k="q8_0", type_v="q8_0", flash_attn=fa), 256)
        try:
            window = token_windows(PerplexityParams(context_length=256, max_tokens=256), session)[0]
            logp[fa] = session.token_logprobs(window)
            assert session.info()["flash_attn"]["resolved"] == "on"
        finally:
            session.close()
    np.testing.assert_array_equal(logp["on"], logp["auto"])


@pytest.fixture(scope="module")
def kv_run(qg_home, tmp_path_factory):
    """The shipped kv-cache plan, made small (4 windows of 1024 tokens, two candidates, the size
    and memory probes), through ``python -m harness run`` without tracking."""
    plan = yaml.safe_load((ROOT / "configs" / "kv-cache.yaml").read_text())
    plan["candidates"] = [c for c in plan["candidates"] if c["name"] in ("f16-kv-q8", "f16-kv-q4")]
    suite = plan["suites"][0]
    suite["params"].update(WINDOWS)
    plan["probes"] = {"size": {}, "memory": {}}
    tmp = tmp_path_factory.mktemp("kv-run")
    path = tmp / "kv-small.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    res = run_cli("run", str(path), "--reports-dir", str(tmp / "reports"), "--no-tracking")
    run_dir = next((tmp / "reports").iterdir())
    return res, run_dir, suite["name"]


@pytest.mark.heavy  # three records x 4 windows of 1024 tokens: ~4 min on 2 cores (nox -s heavy, in CI)
def test_kv_plan_runs_and_report_names_the_pair(kv_run):
    res, run_dir, suite = kv_run
    assert res.returncode in (0, 1), res.stdout[-3000:] + res.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    base, cands = results["baseline"], {c["name"]: c for c in results["candidates"]}
    assert all(c["status"] == "ok" for c in cands.values()), res.stdout[-3000:]
    # the candidates reuse the baseline's own F16 GGUF: the same bytes, only the cache differs
    assert {c["artifact"]["format"] for c in cands.values()} == {"gguf"}
    assert cands["f16-kv-q8"]["metrics"]["size.bytes"]["value"] == base["metrics"]["size.bytes"]["value"]
    ppl = {n: r["metrics"][f"{suite}.ppl"]["value"] for n, r in [("f16", base), *cands.items()]}
    print("\nkv-cache plan (4 x 1024 tokens):", ppl)
    f16, q8, q4 = ppl["f16"], ppl["f16-kv-q8"], ppl["f16-kv-q4"]
    assert 10 < f16 < 80, f16  # a sane model, not a broken load
    assert q8 != f16 and q4 != f16
    # q8_0 is close to f16; q4_0 moves at least as much (loosely: the direction, not a size)
    assert abs(q8 / f16 - 1) < 0.02, (f16, q8)
    assert abs(q4 / f16 - 1) >= 0.5 * abs(q8 / f16 - 1), (f16, q8, q4)
    assert abs(q4 / f16 - 1) < 0.5, (f16, q4)
    info = cands["f16-kv-q8"]["suites"][suite]["load_info"]
    assert info["kv_cache"]["type_k"] == "q8_0" and info["kv_cache"]["type_v"] == "q8_0"
    assert cands["f16-kv-q4"]["runtime"]["params"]["type_v"] == "q4_0"
    # the planner counts each candidate's KV type: q8_0 = 34 bytes per 32 values, q4_0 = 18
    assert base["planner"]["kv_dtype"] == "f16"
    assert cands["f16-kv-q8"]["planner"]["kv_dtype"] == "q8_0"
    kv = {n: r["planner"]["kv_cache_gib"] for n, r in [("f16", base), *cands.items()]}
    assert kv["f16-kv-q8"] / kv["f16"] == pytest.approx(17 / 32, rel=1e-2)
    assert kv["f16-kv-q4"] / kv["f16"] == pytest.approx(9 / 32, rel=1e-2)
    summary = (run_dir / "summary.md").read_text()
    assert "| f16-kv-q8 | unquantized + KV q8_0 | llama-cpp |" in summary
    assert "| f16-kv-q4 | unquantized + KV q4_0 | llama-cpp |" in summary
    html = (run_dir / "report.html").read_text()
    assert "+ KV q8_0" in html and "+ KV q4_0" in html


@pytest.mark.slow
def test_transformers_quantized_cache_where_quanto_runs(qg_home):
    """transformers' QuantizedCache (quanto int4) in generation; scoring, one forward per window,
    keeps no cache and gives the same numbers. Skipped without optimum-quanto (not in the dev
    extras): `pip install optimum-quanto`."""
    pytest.importorskip("optimum.quanto")
    import numpy as np

    from harness import baseline
    from harness.config import EMBEDDED_MODEL
    from harness.runtimes.transformers import TransformersParams, TransformersRuntime
    from harness.suites.perplexity import PerplexityParams, token_windows

    path = baseline.derive(EMBEDDED_MODEL, "hf", log=lambda m: None)
    rt = TransformersRuntime()
    out = {}
    for kv in ("none", "quanto-int4"):
        session = rt.load(path, TransformersParams(kv_cache=kv, n_threads=2), 512)
        try:
            window = token_windows(PerplexityParams(context_length=256, max_tokens=256), session)[0]
            out[kv] = {"logp": session.token_logprobs(window), "info": session.info()["kv_cache"],
                       "tokens": session.greedy_decode(window[:64], 16)["tokens"][0]}
        finally:
            session.close()
    assert out["quanto-int4"]["info"]["type"] == "quanto-int4"
    assert "generation" in out["quanto-int4"]["info"]["applies_to"]
    np.testing.assert_array_equal(out["none"]["logp"], out["quanto-int4"]["logp"])
    assert len(out["quanto-int4"]["tokens"]) == 16
