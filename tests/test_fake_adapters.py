"""The fake runtime and quantizer (harness/runtimes/fake.py, harness/quantizers/fake.py): a real,
tiny, deterministic language model, its perturbations, and the whole pipeline through the CLI in
seconds (configs/fake.yaml)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from harness.quantizers import QuantizeContext
from harness.quantizers.fake import FakeQuantizer
from harness.runtimes import fake
from harness.suites.fidelity import FidelitySuite
from harness.suites.perplexity import PerplexitySuite

ROOT = Path(__file__).resolve().parents[1]
WINDOWS = {"dataset": "wikitext2", "context_length": 256, "max_tokens": 2560}  # 10 windows


@pytest.fixture(scope="module")
def baseline_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fake-baseline") / fake.BASELINE_ENTRY
    fake.write_baseline("fake:tiny", path)
    return path


def _session(path: Path, n_ctx: int = 2048) -> fake.FakeSession:
    runtime = fake.FakeRuntime()
    return runtime.load(path, runtime.Params(), n_ctx)


def _quantize(src: Path, out: Path, **params) -> Path:
    q = FakeQuantizer()
    out.mkdir(parents=True, exist_ok=True)
    info = q.quantize(QuantizeContext(source=src, out_dir=out, calibration=None, baseline_model="fake:tiny"),
                      q.Params(**params))
    return out / info["entry"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------ the model
def test_tokens_template_and_determinism(baseline_file, tmp_path):
    s = _session(baseline_file)
    assert (fake.VOCAB_SIZE, fake.BOS_ID, fake.EOS_ID, s.stop_token_ids) == (258, 256, 257, (257,))
    text = "Caf\u00e9 = 3 \u00b0C\n"
    ids = s.tokenize(text)
    assert ids == list(text.encode()) and s.detokenize([fake.BOS_ID, *ids, fake.EOS_ID]).decode() == text
    prompt = s.chat_prompt([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert prompt == "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\n"
    assert s.info()["chat_template"] == fake.CHAT_TEMPLATE and s.info()["eos_token_id"] == 257

    # fitting is deterministic to the byte, and so is everything computed from the file
    again = tmp_path / "again.npz"
    fake.write_baseline("fake:tiny", again)
    assert _sha(again) == _sha(baseline_file)
    other = _session(again)
    ids = s.tokenize("The history of the river valley begins with")
    assert np.array_equal(s.token_distributions(ids), other.token_distributions(ids))
    out = s.generate(ids, 60, [])
    assert out and out == other.generate(ids, 60, [])
    # greedy generation is the argmax of the scored distributions, token by token
    seq = ids + s.tokenize(out)
    logp = s.token_distributions(seq)
    assert np.allclose(np.exp(logp).sum(1), 1.0)
    assert [int(t) for t in logp[len(ids) - 1:].argmax(1)] == seq[len(ids):]
    assert np.array_equal(s.next_token_distribution(seq[:30]), logp[29])
    # stop strings cut the text; the speed probes' decode is timed and EOS-blind
    assert s.generate(ids, 60, [out[5:8]]) == out[:5]
    t = s.greedy_decode(ids, 16)
    assert t["prefill_seconds"] > 0 and t["decode_seconds"] > 0 and t["tokens"][0] == seq[len(ids):len(ids) + 16]
    with pytest.raises(ValueError, match="n_ctx"):
        _session(baseline_file, n_ctx=8).token_distributions(ids)
    # the params change speed only: they stay out of result keys
    runtime = fake.FakeRuntime()
    slow = runtime.Params(threads=2, decode_delay_ms=3)
    assert runtime.result_identity(slow) == runtime.result_identity(runtime.Params()) == {}
    timed = runtime.load(baseline_file, slow, 256).greedy_decode(ids, 5)
    assert timed["decode_seconds"] >= 0.015 and timed["tokens"][0] == t["tokens"][0][:5]


def test_baseline_has_learned_english(baseline_file):
    s = _session(baseline_file)
    suite = PerplexitySuite()
    params = suite.Params(**WINDOWS)
    items = suite.prepare(params, s)["items"]
    ppl = suite.aggregate(items, suite.score(s, items, params), params)["ppl"]["value"]
    assert 2.0 < ppl < 40.0  # per byte; a uniform model scores 258 (measured: ~15.6)
    prose = s.tokenize(" The river flows through the valley and the farmers")
    gibberish = s.tokenize(" Xq zvw kjq pfh gtv qqz xwk jvb mpq zzk vbn qxw kfl")
    assert s.token_logprobs(prose).mean() > s.token_logprobs(gibberish).mean() + 1.0


def test_quality_falls_with_the_declared_perturbation(baseline_file, tmp_path):
    base = _session(baseline_file)
    ppl_suite, fid_suite = PerplexitySuite(), FidelitySuite()
    pp, fp = ppl_suite.Params(**WINDOWS), fid_suite.Params(**WINDOWS)
    p_items, f_items = ppl_suite.prepare(pp, base)["items"], fid_suite.prepare(fp, base)["items"]

    def scores(path: Path) -> tuple[float, float]:
        s = _session(path)
        ppl = ppl_suite.aggregate(p_items, ppl_suite.score(s, p_items, pp), pp)["ppl"]["value"]
        kl = fid_suite.aggregate(f_items, fid_suite.score(s, f_items, fp), fp)["kl_mean"]["value"]
        return ppl, kl

    base_ppl, base_kl = scores(baseline_file)
    assert base_kl < 1e-9
    noisy = [scores(_quantize(baseline_file, tmp_path / f"n{n}", noise=n)) for n in (0.02, 0.1, 0.3)]
    assert base_ppl < noisy[0][0] < noisy[1][0] < noisy[2][0]
    assert noisy[0][1] < noisy[1][1] < noisy[2][1]
    assert noisy[0][1] < 0.005 and noisy[2][1] > 0.05 and noisy[2][0] > 1.1 * base_ppl
    rounded = [scores(_quantize(baseline_file, tmp_path / f"b{b}", bits=b)) for b in (8, 4, 2)]
    assert rounded[0][1] < rounded[1][1] < rounded[2][1]
    assert rounded[0][0] < rounded[2][0]

    # same params and seed: the same bytes; another seed: other draws; fewer bits: a smaller file
    a = _quantize(baseline_file, tmp_path / "a", noise=0.1)
    assert _sha(a) == _sha(tmp_path / "n0.1" / a.name)
    assert _sha(_quantize(baseline_file, tmp_path / "s1", noise=0.1, seed=1)) != _sha(a)
    sizes = [p.stat().st_size for p in (baseline_file, *(tmp_path / f"b{b}" / f"model-Q{b}.npz" for b in (8, 4, 2)))]
    assert sizes == sorted(sizes, reverse=True)
    assert _session(tmp_path / "b4" / "model-Q4.npz").info()["weights"].startswith("Q4")


def test_quantizer_fails_on_purpose(baseline_file, tmp_path):
    with pytest.raises(RuntimeError, match="on purpose"):
        _quantize(baseline_file, tmp_path / "q", fail="quantize")
    with pytest.raises(RuntimeError, match="ends only a worker"):  # never kills the caller
        _quantize(baseline_file, tmp_path / "c", fail="crash")
    broken = _quantize(baseline_file, tmp_path / "l", noise=0.01, fail="load")
    with pytest.raises(ValueError, match="unloadable on purpose"):
        _session(broken)


# ------------------------------------------------------------- the whole pipeline
def _quantgate(*args: str, home: Path) -> subprocess.CompletedProcess:
    """``quantgate ARGS`` in a fresh interpreter, on its own store."""
    env = {**os.environ, "QUANTGATE_HOME": str(home), "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def _fast_plan(folder: Path, extra_candidates: list[dict] | None = None, probes: bool = True) -> Path:
    """configs/fake.yaml without its lm-eval suites (their task setup, not the model, costs
    seconds per candidate: MMLU's reads 14,000 questions each time)."""
    plan = yaml.safe_load((ROOT / "configs" / "fake.yaml").read_text())
    plan["suites"] = [s for s in plan["suites"] if s["suite"] in ("perplexity", "fidelity")]
    plan["gates"] = str(ROOT / "gates" / "fake.yaml")
    plan["candidates"] += extra_candidates or []
    if not probes:  # (every probe is re-measured on every run: a worker per record)
        plan["probes"] = {}
        plan["gates"] = [g for g in yaml.safe_load((ROOT / "gates" / "fake.yaml").read_text())["gates"]
                         if not g["metric"].startswith("size.")]
    path = folder / "fake-fast.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


def _results(out: str) -> dict:
    line = next(x for x in out.splitlines() if "results:" in x)
    return json.loads(Path(line.split("results:")[1].strip().split()[0]).read_text())


@pytest.fixture(scope="module")
def fake_runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fake-run")
    plan = _fast_plan(folder)
    runs = [_quantgate("run", str(plan), "--no-tracking", "--reports-dir", str(folder / "reports"),
                       home=folder / "home") for _ in range(2)]
    return folder, runs


def test_fake_plan_through_the_cli(fake_runs):
    _, (first, _) = fake_runs
    assert first.returncode == 1, first.stdout[-3000:] + first.stderr[-3000:]
    res = _results(first.stdout)
    verdicts = {c["name"]: c["verdict"] for c in res["candidates"]}
    assert verdicts == {"q4": "PASS", "noise-0.02": "PASS", "noise-0.3": "FAIL"}
    assert res["approved"] == ["q4", "noise-0.02"] and res["exit_code"] == 1
    base = res["baseline"]
    assert base["runtime"]["name"] == "fake" and base["artifact"]["format"] == "fake"
    assert base["metrics"]["wikitext2.ppl"]["value"] < 40
    m = {c["name"]: c["metrics"] for c in res["candidates"]}
    assert m["noise-0.02"]["fidelity.kl_mean"]["value"] < m["noise-0.3"]["fidelity.kl_mean"]["value"]
    q4 = next(c for c in res["candidates"] if c["name"] == "q4")
    assert q4["artifact"]["manifest"]["bits_per_weight"] == pytest.approx(4.25, abs=0.01)
    assert m["q4"]["size.gib"]["value"] < base["metrics"]["size.gib"]["value"] / 5
    assert m["q4"]["decode.tokens_per_s"]["value"] > 0


def test_second_run_reuses_everything(fake_runs):
    _, (first, second) = fake_runs
    assert second.returncode == 1, second.stdout[-3000:] + second.stderr[-3000:]
    a, b = _results(first.stdout), _results(second.stdout)
    assert a["run_id"] != b["run_id"]
    for rec in b["candidates"]:
        assert rec["artifact"]["reused"] is True, rec["name"]
    for rec in [b["baseline"], *b["candidates"]]:
        assert all(s["reused"] for s in rec["suites"].values()), rec["name"]
    assert "producing artifact" not in second.stdout and "scoring" not in second.stdout
    for ra, rb in zip([a["baseline"], *a["candidates"]], [b["baseline"], *b["candidates"]], strict=True):
        for name in ("wikitext2.ppl", "fidelity.kl_mean"):
            assert ra["metrics"][name]["value"] == rb["metrics"][name]["value"]


def test_failing_quantizers_are_error_records(fake_runs):
    folder, _ = fake_runs
    failing = [{"name": f"fails-{mode}", "quantizer": {"method": "fake", "params": {"noise": 0.05, "fail": mode}},
                "runtime": {"name": "fake"}} for mode in ("quantize", "crash", "load")]
    proc = _quantgate("run", str(_fast_plan(folder, failing, probes=False)), "--no-tracking", "--reports-dir",
                      str(folder / "reports"), home=folder / "home")
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = _results(proc.stdout)
    recs = {c["name"]: c for c in res["candidates"]}
    assert {n: recs[n]["verdict"] for n in recs} == {"q4": "PASS", "noise-0.02": "PASS", "noise-0.3": "FAIL",
                                                     "fails-quantize": "ERROR", "fails-crash": "ERROR",
                                                     "fails-load": "ERROR"}
    assert recs["fails-quantize"]["error"]["stage"] == "produce"
    assert "on purpose" in recs["fails-quantize"]["error"]["message"]
    assert recs["fails-crash"]["error"]["stage"] == "produce"
    assert "died" in recs["fails-crash"]["error"]["message"]
    assert recs["fails-load"]["error"]["stage"] == "evaluate"
    assert "unloadable on purpose" in recs["fails-load"]["error"]["message"]
    assert recs["q4"]["artifact"]["reused"] is True  # the others went on, from the store


@pytest.mark.slow  # a run killed mid-quantization, then run again (~12 s on 2 cores)
def test_killed_quantization_is_not_reused(tmp_path):
    """SIGKILL the run while a quantization is writing its artifact: nothing half-made is taken
    for an artifact, and the next run builds it again."""
    import signal
    import time

    home = tmp_path / "home"
    plan = yaml.safe_load(_fast_plan(tmp_path, probes=False).read_text())
    plan["candidates"] = [{"name": "slow", "runtime": {"name": "fake"},
                           "quantizer": {"method": "fake", "params": {"bits": 4, "delay_seconds": 4}}}]
    path = tmp_path / "kill.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    env = {**os.environ, "QUANTGATE_HOME": str(home), "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen([sys.executable, "-m", "harness", "run", str(path), "--reports-dir", str(tmp_path / "r"),
                             "--no-tracking"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 120
    artifacts = home / "artifacts"
    # the worker has written its file into the scratch folder and sleeps (delay_seconds)
    while not any(artifacts.glob(".tmp-*/*.npz")) and time.time() < deadline:
        time.sleep(0.1)
    assert any(artifacts.glob(".tmp-*/*.npz")), "the quantization never started"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not list(artifacts.glob("*/manifest.json"))  # nothing published
    # the same plan again (the same artifact key) builds it, never takes the scratch folder for it
    again = _quantgate("run", str(path), "--no-tracking", "--reports-dir", str(tmp_path / "r2"), home=home)
    res = _results(again.stdout)
    assert res["candidates"][0]["status"] == "ok", res["candidates"][0]["error"]
    assert res["candidates"][0]["artifact"]["reused"] is False
    assert "reused from the store" not in again.stdout
    assert len(list(artifacts.glob("*/manifest.json"))) == 1
