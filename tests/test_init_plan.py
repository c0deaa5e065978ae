"""`quantgate init` (harness/init_plan.py) and `n_gpu_layers: auto` (llama-cpp runtime,
validate, report). Fast except the one end-to-end run of a written plan (marked slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from harness import init_plan
from harness.cli import main
from harness.results import Record, SuiteResult
from harness.runtimes.llama_cpp import LlamaCppParams, _gpu_layers_of, resolve_gpu_layers
from tests.conftest import run_cli

EMBEDDED = "embedded:smollm2-135m"


def _init(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["init", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _validate(capsys, path: Path) -> tuple[int, str, str]:
    code = main(["validate", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _comment_before(text: str, name: str) -> str:
    """The comment block right above a candidate's `- name: NAME` line."""
    lines = text.splitlines()
    i = lines.index(f"  - name: {name}")
    block = []
    while lines[i - 1].lstrip().startswith("#"):
        i -= 1
        block.insert(0, lines[i].strip().lstrip("#").strip())
    return " ".join(block)


# ------------------------------------------------------------------ quantgate init

def test_init_small_budget_writes_a_partial_offload_plan_that_validates(qg_home, tmp_path, capsys):
    out = tmp_path / "small.yaml"
    code, stdout, err = _init(capsys, EMBEDDED, "--gpu-gib", "0.1", "--out", str(out))
    assert code == 0, err
    assert f"wrote {out}" in stdout
    text = out.read_text()
    plan = yaml.safe_load(text)
    names = [c["name"] for c in plan["candidates"]]
    assert names == ["q4_k_m", "iq4_xs"]  # does not fit whole: GGUF with partial offload only
    for c in plan["candidates"]:
        assert c["runtime"] == {"name": "llama-cpp", "params": {"n_gpu_layers": "auto", "gpu_budget_gib": 0.1}}
        why = _comment_before(text, c["name"])
        assert "does not fit 0.1 GiB: partial offload" in why and "layers on the GPU" in why, why
    assert plan["candidates"][1]["quantizer"]["calibration"]["source"] == "wikitext2"  # IQ4_XS: an imatrix
    assert plan["baseline"]["model"] == EMBEDDED
    assert plan["baseline"]["runtime"]["params"]["n_gpu_layers"] == "auto"
    assert [s["suite"] for s in plan["suites"]] == ["perplexity", "mmlu", "gsm8k"]
    # 135M parameters: GSM8K is measured, not gated (the baseline scores 0)
    assert {g["metric"] for g in plan["gates"]["gates"]} == {"wikitext2.ppl", "mmlu.acc"}
    assert "# GSM8K is measured, not gated" in text
    assert "# Considered and left out:" in text and "FP8 on transformers" in text
    code, stdout, err = _validate(capsys, out)
    assert code == 0, err
    assert "valid plan 'init-smollm2-135m'" in stdout


def test_init_large_budget_proposes_every_format_that_fits(qg_home, tmp_path, capsys):
    out = tmp_path / "big.yaml"
    code, _, err = _init(capsys, EMBEDDED, "--gpu-gib", "24", "--context", "8192", "--batch", "4", "--out", str(out))
    assert code == 0, err
    text = out.read_text()
    plan = yaml.safe_load(text)
    by_name = {c["name"]: c for c in plan["candidates"]}
    assert list(by_name) == ["fp8-dynamic", "gptq-w4a16", "awq-w4a16", "q8_0", "q4_k_m"]
    assert by_name["gptq-w4a16"]["quantizer"]["params"] == {"scheme": "gptq-w4a16", "group_size": 64}  # hidden 576
    assert by_name["q8_0"]["runtime"]["params"] == {"n_gpu_layers": -1}
    assert by_name["fp8-dynamic"]["runtime"]["name"] == "transformers"
    why = _comment_before(text, "gptq-w4a16")
    assert why.startswith("GPTQ W4A16 on transformers:") and "at 8192x4 fits 24 GiB" in why, why
    assert "GiB weights +" in why and "GiB KV +" in why
    assert plan["probes"]["throughput"]["batch_sizes"] == [1, 4]
    assert _validate(capsys, out)[0] == 0


def test_init_vllm_sizes_the_kv_cache_it_planned(qg_home, tmp_path, capsys):
    out = tmp_path / "vllm.yaml"
    code, _, err = _init(capsys, EMBEDDED, "--gpu-gib", "24", "--hf-runtime", "vllm", "--out", str(out))
    assert code == 0, err
    fp8 = yaml.safe_load(out.read_text())["candidates"][0]
    assert fp8["runtime"]["name"] == "vllm"
    assert fp8["runtime"]["params"]["kv_cache_gib"] == pytest.approx(0.09, abs=0.01)  # 4096 tokens of f16 KV


def test_init_preset_plans_partial_offload_on_a_real_shape(tmp_path, capsys):
    """llama-3-8b at 8192x4 on 8 GiB: nothing fits whole (KV alone is 4 GiB), so Q4_K_M and
    IQ4_XS with partial offload; the plan says the model has to be set."""
    out = tmp_path / "l3.yaml"
    code, stdout, err = _init(capsys, "llama-3-8b", "--gpu-gib", "8", "--context", "8192", "--batch", "4",
                              "--host-gib", "64", "--out", str(out))
    assert code == 0, err
    assert "no weights here" in stdout
    text = out.read_text()
    plan = yaml.safe_load(text)
    assert [c["name"] for c in plan["candidates"]] == ["q4_k_m", "iq4_xs"]
    why = _comment_before(text, "q4_k_m")
    assert "of 32 layers on the GPU" in why and "does not fit 8 GiB" in why, why
    assert plan["baseline"]["runtime"] == {"name": "transformers", "params": {"device": "cpu", "dtype": "bfloat16"}}
    assert "set this to your checkpoint folder" in text
    # 24 GiB: W4A16 and Q4_K_M fit whole at 8192x1, BF16 (15 GiB + KV) fits too
    code, _, err = _init(capsys, "llama-3-8b", "--gpu-gib", "24", "--context", "8192", "--out", str(out), "--force")
    assert code == 0, err
    plan = yaml.safe_load(out.read_text())
    assert [c["name"] for c in plan["candidates"]] == ["fp8-dynamic", "gptq-w4a16", "awq-w4a16", "q8_0", "q4_k_m"]
    assert "gsm8k.exact_match_flexible" in {g["metric"] for g in plan["gates"]["gates"]}  # 8 B parameters


def test_init_bad_input_is_one_line(tmp_path, capsys):
    empty = tmp_path / "no-config"
    empty.mkdir()
    code, _, err = _init(capsys, str(empty), "--gpu-gib", "8", "--out", str(tmp_path / "x.yaml"))
    assert code == 2
    assert "no config.json" in _one_error_line(err)
    code, _, err = _init(capsys, "llama-3-8b", "--gpu-gib", "0", "--out", str(tmp_path / "x.yaml"))
    assert code == 2 and "must be more than 0 GiB" in _one_error_line(err)
    # no candidate fits: 8 GiB of GPU and 2 GiB of host memory for a 70B model
    code, _, err = _init(capsys, "llama-3-70b", "--gpu-gib", "8", "--host-gib", "2", "--out", str(tmp_path / "x.yaml"))
    assert code == 2
    line = _one_error_line(err)
    assert "no candidate fits 8 GiB of GPU memory and 2.00 GiB of host memory" in line and "IQ4_XS" in line, line
    assert not (tmp_path / "x.yaml").exists()
    (tmp_path / "x.yaml").write_text("keep me")
    code, _, err = _init(capsys, "llama-3-8b", "--gpu-gib", "24", "--out", str(tmp_path / "x.yaml"))
    assert code == 2 and "exists" in _one_error_line(err)
    assert (tmp_path / "x.yaml").read_text() == "keep me"


def test_rendered_yaml_reads_back_as_the_plan(tmp_path):
    p = init_plan.build("llama-2-13b", 12.0, context=4096, batch=2, host_gib=64)
    assert yaml.safe_load(init_plan.render(p)) == p.data()
    assert init_plan._scalar("embedded:x") == '"embedded:x"' and init_plan._scalar("auto") == "auto"
    assert init_plan._scalar("yes") == '"yes"' and init_plan._scalar(0.5) == "0.5" and init_plan._scalar(24.0) == "24"


# ------------------------------------------------------------------ n_gpu_layers: auto

def test_auto_needs_a_budget(tmp_path, capsys):
    plan = tmp_path / "auto.yaml"
    plan.write_text(yaml.safe_dump({
        "name": "auto", "baseline": {"model": "fake:tiny", "runtime": {"name": "fake"}},
        "candidates": [{"name": "q4", "quantizer": {"method": "gguf", "params": {"type": "Q4_K_M"}},
                        "runtime": {"name": "llama-cpp", "params": {"n_gpu_layers": "auto"}}}],
        "suites": [{"suite": "perplexity"}], "gates": [{"name": "s", "kind": "max_value", "metric": "size.gib", "max": 1}],
        "probes": {"size": {}}}))
    code, _, err = _validate(capsys, plan)
    assert code == 2
    lines = [ln for ln in err.splitlines() if "n_gpu_layers" in ln]
    assert len(lines) == 1 and "candidates[0].runtime.params.n_gpu_layers: 'auto' needs a GPU budget" in lines[0]
    assert "gpu_budget_gib" in lines[0]
    with pytest.raises(ValueError):
        LlamaCppParams.model_validate({"n_gpu_layers": "all"})
    assert LlamaCppParams.model_validate({"n_gpu_layers": "auto", "gpu_budget_gib": 2}).n_gpu_layers == "auto"
    assert LlamaCppParams.model_validate({"n_gpu_layers": 12}).n_gpu_layers == 12


def test_llama_cpp_layer_count_semantics():
    # the vendored llama.cpp: -ngl k puts the output layer and the last k - 1 layers on the GPU
    assert _gpu_layers_of(0, 30) == (0, False)
    assert _gpu_layers_of(1, 30) == (0, True)
    assert _gpu_layers_of(21, 30) == (20, True)
    assert _gpu_layers_of(31, 30) == (30, True) == _gpu_layers_of(-1, 30) == _gpu_layers_of(99, 30)


def test_auto_resolves_with_the_planner(qg_home):
    from harness import planner
    from harness.baseline import source_file

    gguf = source_file(EMBEDDED)  # SmolLM2-135M Q4_1, 30 layers
    params = LlamaCppParams.model_validate({"n_gpu_layers": "auto", "gpu_budget_gib": 0.4})
    off = planner.plan_memory(gguf, None, context=512, budget_gib=0.4, runtime="llama-cpp")["offload"]
    on_gpu = resolve_gpu_layers(gguf, params, 512, gpu_offload=True)
    assert on_gpu["n_gpu_layers_resolved"] == off["n_gpu_layers"] and on_gpu["gpu_layers"] == off["gpu_layers"]
    assert 0 < on_gpu["gpu_layers"] < 30 and on_gpu["n_layers"] == 30, on_gpu  # a partial offload
    assert f"{off['gpu_layers']} of 30 layers" in on_gpu["offload_note"]
    cpu = resolve_gpu_layers(gguf, params, 512, gpu_offload=False)
    assert cpu["n_gpu_layers_resolved"] == 0 and cpu["gpu_layers"] == 0
    assert "no GPU offload" in cpu["offload_note"] and cpu["planned_gpu_layers"] == off["gpu_layers"]
    # a quantized KV cache leaves room for more layers (8 -> 17 of 30 at 8192 tokens in 0.5 GiB)
    f16 = LlamaCppParams.model_validate({"n_gpu_layers": "auto", "gpu_budget_gib": 0.5})
    q4 = f16.model_copy(update={"type_k": "q4_0", "type_v": "q4_0"})
    assert resolve_gpu_layers(gguf, q4, 8192, True)["gpu_layers"] > resolve_gpu_layers(gguf, f16, 8192, True)["gpu_layers"]
    assert resolve_gpu_layers(gguf, LlamaCppParams(n_gpu_layers=-1), 512, True) == {"n_gpu_layers_resolved": -1}
    assert resolve_gpu_layers(gguf, LlamaCppParams(n_gpu_layers=-1), 512, False) == {"n_gpu_layers_resolved": 0}
    with pytest.raises(ValueError, match="gpu_budget_gib"):
        resolve_gpu_layers(gguf, LlamaCppParams(n_gpu_layers="auto"), 512, True)


def test_report_names_the_offload():
    from harness.report.markdown import offload_line, offload_lines

    info = {"n_gpu_layers_requested": "auto", "n_gpu_layers": "auto", "n_gpu_layers_resolved": 21, "gpu_layers": 20,
            "n_layers": 30, "gpu_budget_gib": 1.5, "gpu_offload_supported": True}
    rec = Record(name="q4_k_m", role="candidate", quantizer={"method": "gguf", "params": {"type": "Q4_K_M"}},
                 suites={"wikitext2": SuiteResult(records=[], result_key="r", load_info=info)})
    assert offload_line(rec) == "- q4_k_m: Q4_K_M with 20 of 30 layers on GPU (auto, budget 1.5 GiB)"
    cpu = {**info, "n_gpu_layers_resolved": 0, "gpu_layers": 0, "gpu_offload_supported": False, "planned_gpu_layers": 20}
    rec_cpu = Record(name="f16", role="baseline", probe_notes={"session_info": cpu})
    assert offload_line(rec_cpu) == ("- f16: the baseline with 0 of 30 layers on GPU (auto, budget 1.5 GiB; CPU-only "
                                     "llama.cpp build: the planner would put 20 layers on a GPU)")
    plain = Record(name="cpu", role="candidate", suites={"w": SuiteResult(records=[], result_key="r", load_info={
        "n_gpu_layers": 0, "n_gpu_layers_resolved": 0})})
    assert offload_line(plain) is None
    assert offload_lines([plain]) == []
    assert offload_lines([rec])[1] == "## GPU offload (llama.cpp)"


# ------------------------------------------------------------------ a written plan, run

@pytest.mark.heavy  # 4-7 min on 2 cores (the F16 and BF16 baselines, an importance matrix): nox -s heavy
def test_written_plan_runs_end_to_end(qg_home, tmp_path):
    """`init --gpu-gib 0.1 --quick` on the embedded model, run as written on this machine: every
    candidate is GGUF with n_gpu_layers: auto, which a CPU-only llama.cpp resolves to 0 (a CUDA
    build: the planner's count for 0.1 GiB, also 0 here: the runtime reserve alone is 0.35 GiB)."""
    plan = tmp_path / "init.yaml"
    r = run_cli("init", EMBEDDED, "--gpu-gib", "0.1", "--quick", "--out", str(plan))
    assert r.returncode == 0, r.stderr
    reports = tmp_path / "reports"
    r = run_cli("run", str(plan), "--no-tracking", "--reports-dir", str(reports), timeout=1200)
    assert r.returncode in (0, 1), r.stdout[-3000:] + r.stderr[-3000:]
    run = next(reports.iterdir())
    results = json.loads((run / "results.json").read_text())
    records = [results["baseline"], *results["candidates"]]
    assert [c["name"] for c in records] == ["f16", "q4_k_m", "iq4_xs"]
    for rec in records:
        assert rec["status"] == "ok", rec.get("error")
        info = rec["suites"]["wikitext2"]["load_info"]
        assert info["n_gpu_layers_requested"] == "auto" and info["gpu_budget_gib"] == 0.1
        assert info["n_gpu_layers_resolved"] == 0 and info["n_layers"] == 30
        assert set(rec["suites"]) == {"wikitext2", "mmlu", "gsm8k"}
    summary = (run / "summary.md").read_text()
    assert "## GPU offload (llama.cpp)" in summary
    assert "- q4_k_m: Q4_K_M with 0 of 30 layers on GPU (auto, budget 0.1 GiB" in summary


def _hf_folder(root: Path, architectures: list[str] | None) -> Path:
    """A checkpoint folder the planner and validate read: a llama config.json and a safetensors
    file whose header is whole (no tensor is ever loaded)."""
    import struct

    folder = root / "tiny-llama"
    folder.mkdir()
    config = {"model_type": "llama", "num_hidden_layers": 4, "hidden_size": 256, "intermediate_size": 768,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1024, "tie_word_embeddings": True}
    if architectures:
        config["architectures"] = architectures
    (folder / "config.json").write_text(json.dumps(config))
    header = json.dumps({"__metadata__": {"format": "pt"}}).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    return folder


def test_init_hf_checkpoint(tmp_path, capsys, monkeypatch):
    """An HF folder: BF16 baseline on transformers; GGUF candidates when llama.cpp's converter
    takes its architecture, left out (with the converter's reason) when it does not."""
    import harness.converter

    folder = _hf_folder(tmp_path, ["LlamaForCausalLM"])
    monkeypatch.setattr(harness.converter, "checkpoint_problem", lambda *a, **k: None)  # no sdist needed here
    out = tmp_path / "hf.yaml"
    code, _, err = _init(capsys, str(folder), "--gpu-gib", "8", "--out", str(out))
    assert code == 0, err
    plan = yaml.safe_load(out.read_text())
    assert plan["baseline"]["model"] == str(folder.resolve())
    assert plan["baseline"]["runtime"] == {"name": "transformers", "params": {"device": "cuda", "dtype": "bfloat16"}}
    assert [c["name"] for c in plan["candidates"]] == ["fp8-dynamic", "gptq-w4a16", "awq-w4a16", "q8_0", "q4_k_m"]
    assert plan["candidates"][1]["quantizer"]["params"]["group_size"] == 128
    monkeypatch.undo()
    # no 'architectures' in config.json: the converter refuses it, so no GGUF candidate
    (tmp_path / "b").mkdir()
    bare = _hf_folder(tmp_path / "b", None)
    code, _, err = _init(capsys, str(bare), "--gpu-gib", "8", "--out", str(out), "--force")
    assert code == 0, err
    text = out.read_text()
    assert [c["name"] for c in yaml.safe_load(text)["candidates"]] == ["fp8-dynamic", "gptq-w4a16", "awq-w4a16"]
    assert "GGUF candidates:" in text and "architectures" in text
