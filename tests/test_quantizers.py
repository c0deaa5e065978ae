"""Quantizer methods on the real embedded model, scored on the baseline's windows.

The plan is configs/all-methods.yaml cut down for test time (8 windows of 512 tokens, small
calibration sets). ``nox -s tests`` builds one candidate per family (GGUF K-quants,
llm-compressor RTN and GPTQ, FP8) and checks the quality order; the rest of the matrix
(legacy and i-quant GGUF with an importance matrix, W8A16, AWQ, SmoothQuant, emulated FP4) is
marked ``heavy`` and runs in ``nox -s heavy`` (CI runs both). Every GGUF type and scheme, at
full size, runs in `nox -s bench` (benchmarks/quantizers.py).
"""

from __future__ import annotations

import json
import math

import pytest
import yaml

from tests.conftest import ROOT, run_cli

pytestmark = pytest.mark.slow


def _small_plan(names: list[str] | None = None) -> dict:
    plan = yaml.safe_load((ROOT / "configs" / "all-methods.yaml").read_text())
    plan["suites"][0]["params"]["max_tokens"] = 4096  # 8 windows: 2 left AWQ vs RTN to noise
    plan["probes"] = {"size": {}}
    plan["tracking"] = {"enabled": False}
    for c in plan["candidates"]:
        cal = c["quantizer"].get("calibration")
        if cal:
            cal.update(samples=8, seq_len=256)
    if names:
        plan["candidates"] = [c for c in plan["candidates"] if c["name"] in names]
    return plan


def _run(plan: dict, tmp_path, name="plan.yaml", *extra):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    proc = run_cli("run", str(path), "--reports-dir", str(tmp_path / "reports"), *extra)
    run_dir = max((tmp_path / "reports").iterdir(), key=lambda p: p.stat().st_mtime)
    return proc, json.loads((run_dir / "results.json").read_text()), run_dir


# in `nox -s tests`: llm-compressor's RTN (W4A16 on transformers) built, loaded, scored, keyed.
# GPTQ and the order GPTQ <= RTN are `heavy`: GPTQ's calibration was the largest part of `nox -s
# tests` on 2 cores. The GGUF K-quants' order (F16 < Q8_0 < Q4_K_M < Q2_K) is the smoke test's
# (tests/test_smoke_e2e.py).
CORE = ["w4a16-rtn-g64"]
# the rest of the matrix (`heavy`: `nox -s heavy`, run by CI after `nox -s tests`): GGUF legacy,
# K- and i-quants (importance matrix), W8A16, AWQ, SmoothQuant, FP8, emulated FP4. AWQ's search
# and SmoothQuant alone take minutes on 2 cores.
HEAVY = ["w4a16-gptq-g64", "gguf-q8_0", "gguf-q4_k_m", "gguf-q2_k", "gguf-q4_0", "gguf-iq4_xs", "w8a16-rtn", "w4a16-awq-g64",
         "fp8-dynamic", "w8a8-int8-smoothquant", "nvfp4-emulated"]


@pytest.fixture(scope="module")
def all_methods(qg_home, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("all-methods")
    proc, res, run_dir = _run(_small_plan(CORE), tmp)
    return proc, res, run_dir, tmp


@pytest.fixture(scope="module")
def heavy_methods(qg_home, tmp_path_factory):
    """The rest of the matrix beside the core's (the baseline's items and results are reused)."""
    tmp = tmp_path_factory.mktemp("heavy-methods")
    proc, res, run_dir = _run(_small_plan(CORE + HEAVY), tmp)
    return proc, res, run_dir, tmp


def _ppl(res) -> dict[str, float]:
    return {c["name"]: c["metrics"].get("wikitext2.ppl", {}).get("value") for c in [res["baseline"], *res["candidates"]]}


def _builds_loads_and_scores(res, names):
    errors = {c["name"]: c["error"] for c in res["candidates"] if c["status"] != "ok"}
    assert not errors, errors
    assert sorted(c["name"] for c in res["candidates"]) == sorted(names)
    ppl = _ppl(res)
    assert all(v is not None and math.isfinite(v) for v in ppl.values()), ppl
    base = res["baseline"]["suites"]["wikitext2"]["records"]
    for c in res["candidates"]:
        assert [r["prompt_hash"] for r in c["suites"]["wikitext2"]["records"]] == [r["prompt_hash"] for r in base]


def test_every_core_method_builds_loads_and_scores(all_methods):
    res = all_methods[1]
    _builds_loads_and_scores(res, CORE)
    assert {c["name"]: c["runtime"]["name"] for c in res["candidates"]}["w4a16-rtn-g64"] == "transformers"
    ppl = _ppl(res)
    assert ppl["w4a16-rtn-g64"] > ppl["f16"], ppl  # 4-bit RTN loses to the F16 baseline


def test_compressed_checkpoint_loads_as_plain_modules(all_methods):
    """compressed-tensors loads a checkpoint into CPU offload caches that onload every tensor on
    each access; left there, ``.to("cuda")`` keeps the weights on the CPU and every forward
    copies them (FP8 probes 8x slower than BF16 on an H200). The session holds plain modules."""
    from pathlib import Path

    from harness.runtimes.transformers import TransformersParams, TransformersRuntime

    offload = pytest.importorskip("compressed_tensors.offload.cache")
    art = {c["name"]: c["artifact"]["path"] for c in all_methods[1]["candidates"]}["w4a16-rtn-g64"]
    session = TransformersRuntime().load(Path(art), TransformersParams(n_threads=2), 256)
    try:
        modules = list(session.model.modules())
        assert not [m for m in modules if isinstance(m._parameters, offload.OffloadCache)]
        assert not [m for m in modules if hasattr(m, "_original_forward_func")]
        assert session.info()["offload"] == "compressed-tensors CPU offload removed at load"
        assert session.info()["weights"] == "decompressed to dense at load"
        assert "activations" not in session.info()  # weight-only: inputs stay bf16/float32
    finally:
        session.close()


@pytest.mark.heavy
def test_fp8_dynamic_session_says_its_activations_are_emulated(heavy_methods):
    """FP8-dynamic (W8A8): compressed-tensors quantizes each Linear's input per token in every
    forward; the session records that its speed is an emulation's, not FP8 kernels'."""
    from pathlib import Path

    from harness.runtimes.transformers import TransformersParams, TransformersRuntime

    art = {c["name"]: c["artifact"]["path"] for c in heavy_methods[1]["candidates"]}["fp8-dynamic"]
    session = TransformersRuntime().load(Path(art), TransformersParams(n_threads=2), 256)
    try:
        assert "float8 dynamic per token" in session.info()["activations"]
        assert session.info()["offload"] == "compressed-tensors CPU offload removed at load"
    finally:
        session.close()


@pytest.mark.heavy
def test_gptq_no_worse_than_rtn(heavy_methods):
    ppl = _ppl(heavy_methods[1])
    assert ppl["w4a16-gptq-g64"] <= ppl["w4a16-rtn-g64"], ppl  # (both above F16: the test below)


def _manifests_describe_each_artifact(res):
    for c in res["candidates"]:
        man = c["artifact"]["manifest"]
        assert man["method"] == c["quantizer"]["method"]
        assert man["size_bytes"] > 10_000_000 and man["wall_seconds"] > 0 and man["peak_rss_gib"] > 0
        assert 2.0 < man["bits_per_weight"] < 12.0, (c["name"], man["bits_per_weight"])
        assert man["key_inputs"]["versions"]
        if c["quantizer"].get("calibration"):
            assert len(man["key_inputs"]["calibration"]["text_sha256"]) == 64


def test_manifests_describe_each_artifact(all_methods):
    res = all_methods[1]
    _manifests_describe_each_artifact(res)
    man = {c["name"]: c["artifact"]["manifest"] for c in res["candidates"]}
    assert man["w4a16-rtn-g64"]["calibration"] is None


def _planner_predicts(res, preds):
    from harness import planner

    for c in res["candidates"]:
        real = planner.plan_memory(c["artifact"]["path"], None)["weights"]["bytes"]  # the file's tensors
        assert c["planner"]["weights_gib"] * 2**30 == pytest.approx(real, rel=1e-3), c["name"]  # GiB to 4 places
    for name, quant in preds.items():
        c = next(c for c in res["candidates"] if c["name"] == name)
        real = planner.plan_memory(c["artifact"]["path"], None)["weights"]["bytes"]
        predicted = planner.plan_memory("embedded:smollm2-135m", quant, group_size=64)["weights"]["bytes"]
        assert predicted == pytest.approx(real, rel=0.01), (name, predicted, real)


def test_planner_predicts_each_artifact(all_methods):
    """The memory-fit planner, from the config and the recipe alone, against the real files."""
    _planner_predicts(all_methods[1], {"w4a16-rtn-g64": "W4A16"})


# ------------------------------------------------------------------ the rest of the matrix
@pytest.mark.heavy
def test_every_method_builds_loads_and_scores(heavy_methods):
    res = heavy_methods[1]
    _builds_loads_and_scores(res, CORE + HEAVY)
    assert {c["name"]: c["runtime"]["name"] for c in res["candidates"]}["gguf-iq4_xs"] == "llama-cpp"


@pytest.mark.heavy
def test_heavy_eight_bit_within_two_percent_and_four_bit_worse(heavy_methods):
    ppl = _ppl(heavy_methods[1])
    for eight in ("gguf-q8_0", "w8a16-rtn"):
        assert abs(ppl[eight] / ppl["f16"] - 1) < 0.02, (eight, ppl)
    for lower in ("gguf-q4_k_m", "gguf-q4_0", "gguf-iq4_xs", "gguf-q2_k"):
        assert ppl[lower] > ppl["gguf-q8_0"], (lower, ppl)
    for four in ("w4a16-rtn-g64", "w4a16-gptq-g64", "w4a16-awq-g64"):
        assert ppl[four] > ppl["w8a16-rtn"], (four, ppl)


@pytest.mark.heavy
def test_awq_no_worse_than_rtn(heavy_methods):
    ppl = _ppl(heavy_methods[1])
    assert ppl["w4a16-awq-g64"] <= ppl["w4a16-rtn-g64"], ppl


@pytest.mark.heavy
def test_heavy_manifests_and_report(heavy_methods):
    res = heavy_methods[1]
    _manifests_describe_each_artifact(res)
    man = {c["name"]: c["artifact"]["manifest"] for c in res["candidates"]}
    # 30 layers x 7 linears, plus lm_head (tied to the embeddings here, so llama.cpp never asks for it)
    assert man["gguf-iq4_xs"]["imatrix"]["tensors"] == 30 * 7 + 1
    assert "IQ4_XS" in man["gguf-iq4_xs"]["tensor_types"]
    assert "emulated" in man["nvfp4-emulated"]["note"]
    assert man["w4a16-gptq-g64"]["bits_per_weight"] < man["w8a16-rtn"]["bits_per_weight"]
    assert man["w4a16-gptq-g64"]["calibration"]["samples"] == 8
    summary = (heavy_methods[2] / "summary.md").read_text()
    row = next(ln for ln in summary.splitlines() if ln.startswith("| nvfp4-emulated |"))
    assert "emulated" in row
    _planner_predicts(res, {"w8a16-rtn": "W8A16", "fp8-dynamic": "FP8"})


def test_rerun_hits_the_cache(all_methods):
    tmp = all_methods[3]
    proc, res, _ = _run(_small_plan(CORE), tmp, "again.yaml")
    assert proc.stdout.count("reused from the store") == len(CORE), proc.stdout
    assert all(c["artifact"]["reused"] and c["suites"]["wikitext2"]["reused"] for c in res["candidates"])
    first = {c["name"]: c["artifact"]["key"] for c in all_methods[1]["candidates"]}
    assert all(first[c["name"]] == c["artifact"]["key"] for c in res["candidates"])


def test_corrupt_baselines_are_refused(tmp_path):
    bad_gguf = tmp_path / "bad.gguf"
    bad_gguf.write_bytes(b"\x00" * 1024)
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"\xff" * 64)
    for model in (bad_gguf, folder):
        plan = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
        plan["gates"] = str(ROOT / "gates" / "smoke.yaml")
        plan["baseline"]["model"] = str(model)
        path = tmp_path / "p.yaml"
        path.write_text(yaml.safe_dump(plan))
        proc = run_cli("run", str(path))
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "baseline.model:" in lines[0] and "Traceback" not in proc.stderr, proc.stderr
