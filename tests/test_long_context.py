"""The long-context suite: pass-key retrieval in a prose haystack.

Fast tests on the fake runtime (byte tokens): items are fixed by the tokenizer alone, the
needle sits at the requested depth, the seed decides everything, scores and metrics are what
paired gates read, and a tiny plan runs through ``python -m harness run``. The slow test runs
the embedded model (F16 GGUF, llama.cpp) at 1024 and 4096 tokens.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from harness.quantizers import QuantizeContext
from harness.quantizers.fake import FakeQuantizer
from harness.runtimes import fake
from harness.suites import REGISTRY
from harness.suites.long_context import (
    MAX_SNAP,
    NEEDLE,
    LongContextParams,
    LongContextSuite,
    context_problem,
)
from tests.conftest import run_cli

SMALL = {"lengths": [512, 1024], "depths": [0.1, 0.5, 0.9], "per_cell": 2}


@pytest.fixture(scope="module")
def baseline_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("lc-fake") / fake.BASELINE_ENTRY
    fake.write_baseline("fake:tiny", path)
    return path


@pytest.fixture(scope="module")
def noisy_file(baseline_file, tmp_path_factory) -> Path:
    q = FakeQuantizer()
    out = tmp_path_factory.mktemp("lc-fake-noisy")
    info = q.quantize(QuantizeContext(source=baseline_file, out_dir=out, calibration=None,
                                      baseline_model="fake:tiny"), q.Params(noise=0.3))
    return out / info["entry"]


def _session(path: Path, n_ctx: int = 4096) -> fake.FakeSession:
    rt = fake.FakeRuntime()
    return rt.load(path, rt.Params(), n_ctx)


def _prepare(path: Path, **kw) -> tuple[LongContextParams, dict]:
    params = LongContextParams(**{**SMALL, **kw})
    return params, LongContextSuite().prepare(params, _session(path))


def test_registered_with_declared_directions():
    suite = REGISTRY.get("long-context")
    assert suite is LongContextSuite
    assert suite.metrics["passkey_acc"] == suite.metrics["passkey_logprob"] == "higher"
    params = LongContextParams(**SMALL)
    assert suite.metric_directions(params) == {
        "passkey_acc": "higher", "passkey_logprob": "higher", "acc@512": "higher", "logprob@512": "higher",
        "acc@1024": "higher", "logprob@1024": "higher"}
    assert LongContextSuite().context_length(params) == 1024 + 16
    assert LongContextSuite().context_length(LongContextParams()) == 8000 + 16


def test_items_are_fixed_by_the_tokenizer(baseline_file, noisy_file):
    """Two sessions (the baseline and a heavily perturbed copy) build identical items: every
    candidate scores the same token ids."""
    params, a = _prepare(baseline_file)
    _, b = _prepare(noisy_file)
    assert a == b
    items = a["items"]
    assert len(items) == 2 * 3 * 2 and len({it["id"] for it in items}) == len(items)
    for it in items:
        assert len(it["tokens"]) == it["length"]  # the prompt is exactly the declared length
        text = bytes(it["tokens"]).decode()
        assert text.endswith("\n\nWhat is the pass key? Answer with the number. The pass key is")
        assert text.count(f"The pass key is {it['key']}. Remember it.") == 1
        assert bytes(it["target"]).decode() == " " + it["key"] and re.fullmatch(r"\d{5}", it["key"])
    assert a["meta"]["prompt"] == "completion" and "plain completion" in a["meta"]["prompt_format"]


def test_needle_at_the_requested_depth(baseline_file):
    params, prep = _prepare(baseline_file, depths=[0.0, 0.25, 0.5, 0.75, 1.0])
    head = prep["meta"]["fixed_tokens"]["head"]
    for it in prep["items"]:
        k = it["needle_pos"] - head  # haystack tokens before the needle
        want = round(it["depth"] * it["haystack_tokens"])
        # byte tokens: moved forward to the next word start, at most MAX_SNAP bytes
        assert 0 <= k - want <= MAX_SNAP, (it["id"], k, want)
        assert abs(it["needle_depth"] - it["depth"]) <= MAX_SNAP / it["haystack_tokens"]
        needle = bytes(it["tokens"][it["needle_pos"]:it["needle_pos"] + it["needle_tokens"]]).decode()
        assert needle == NEEDLE.format(key=it["key"])
        if 0 < k < it["haystack_tokens"]:  # the needle does not split a word
            assert chr(it["tokens"][it["needle_pos"] + it["needle_tokens"]]).isspace() or \
                chr(it["tokens"][it["needle_pos"] - 1]).isspace()


def test_chat_prompt_opens_the_assistant_turn(baseline_file):
    params, prep = _prepare(baseline_file, prompt="chat", lengths=[512], per_cell=1)
    assert prep["meta"]["prompt"] == "chat" and "chat template" in prep["meta"]["prompt_format"]
    for it in prep["items"]:
        text = bytes(it["tokens"]).decode()
        assert len(it["tokens"]) == 512
        assert text.startswith("<|user|>\nThere is an important piece of information")
        assert text.endswith("What is the pass key? Answer with the number.\n<|assistant|>\nThe pass key is")


class WordSession:
    """A tokenizer of whole words with their leading space (as BPE tokenizers have most
    words): the needle lands on its requested token exactly."""

    stop_token_ids = (0,)

    def __init__(self):
        self.vocab: dict[str, int] = {"": 0}
        self.words: list[str] = [""]

    def tokenize(self, text: str) -> list[int]:
        out = []
        for w in re.findall(r"\s*\S+|\s+", text):
            if w not in self.vocab:
                self.vocab[w] = len(self.words)
                self.words.append(w)
            out.append(self.vocab[w])
        return out

    def detokenize(self, ids: list[int]) -> bytes:
        return "".join(self.words[i] for i in ids).encode()


def test_needle_within_a_token_on_word_tokens():
    params = LongContextParams(lengths=[300, 900], depths=[0.1, 0.5, 0.9], per_cell=3)
    session = WordSession()
    prep = LongContextSuite().prepare(params, session)
    head = prep["meta"]["fixed_tokens"]["head"]
    for it in prep["items"]:
        assert len(it["tokens"]) == it["length"]
        assert abs(it["needle_pos"] - head - it["depth"] * it["haystack_tokens"]) <= 1, it["id"]
        assert session.detokenize(it["target"]).decode() == " " + it["key"]


def test_seed_decides_the_items(baseline_file):
    _, a = _prepare(baseline_file)
    _, again = _prepare(baseline_file)
    _, other = _prepare(baseline_file, seed=1)
    assert a == again
    assert [it["key"] for it in a["items"]] != [it["key"] for it in other["items"]]
    # each (length, depth, index) has its own generator: adding a length changes no other item
    _, one = _prepare(baseline_file, lengths=[512])
    assert one["items"] == [it for it in a["items"] if it["length"] == 512]


class Oracle:
    """The fake session, but its replies read the key from the needle in the prompt, and for
    items longer than ``forget`` tokens it answers 00000."""

    def __init__(self, session, forget: int):
        self.session, self.forget = session, forget

    def __getattr__(self, name):
        return getattr(self.session, name)

    def generate(self, prompt, max_new_tokens, stop):
        key = re.search(r"pass key is (\d+)\. Remember", bytes(prompt).decode()).group(1)
        return f" {key if len(prompt) <= self.forget else '00000'}. Rem"


def test_scores_and_metrics(baseline_file):
    params, prep = _prepare(baseline_file)
    suite = LongContextSuite()
    session = Oracle(_session(baseline_file), forget=600)
    records = suite.score(session, prep["items"], params)
    for it, r in zip(prep["items"], records, strict=True):
        assert r["id"] == it["id"] and set(r["scores"]) == {"passkey_acc", "passkey_logprob"}
        assert r["scores"]["passkey_acc"] == (1.0 if it["length"] == 512 else 0.0)
        assert r["scores"]["passkey_logprob"] == pytest.approx(sum(r["key_token_logprobs"]), abs=1e-4)
        lp, _ = session.continuation_logprobs(it["tokens"], it["target"])
        assert r["scores"]["passkey_logprob"] == pytest.approx(float(lp.sum()))
        assert r["scores"]["passkey_logprob"] < 0
    m = suite.aggregate(prep["items"], records, params)
    assert m["passkey_acc"]["value"] == 0.5 and m["passkey_acc"]["n"] == 12
    assert m["acc@512"] == {"value": 1.0, "stderr": 0.0, "n": 6, "better": "higher"}
    assert m["acc@1024"]["value"] == 0.0
    lp = np.array([r["scores"]["passkey_logprob"] for r in records])
    assert m["passkey_logprob"]["value"] == pytest.approx(lp.mean())
    assert m["passkey_logprob"]["stderr"] == pytest.approx(lp.std(ddof=1) / np.sqrt(12))
    assert set(m) == set(suite.metric_names(params))


def test_refuses_lengths_beyond_the_model_context(baseline_file):
    params = LongContextParams(lengths=[1024, 8192])
    why = context_problem(params, 8192)
    assert why and "\n" not in why and "8192" in why and "lengths that fit: [1024]" in why
    assert context_problem(LongContextParams(), 8192) is None  # 8000 + 12 generated fit
    assert context_problem(params, None) is None  # unknown: not refused
    session = _session(baseline_file, 9000)
    session.n_ctx_train = 2048  # a runtime that knows its model's trained context
    with pytest.raises(ValueError, match="exceeds the model's context of 2048 tokens"):
        LongContextSuite().prepare(LongContextParams(lengths=[1024, 4096], per_cell=1), session)


@pytest.mark.parametrize("bad, words", [
    ({"depths": [1.5]}, "depths are fractions"),
    ({"lengths": [64]}, "lengths must be 128"),
    ({"lengths": [512, 512]}, "repeat"),
    ({"per_cell": 0}, "greater than or equal to 1"),
])
def test_bad_params(bad, words):
    with pytest.raises(ValidationError, match=words):
        LongContextParams(**bad)


def test_too_short_a_length_names_the_least_that_fits(baseline_file):
    with pytest.raises(ValueError, match=r"use a length of at least \d+"):
        _prepare(baseline_file, lengths=[200])


PLAN = {
    "name": "lc-fake",
    "baseline": {"name": "f32", "model": "fake:tiny", "runtime": {"name": "fake"}},
    "candidates": [
        {"name": "noise-0.02", "quantizer": {"method": "fake", "params": {"noise": 0.02}}, "runtime": {"name": "fake"}},
        {"name": "noise-0.5", "quantizer": {"method": "fake", "params": {"noise": 0.5}}, "runtime": {"name": "fake"}},
    ],
    "suites": [{"suite": "long-context", "name": "lc",
                "params": {"lengths": [512, 1024], "depths": [0.25, 0.75], "per_cell": 4}}],
    "gates": {"inconclusive_blocks": True, "gates": [
        {"name": "key-logprob", "kind": "max_drop", "metric": "lc.passkey_logprob", "max": 1.0},
        # per length: no per-item scores of its own, so decided on the value and its stderr (loose)
        {"name": "logprob-1k", "kind": "max_drop", "metric": "lc.logprob@1024", "max": 5.0},
    ]},
    "tracking": {"enabled": False},
}


def test_plan_through_the_pipeline(tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTGATE_HOME", str(tmp_path / "home"))
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump(PLAN, sort_keys=False))
    proc = run_cli("run", str(plan), "--reports-dir", str(tmp_path / "reports"), timeout=300)
    (run_dir,) = [p for p in (tmp_path / "reports").iterdir() if p.is_dir()]
    res = json.loads((run_dir / "results.json").read_text())
    base, (small, big) = res["baseline"], res["candidates"]
    recs = {r["name"]: r["suites"]["lc"]["records"] for r in (base, small, big)}
    assert [(r["id"], r["prompt_hash"]) for r in recs["f32"]] == [(r["id"], r["prompt_hash"]) for r in recs["noise-0.5"]]
    assert len(recs["f32"]) == 16
    assert base["metrics"]["lc.passkey_logprob"]["better"] == "higher"
    assert base["metrics"]["lc.logprob@512"]["n"] == 8
    verdicts = {r["name"]: {v["gate"]: v for v in r["verdicts"]} for r in (small, big)}
    for name in verdicts:
        assert verdicts[name]["key-logprob"]["paired"] is True  # per-item scores, paired bootstrap
        assert verdicts[name]["logprob-1k"]["paired"] is False  # per length: measured value and stderr
    assert verdicts["noise-0.02"]["key-logprob"]["verdict"] == verdicts["noise-0.02"]["logprob-1k"]["verdict"] == "PASS"
    assert verdicts["noise-0.5"]["key-logprob"]["verdict"] == "FAIL", verdicts["noise-0.5"]["key-logprob"]["reason"]
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert res["approved"] == ["noise-0.02"]


def test_validate_refuses_a_ceiling_on_retrieval(tmp_path):
    plan = {**PLAN, "gates": [{"name": "g", "kind": "max_value", "metric": "lc.passkey_acc", "max": 1}]}
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    out = run_cli("validate", str(path), timeout=120)
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert "gates[0].kind" in line and "declared higher-is-better" in line


# ------------------------------------------------------------------ the embedded model
@pytest.mark.slow
def test_embedded_f16_retrieves_short_keys(qg_home, capsys):
    """SmolLM2-135M-Instruct (F16 GGUF, llama.cpp, 2 threads) at 1024 and 2048 tokens (the
    longer lengths' figures are in benchmarks/README.md: the same suite through a plan)."""
    pytest.importorskip("llama_cpp")
    from harness import baseline
    from harness.config import EMBEDDED_MODEL
    from harness.runtimes.llama_cpp import LlamaCppParams, LlamaCppRuntime

    path = baseline.derive(EMBEDDED_MODEL, "gguf", log=lambda m: None)
    suite = LongContextSuite()
    params = LongContextParams(lengths=[1024, 2048], depths=[0.1, 0.9], per_cell=1)
    session = LlamaCppRuntime().load(path, LlamaCppParams(n_threads=2), suite.context_length(params))
    try:
        prep = suite.prepare(params, session)
        records = suite.score(session, prep["items"], params)
    finally:
        session.close()
    m = suite.aggregate(prep["items"], records, params)
    with capsys.disabled():
        print("\nlong-context, embedded F16 on llama.cpp: "
              + ", ".join(f"{k} {v['value']:.3g}" for k, v in m.items()))
        for r in records:
            print(f"  {r['id']}: key {r['key']} reply {r['response']!r} logprob {r['scores']['passkey_logprob']:.3f}")
    head = prep["meta"]["fixed_tokens"]["head"]
    for it in prep["items"]:  # placed at a word boundary: within a BPE word (a few tokens) of its depth
        assert abs(it["needle_pos"] - head - it["depth"] * it["haystack_tokens"]) <= 4
    assert m["acc@1024"]["value"] >= 0.5
    assert m["logprob@1024"]["value"] > -5.0
