"""Every quantizer method on the real embedded model, scored on the baseline's windows.

The plan is configs/all-methods.yaml cut down for test time: one candidate per code path
(GGUF legacy, K- and i-quant with an importance matrix; llm-compressor RTN, GPTQ, AWQ,
SmoothQuant, FP8, FP4), 8 windows of 512 tokens and small calibration sets. Every GGUF type
and scheme, at full size, runs in `nox -s bench` (benchmarks/quantizers.py).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

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


TEST_SUBSET = ["gguf-q8_0", "gguf-q4_k_m", "gguf-q4_0", "gguf-q2_k", "gguf-iq4_xs", "w8a16-rtn",
               "w4a16-rtn-g64", "w4a16-gptq-g64", "w4a16-awq-g64", "fp8-dynamic", "w8a8-int8-smoothquant",
               "nvfp4-emulated"]


@pytest.fixture(scope="module")
def all_methods(qg_home, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("all-methods")
    proc, res, run_dir = _run(_small_plan(TEST_SUBSET), tmp)
    return proc, res, run_dir, tmp


def _ppl(res) -> dict[str, float]:
    return {c["name"]: c["metrics"].get("wikitext2.ppl", {}).get("value") for c in [res["baseline"], *res["candidates"]]}


def test_every_method_builds_loads_and_scores(all_methods):
    proc, res, _, _ = all_methods
    errors = {c["name"]: c["error"] for c in res["candidates"] if c["status"] != "ok"}
    assert not errors, errors
    ppl = _ppl(res)
    assert all(v is not None and math.isfinite(v) for v in ppl.values()), ppl
    base = res["baseline"]["suites"]["wikitext2"]["records"]
    for c in res["candidates"]:
        assert [r["prompt_hash"] for r in c["suites"]["wikitext2"]["records"]] == [r["prompt_hash"] for r in base]
    runtimes = {c["name"]: c["runtime"]["name"] for c in res["candidates"]}
    assert runtimes["gguf-iq4_xs"] == "llama-cpp" and runtimes["w4a16-gptq-g64"] == "transformers"


def test_eight_bit_weight_only_within_two_percent(all_methods):
    ppl = _ppl(all_methods[1])
    for name in ("gguf-q8_0", "w8a16-rtn"):
        assert abs(ppl[name] / ppl["f16"] - 1) < 0.02, (name, ppl[name], ppl["f16"])


def test_four_bit_worse_than_eight_bit_sibling(all_methods):
    ppl = _ppl(all_methods[1])
    for four in ("gguf-q4_k_m", "gguf-q4_0", "gguf-iq4_xs"):
        assert ppl[four] > ppl["gguf-q8_0"], (four, ppl)
    for four in ("w4a16-rtn-g64", "w4a16-gptq-g64", "w4a16-awq-g64"):
        assert ppl[four] > ppl["w8a16-rtn"], (four, ppl)
    assert ppl["gguf-q2_k"] > ppl["gguf-q8_0"]


def test_gptq_and_awq_no_worse_than_rtn(all_methods):
    ppl = _ppl(all_methods[1])
    assert ppl["w4a16-gptq-g64"] <= ppl["w4a16-rtn-g64"], ppl
    assert ppl["w4a16-awq-g64"] <= ppl["w4a16-rtn-g64"], ppl


def test_manifests_describe_each_artifact(all_methods):
    res = all_methods[1]
    for c in res["candidates"]:
        man = c["artifact"]["manifest"]
        assert man["method"] == c["quantizer"]["method"]
        assert man["size_bytes"] > 10_000_000 and man["wall_seconds"] > 0 and man["peak_rss_gib"] > 0
        assert 2.0 < man["bits_per_weight"] < 12.0, (c["name"], man["bits_per_weight"])
        assert man["key_inputs"]["versions"]
        if c["quantizer"].get("calibration"):
            assert len(man["key_inputs"]["calibration"]["text_sha256"]) == 64
    man = {c["name"]: c["artifact"]["manifest"] for c in res["candidates"]}
    # 30 layers x 7 linears, plus lm_head (tied to the embeddings here, so llama.cpp never asks for it)
    assert man["gguf-iq4_xs"]["imatrix"]["tensors"] == 30 * 7 + 1
    assert "IQ4_XS" in man["gguf-iq4_xs"]["tensor_types"]
    assert "emulated" in man["nvfp4-emulated"]["note"]
    assert man["w4a16-gptq-g64"]["bits_per_weight"] < man["w8a16-rtn"]["bits_per_weight"]


def test_report_marks_emulated_fp4(all_methods):
    summary = (all_methods[2] / "summary.md").read_text()
    row = next(ln for ln in summary.splitlines() if ln.startswith("| nvfp4-emulated |"))
    assert "emulated" in row


def test_planner_predicts_each_artifact(all_methods):
    """The memory-fit planner, from the config and the recipe alone, against the real files."""
    from harness import planner

    res = all_methods[1]
    for c in res["candidates"]:
        real = planner.plan_memory(c["artifact"]["path"], None)["weights"]["bytes"]  # the file's tensors
        assert c["planner"]["weights_gib"] * 2**30 == pytest.approx(real, rel=1e-3), c["name"]  # GiB to 4 places
    preds = {"w4a16-gptq-g64": "W4A16", "fp8-dynamic": "FP8", "w8a16-rtn": "W8A16"}
    for name, quant in preds.items():
        c = next(c for c in res["candidates"] if c["name"] == name)
        real = planner.plan_memory(c["artifact"]["path"], None)["weights"]["bytes"]
        predicted = planner.plan_memory("embedded:smollm2-135m", quant, group_size=64)["weights"]["bytes"]
        assert predicted == pytest.approx(real, rel=0.01), (name, predicted, real)


def test_rerun_hits_the_cache(all_methods):
    tmp = all_methods[3]
    proc, res, _ = _run(_small_plan(["gguf-iq4_xs", "w4a16-gptq-g64"]), tmp, "again.yaml")
    assert proc.stdout.count("reused from the store") == 2, proc.stdout
    assert all(c["artifact"]["reused"] and c["suites"]["wikitext2"]["reused"] for c in res["candidates"])
    first = {c["name"]: c["artifact"]["key"] for c in all_methods[1]["candidates"]}
    assert all(first[c["name"]] == c["artifact"]["key"] for c in res["candidates"])


def test_killed_quantization_is_not_reused(qg_home, tmp_path):
    """SIGKILL the run while GPTQ is quantizing: nothing half-made is taken for an artifact."""
    plan = _small_plan(["w4a16-gptq-g64"])
    plan["candidates"][0]["quantizer"]["calibration"].update(seed=12345, samples=16)  # a new key: must build
    path = tmp_path / "kill.yaml"
    path.write_text(yaml.safe_dump(plan))
    before = {p.parent.name for p in (qg_home / "artifacts").glob("*/manifest.json")}
    proc = subprocess.Popen([sys.executable, "-m", "harness", "run", str(path), "--reports-dir", str(tmp_path / "r"),
                             "--no-tracking"], cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 600
    for line in proc.stdout:
        if "producing artifact" in line:
            break
        assert time.time() < deadline
    # the worker has made its scratch folder; GPTQ on 16 samples runs for tens of seconds
    while not any((qg_home / "artifacts").glob(".tmp-*")) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    after = {p.parent.name for p in (qg_home / "artifacts").glob("*/manifest.json")}
    assert after == before
    assert not [p for p in (qg_home / "artifacts").iterdir() if not p.name.startswith(".tmp-") and p.name not in after]
    proc2, res, _ = _run(plan, tmp_path, "kill2.yaml")
    assert res["candidates"][0]["status"] == "ok", res["candidates"][0]["error"]
    assert res["candidates"][0]["artifact"]["reused"] is False
    assert "reused from the store" not in proc2.stdout


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
