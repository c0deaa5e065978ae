"""harness.probes: statistics, metric names, the speed probes on a fake session, the memory
sampler on real child processes, GPU parts (marked ``gpu``: skipped without one) and one slow
run of the probes on the embedded GGUF."""

from __future__ import annotations

import json
import os
import statistics
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from harness.probes import REGISTRY, ProbeContext
from harness.probes import gpu as G
from harness.probes.latency import LatencyParams, LatencyProbe
from harness.probes.memory import MemoryProbe, TreeSampler
from harness.probes.roofline import (
    RooflineParams,
    RooflineProbe,
    gguf_weight_bytes,
    safetensors_weight_bytes,
)
from harness.probes.throughput import ThroughputParams, ThroughputProbe
from harness.probes.timing import check_name, percentile, shape_key, summarize, with_stats

MIB = 2**20


# --------------------------------------------------------------- statistics
def test_summarize_known_values():
    s = summarize([1, 2, 3, 4, 10])
    assert s["median"] == 3 and s["min"] == 1 and s["max"] == 10 and s["mean"] == 4
    # sample standard deviation (n - 1), as llama-bench reports ±: deviations 9+4+1+0+36 = 50
    assert s["std"] == pytest.approx((50 / 4) ** 0.5)
    assert s["std"] == pytest.approx(statistics.stdev([1, 2, 3, 4, 10]))
    assert summarize([7.5]) == {"median": 7.5, "min": 7.5, "max": 7.5, "std": 0.0, "mean": 7.5}
    assert summarize([1, 2, 3, 4])["median"] == 2.5
    with pytest.raises(ValueError):
        summarize([])
    with pytest.raises(ValueError):
        summarize([1.0, float("nan")])


def test_percentile_matches_numpy():
    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 20, 101):
        v = rng.lognormal(size=n).tolist()
        for q in (0, 5, 50, 95, 99, 100):
            assert percentile(v, q) == pytest.approx(float(np.percentile(v, q)))
    assert percentile(range(1, 11), 50) == 5.5
    assert percentile(range(1, 11), 95) == pytest.approx(9.55)
    with pytest.raises(ValueError):
        percentile([1], 101)


# -------------------------------------------------------------- metric names
def test_metric_names_flat_and_mlflow_safe():
    assert shape_key("decode_tps", 512, 1) == "decode_tps_p512_b1"
    names = with_stats("decode_tps_p512_b1", [10, 12, 11])
    assert list(names) == ["decode_tps_p512_b1", "decode_tps_p512_b1_min", "decode_tps_p512_b1_max",
                           "decode_tps_p512_b1_std", "decode_tps_p512_b1_mean"]
    assert names["decode_tps_p512_b1"] == 11 and names["decode_tps_p512_b1_min"] == 10
    for bad in ("a b", "x/y", "p=1", "ü"):
        with pytest.raises(ValueError):
            check_name(bad)

    probe = ThroughputProbe()
    params = ThroughputParams(prompt_tokens=[2048, 128, 512, 512], batch_sizes=[8, 1])
    assert params.prompt_tokens == [128, 512, 2048] and params.batch_sizes == [1, 8]
    got = probe.metric_names(params)
    assert len(got) == len(set(got)) == 3 * 2 * 2 * 5
    assert "throughput.decode_tps_p512_b1" in {f"throughput.{n}" for n in got}
    assert "prefill_tps_p2048_b8_std" in got
    # the class-level names are those of the default parameters (what validate lists today)
    assert sorted(ThroughputProbe.metrics) == sorted(probe.metric_names(ThroughputParams()))
    assert LatencyProbe.metric_names(LatencyParams(concurrency=4))[0] == "ttft_seconds_p50_c4"
    assert sorted(LatencyProbe.metrics) == sorted(LatencyProbe.metric_names(LatencyParams()))
    assert MemoryProbe.metric_names(MemoryProbe.Params()) == list(MemoryProbe.metrics)

    every = [f"{p}.{m}" for p in REGISTRY.names() for m in REGISTRY.get(p).metrics]
    try:  # MLflow's own check, where it is installed
        from mlflow.utils.validation import _validate_metric_name
    except ImportError:
        _validate_metric_name = None
    for name in every:
        check_name(name)
        if _validate_metric_name:
            _validate_metric_name(name)


def test_registry_keeps_decode_and_adds_the_new_probes():
    assert {"decode", "throughput", "latency", "memory", "roofline", "size", "load"} <= set(REGISTRY.names())
    decode = REGISTRY.get("decode")
    p = decode.Params.model_validate({"prompt_tokens": 64, "gen_tokens": 64, "repetitions": 3})  # smoke.yaml
    assert decode().context_length(p) == 129
    assert {"tokens_per_s", "tokens_per_s_min", "tokens_per_s_max", "prefill_tokens_per_s"} <= set(decode.metrics)
    with pytest.raises(ValueError):
        ThroughputParams(batch_sizes=[0])


# -------------------------------------------------------------- fake session
class FakeSession:
    """Timings from a formula: prefill 1 ms a token per sequence-batch, decode 10 ms a step,
    whatever the batch (so batch B decodes B times the tokens per second)."""

    def __init__(self, batch: bool = False, timed_requests: bool = False):
        self.calls = []
        if batch:
            self.greedy_decode_batch = self._batch
        if timed_requests:
            self.timed_requests = self._timed

    def tokenize(self, text):
        return list(range(5, 5 + len(text.split())))

    def greedy_decode(self, prompt, n):
        self.calls.append(("b1", len(prompt), n))
        return {"prefill_seconds": len(prompt) * 1e-3, "decode_seconds": n * 1e-2}

    def _batch(self, prompts, n):
        assert len({len(p) for p in prompts}) == 1
        assert len({tuple(p) for p in prompts}) == len(prompts), "sequences of a batch must differ"
        self.calls.append((f"b{len(prompts)}", len(prompts[0]), n))
        return {"prefill_seconds": len(prompts[0]) * 1e-3, "decode_seconds": n * 1e-2}

    def _timed(self, prompts, n, concurrency):
        return [{"ttft_seconds": 0.1 * (i + 1), "e2e_seconds": 0.1 * (i + 1) + n * 0.01}
                for i in range(len(prompts))]

    def info(self):
        return {}


def test_throughput_probe_figures_and_skips():
    probe = ThroughputProbe()
    params = ThroughputParams(prompt_tokens=[64, 16], batch_sizes=[1, 4], gen_tokens=20, repetitions=3, warmup=2)
    ctx = ProbeContext(artifact_path=Path("."), session=FakeSession())
    out = probe.measure(ctx, params)
    assert out["decode_tps_p64_b1"] == pytest.approx(100.0)
    assert out["prefill_tps_p16_b1"] == pytest.approx(1000.0)
    assert out["decode_tps_p64_b1_std"] == 0.0
    assert not any(k.endswith("_b4") or "_b4_" in k for k in out)  # no batch hook: skipped
    assert ctx.notes["throughput"]["skipped_shapes"] == ["p16_b4", "p64_b4"]
    assert "machine" in ctx.notes and ctx.notes["machine"]["cpu"]
    # warm-ups are the full shape (untimed), then the timed repetitions
    assert [c for c in ctx.session.calls if c[1] == 64] == [("b1", 64, 20)] * 5

    ctx = ProbeContext(artifact_path=Path("."), session=FakeSession(batch=True))
    out = probe.measure(ctx, params)
    assert out["decode_tps_p64_b4"] == pytest.approx(400.0)
    assert out["prefill_tps_p64_b4"] == pytest.approx(4000.0)
    assert set(out) == set(probe.metric_names(params))


def test_latency_probe():
    probe = LatencyProbe()
    ctx = ProbeContext(artifact_path=Path("."), session=FakeSession())
    out = probe.measure(ctx, LatencyParams(prompt_tokens=40, gen_tokens=10, requests=5))
    assert out["ttft_seconds_p50_c1"] == pytest.approx(0.04)
    assert out["e2e_seconds_p95_c1"] == pytest.approx(0.14)
    assert out["itl_seconds_p50_c1"] == pytest.approx(0.01)
    assert len(ctx.notes["latency"]["timings"]) == 5
    # concurrency > 1: only with the session hook
    assert probe.measure(ctx, LatencyParams(concurrency=4, requests=3)) == {}
    assert "timed_requests" in ctx.notes["latency"]["skipped"]
    ctx = ProbeContext(artifact_path=Path("."), session=FakeSession(timed_requests=True))
    out = probe.measure(ctx, LatencyParams(concurrency=4, requests=3, gen_tokens=10))
    assert out["ttft_seconds_p50_c4"] == pytest.approx(0.2)
    assert out["ttft_seconds_max_c4"] == pytest.approx(0.3)


def _write_gguf(path: Path, tied: bool) -> int:
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(2)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_embedding_length(32)
    tensors = {"token_embd.weight": np.ones((100, 32), np.float16),  # 100 rows of 32
               "blk.0.attn_q.weight": np.ones((32, 32), np.float16),
               "blk.0.attn_norm.weight": np.ones(32, np.float32)}
    if not tied:
        tensors["output.weight"] = np.ones((100, 32), np.float16)
    for name, t in tensors.items():
        w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return sum(t.nbytes for t in tensors.values())


def test_weight_bytes_gguf_and_safetensors(tmp_path):
    total = _write_gguf(tmp_path / "tied.gguf", tied=True)
    r = gguf_weight_bytes(tmp_path / "tied.gguf")
    assert r["tied_embeddings"] and r["weight_bytes_per_token"] == total
    total = _write_gguf(tmp_path / "untied.gguf", tied=False)
    r = gguf_weight_bytes(tmp_path / "untied.gguf")
    assert not r["tied_embeddings"]
    assert r["weight_bytes_per_token"] == total - 100 * 32 * 2 + 32 * 2  # the embedding: one row

    folder = tmp_path / "hf"
    folder.mkdir()
    header = {"model.embed_tokens.weight": {"dtype": "BF16", "shape": [10, 4], "data_offsets": [0, 80]},
              "lm_head.weight": {"dtype": "BF16", "shape": [10, 4], "data_offsets": [80, 160]},
              "model.layers.0.mlp.up_proj.weight": {"dtype": "BF16", "shape": [4, 4], "data_offsets": [160, 192]}}
    raw = json.dumps(header).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(192))
    (folder / "config.json").write_text(json.dumps({"tie_word_embeddings": False, "vocab_size": 10}))
    assert safetensors_weight_bytes(folder)["weight_bytes_per_token"] == 192 - 80 + 8


def test_roofline_from_throughput_runs(tmp_path):
    _write_gguf(tmp_path / "m.gguf", tied=True)
    ctx = ProbeContext(artifact_path=tmp_path / "m.gguf", session=FakeSession())
    ThroughputProbe().measure(ctx, ThroughputParams(prompt_tokens=[64], gen_tokens=10, repetitions=3))
    out = RooflineProbe().measure(ctx, RooflineParams(prompt_tokens=64, bandwidth_gbps=1.0, measure_bandwidth=False))
    wb = out["weight_bytes_per_token"]
    assert out["decode_tps"] == pytest.approx(100.0)
    assert out["achieved_gbps"] == pytest.approx(100.0 * wb / 1e9)
    assert out["pct_of_peak"] == pytest.approx(100 * 100.0 * wb / 1e9)
    assert out["kv_bytes_per_token"] == 2 * 2 * 2 * 8 * 2 * (64 + 128 // 2)  # layers·K,V·kv heads·dim·f16
    assert ctx.notes["roofline"]["decode_tps_source"].startswith("throughput probe")
    assert "bandwidth_table_gbps" not in out  # a CPU session has no datasheet figure


def test_bandwidth_table_by_name():
    assert G.table_bandwidth("NVIDIA H100 80GB HBM3")[0] == 3.35e12
    assert G.table_bandwidth("NVIDIA H100 PCIe")[0] == 2.0e12
    assert G.table_bandwidth("NVIDIA H100 NVL")[0] == 3.9e12
    assert G.table_bandwidth("NVIDIA H200")[0] == 4.8e12
    assert G.table_bandwidth("NVIDIA GeForce GTX 1080") is None
    assert G.table_bandwidth(None) is None


# ------------------------------------------------------------- memory sampler
CHILD = textwrap.dedent("""
    import subprocess, sys, time
    mib = int(sys.argv[1])
    kid = None
    if len(sys.argv) > 2:  # a grandchild of its own
        kid = subprocess.Popen([sys.executable, __file__, sys.argv[2]], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
        assert kid.stdout.readline().strip() == "ready"
    block = b"\\x01" * (mib << 20)  # written, so resident
    print("ready", flush=True)
    sys.stdin.readline()
    if kid:
        kid.kill()
        kid.wait()
""")


def test_sampler_sees_live_children_and_grandchildren(tmp_path):
    script = tmp_path / "alloc.py"
    script.write_text(CHILD)
    sampler = TreeSampler(interval=0.02, rescan=0.0, gpu=False).start()
    child = subprocess.Popen([sys.executable, str(script), "120", "200"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 10  # a loaded machine can take a while to show the pages
        while True:
            sampler.sample()
            if sampler.peak_children >= 310 * MIB or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert sampler.peak_children >= 310 * MIB  # 120 + 200 MiB of written pages
        # (no upper bound on all children: in a full test session other live children, e.g. the
        # session's MLflow server, are part of the tree too)
        assert sampler.peak_per_pid[child.pid] >= 120 * MIB
        # attribution per process, read once the child runs its own program (a sample taken
        # between fork and exec would show the parent's pages: the sampler skips those)
        later = TreeSampler(interval=1.0, rescan=0.0, gpu=False)
        later.sample()
        assert 120 * MIB <= later.peak_per_pid[child.pid] < 120 * MIB + 80 * MIB  # + one interpreter
        assert sampler.peak_tree >= sampler.peak_children + sampler.peak_self * 0.5
    finally:
        child.stdin.write("\n")
        child.stdin.flush()
        try:
            child.wait(timeout=30)
        finally:
            child.kill()
            sampler.stop()
    assert not sampler.running()
    peak = sampler.peak_children
    sampler.sample()  # the children are gone: the peak stays
    assert sampler.peak_children == peak


def test_memory_probe_reports_the_tree(tmp_path):
    script = tmp_path / "alloc.py"
    script.write_text(CHILD)
    probe = MemoryProbe()  # starts the process-wide sampler
    child = subprocess.Popen([sys.executable, str(script), "150"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        time.sleep(1.3)  # the sampler's rescan period (1 s)
        ctx = ProbeContext(artifact_path=tmp_path)
        out = probe.measure(ctx, probe.Params())
    finally:
        child.stdin.write("\n")
        child.stdin.flush()
        child.wait(timeout=30)
    assert out["peak_rss_children_gib"] >= 150 / 1024
    assert out["peak_rss_gib"] >= out["peak_rss_tree_gib"] >= out["peak_rss_self_gib"]
    assert out["peak_rss_tree_gib"] >= out["peak_rss_children_gib"]
    assert ctx.notes["memory"]["samples"] > 0
    if G.nvml() is None:  # no GPU here: GPU figures are left out, not zero
        assert not any("vram" in k for k in out)
    if G.torch_cuda() is None:
        assert "torch_max_reserved_gib" not in out


def test_gpu_helpers_without_a_gpu():
    if G.nvml() is not None:
        pytest.skip("a GPU is visible")
    assert G.nvml_devices() == [] and G.nvml_process_vram({os.getpid()}) == {}
    assert G.nvml_device_used() is None
    info = G.machine_info()
    assert info["gpu"] is None or info["gpu"]["torch"] is not None
    assert "psutil" in info["packages"]


# ---------------------------------------------------------------------- GPU
def _cuda_torch():
    try:
        import torch
    except ImportError:
        pytest.skip("torch is not installed")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    return torch


@pytest.mark.gpu
def test_gpu_torch_and_nvml_memory():
    torch = _cuda_torch()
    x = torch.empty(512 * MIB, dtype=torch.uint8, device="cuda").fill_(1)
    torch.cuda.synchronize()
    peaks = __import__("harness.probes.memory", fromlist=["torch_peaks"]).torch_peaks()
    assert peaks["torch_max_reserved_gib"] >= peaks["torch_max_allocated_gib"] >= 0.5
    if G.nvml() is None:
        pytest.skip("nvidia-ml-py is not installed")
    s = TreeSampler(gpu=True)
    s.sample()
    assert s.peak_device_used is not None and s.peak_device_used >= 512 * MIB
    if s.peak_vram_tree is None:
        pytest.skip("NVML reports no per-process GPU memory on this driver")
    assert s.peak_vram_per_pid[os.getpid()] >= 512 * MIB
    del x


@pytest.mark.gpu
def test_gpu_bandwidth_and_machine_info():
    torch = _cuda_torch()
    torch.cuda.init()
    bw = G.measure_cuda_bandwidth(torch, size_bytes=256 * MIB, reps=5)
    assert 1e11 < bw < 2e13
    info = G.machine_info()
    assert info["gpu"]["torch"]["name"] and info["gpu"]["torch"]["torch_cuda"]
    name = G.gpu_name()
    print(name, f"{bw / 1e9:.0f} GB/s measured", G.table_bandwidth(name))


# ----------------------------------------------------------------- slow: real
def test_bench_probe_names_and_figures_as_llama_bench():
    from harness.probes.bench import BenchParams, BenchProbe

    params = BenchParams(n_prompt=[64], n_gen=[20], n_depth=[0, 32], repetitions=3, warmup=1)
    names = BenchProbe.metric_names(params)
    assert names == ["pp64", "pp64_std", "tg20", "tg20_std", "pp64@d32", "pp64@d32_std", "tg20@d32", "tg20@d32_std"]
    from harness.tracking import _metric_key

    assert _metric_key("bench.tg20@d32") == "bench.tg20_d32"  # MLflow refuses '@'
    assert BenchProbe().context_length(params) == 32 + 64 + 1

    session = FakeSession()  # prefill 1 ms a token, decode 10 ms a step; no timed_prefill
    ctx = ProbeContext(artifact_path=Path("."), session=session)
    out = BenchProbe().measure(ctx, params)
    assert out["pp64"] == pytest.approx(1000.0) and out["pp64_std"] == 0
    assert out["tg20"] == pytest.approx(100.0) and out["tg20@d32"] == pytest.approx(100.0)
    assert "pp64@d32" not in out and ctx.notes["bench"]["skipped"] == ["pp64@d32"]
    # tg at depth D decodes after a D-token prompt; at depth 0 after one token
    assert ("b1", 1, 20) in session.calls and ("b1", 32, 20) in session.calls
    assert len([c for c in session.calls if c == ("b1", 1, 20)]) == 4  # 1 warm-up + 3 timed

    session.timed_prefill = lambda context, prompt: 2e-3 * len(prompt)  # slower after a context
    out = BenchProbe().measure(ProbeContext(artifact_path=Path("."), session=session), params)
    assert out["pp64@d32"] == pytest.approx(500.0)


@pytest.mark.slow
def test_probes_on_embedded_gguf(qg_home):
    """The probe worker (spawned, as the pipeline runs it) on the embedded F16 GGUF."""
    from harness import baseline
    from harness.config import EMBEDDED_MODEL
    from harness.isolate import run_isolated
    from harness.probes.runner import probe_worker

    path = baseline.derive(EMBEDDED_MODEL, "gguf", log=lambda m: None)
    probes = {"throughput": {"prompt_tokens": [32, 96], "batch_sizes": [1, 2], "gen_tokens": 16,
                             "repetitions": 3},
              "latency": {"prompt_tokens": 32, "gen_tokens": 8, "requests": 4},
              "roofline": {"prompt_tokens": 96, "gen_tokens": 16},
              "bench": {"n_prompt": [64], "n_gen": [16], "n_depth": [0, 64], "repetitions": 2},
              "memory": {}}
    t0 = time.perf_counter()
    res = run_isolated(probe_worker, "llama-cpp", {"n_threads": 1}, str(path), probes)
    wall = time.perf_counter() - t0
    tp = res["figures"]["throughput"]
    for p in (32, 96):
        for kind in ("prefill_tps", "decode_tps"):
            k = shape_key(kind, p, 1)
            assert 0 < tp[k + "_min"] <= tp[k] <= tp[k + "_max"]
            assert tp[k + "_std"] >= 0
    assert res["notes"]["throughput"]["skipped_shapes"] == []  # llama.cpp decodes batches too
    for p in (32, 96):
        for kind in ("prefill_tps", "decode_tps"):
            assert tp[shape_key(kind, p, 2)] > 0
    lat = res["figures"]["latency"]
    assert 0 < lat["ttft_seconds_p50_c1"] < lat["e2e_seconds_p50_c1"]
    roof = res["figures"]["roofline"]
    assert roof["decode_tps"] == pytest.approx(tp["decode_tps_p96_b1"])
    assert 2.5e8 < roof["weight_bytes_per_token"] < 2.8e8  # the F16 weights, embedding tied
    # decode's bytes/s against a one-thread numpy copy: above 100% is possible (two decode threads,
    # caches, a copy measured while other processes run), so only the arithmetic is checked here
    assert roof["pct_of_measured"] == pytest.approx(
        100 * roof["decode_tps"] * roof["weight_bytes_per_token"] / (roof["bandwidth_measured_gbps"] * 1e9), rel=1e-6)
    bench = res["figures"]["bench"]
    assert set(bench) == {"pp64", "pp64_std", "tg16", "tg16_std", "pp64@d64", "pp64@d64_std", "tg16@d64", "tg16@d64_std"}
    assert all(bench[k] > 0 for k in ("pp64", "tg16", "pp64@d64", "tg16@d64"))
    assert res["notes"]["bench"]["skipped"] == []  # llama.cpp prefills at a depth too
    assert res["notes"]["session_info"]["flash_attn"] == {"requested": "auto", "resolved": "on"}  # CPU: on
    mem = res["figures"]["memory"]
    assert mem["peak_rss_gib"] > 0.25  # the F16 weights are mapped and read
    assert res["notes"]["machine"]["cpu"]
    print(json.dumps({"wall_s": round(wall, 1), "load_s": round(res["load_seconds"], 2),
                      "decode_tps_p96_b1": tp["decode_tps_p96_b1"], "loadavg": os.getloadavg()}))


@pytest.mark.slow  # loads the real model on two runtimes (~1 min)
@pytest.mark.parametrize("runtime,fmt", [("llama-cpp", "gguf"), ("transformers", "hf")])
def test_batch_decode_matches_one_sequence_at_a_time(qg_home, runtime, fmt):
    """The runtimes' batch hook decodes each sequence as batch 1 would: same greedy tokens
    (embedded model, 3 different prompts, 12 tokens), and scoring still works afterwards (the
    llama.cpp batch context is separate from the scoring one)."""
    from harness import baseline
    from harness.config import EMBEDDED_MODEL
    from harness.probes.timing import prompt_ids
    from harness.runtimes import REGISTRY as RUNTIMES

    rt = RUNTIMES.get(runtime)()
    session = rt.load(baseline.derive(EMBEDDED_MODEL, fmt, log=lambda m: None), rt.Params(n_threads=1), 256)
    try:
        prompts = [prompt_ids(session, 40, offset=7 * i) for i in range(3)]
        before = session.continuation_logprobs(prompts[0][:30], prompts[0][30:33])[0]
        single = [session.greedy_decode(p, 12) for p in prompts]
        batch = session.greedy_decode_batch(prompts, 12)
        assert batch["prefill_seconds"] > 0 and batch["decode_seconds"] > 0
        assert [s["tokens"][0] for s in single] == batch["tokens"]
        assert len({tuple(t) for t in batch["tokens"]}) > 1  # different prompts, different text
        again = session.greedy_decode_batch(prompts[:2], 12)  # another shape: a new context
        assert again["tokens"] == batch["tokens"][:2]
        after = session.continuation_logprobs(prompts[0][:30], prompts[0][30:33])[0]
        np.testing.assert_allclose(after, before, atol=1e-4)
    finally:
        session.close()


@pytest.mark.slow  # the real model on llama.cpp
def test_llama_cpp_timed_requests_serve_like_slots(qg_home):
    """llama.cpp's concurrency hook: 5 requests of different lengths through 2 and 3 slots of one
    context; each request gets the tokens it gets alone (slots reused after their KV is cleared),
    and the latency probe reports figures at that concurrency."""
    from harness import baseline
    from harness.config import EMBEDDED_MODEL
    from harness.probes.timing import prompt_ids
    from harness.runtimes import REGISTRY as RUNTIMES

    rt = RUNTIMES.get("llama-cpp")()
    session = rt.load(baseline.derive(EMBEDDED_MODEL, "gguf", log=lambda m: None), rt.Params(n_threads=1), 256)
    try:
        prompts = [prompt_ids(session, 20 + 5 * i, offset=3 * i) for i in range(5)]
        alone = [session.greedy_decode(p, 6)["tokens"][0] for p in prompts]
        for c in (2, 3):
            timings = session.timed_requests(prompts, 6, c)
            assert [t["tokens"] for t in timings] == alone
            assert all(0 < t["ttft_seconds"] < t["e2e_seconds"] for t in timings)
        ctx = ProbeContext(artifact_path=Path("."), session=session)
        out = LatencyProbe().measure(ctx, LatencyParams(prompt_tokens=24, gen_tokens=4, requests=4, concurrency=2))
        assert 0 < out["ttft_seconds_p50_c2"] <= out["ttft_seconds_max_c2"] < out["e2e_seconds_max_c2"]
        assert "skipped" not in ctx.notes["latency"]
    finally:
        session.close()
