"""Per-slice metrics (MMLU subject, JSON-format category, a custom suite's slice/language) and
the worst-slice gate ``max_slice_drop``."""

from __future__ import annotations

import json
import random
import textwrap

import numpy as np
import pytest
import yaml

from harness.config import GatePolicy
from harness.gates import FAIL, INCONCLUSIVE, PASS, evaluate_policy, slice_table
from harness.results import Metric, Record, SuiteResult
from harness.validate import check_plan


def _records(broken: dict[str, int], sizes: dict[str, int], seed: int = 0) -> tuple[Record, Record]:
    """0/1 scores per slice; the candidate loses ``broken[slice]`` items the baseline got right."""
    rng = np.random.default_rng(seed)
    base, cand = Record(name="base", role="baseline"), Record(name="cand", role="candidate")
    recs_b, recs_c = [], []
    for lab, n in sizes.items():
        b = (rng.uniform(size=n) < 0.7).astype(int)
        c = b.copy()
        c[np.flatnonzero(b == 1)[: broken.get(lab, 0)]] = 0
        for j in range(n):
            recs_b.append({"id": f"{lab}{j}", "scores": {"acc": float(b[j])}, "slice": lab})
            recs_c.append({"id": f"{lab}{j}", "scores": {"acc": float(c[j])}, "slice": lab})
    for rec, recs in ((base, recs_b), (cand, recs_c)):
        x = np.array([r["scores"]["acc"] for r in recs])
        m = Metric(value=float(x.mean()), n=len(x), better="higher")
        rec.suites["langs"] = SuiteResult(records=recs, result_key="k", metrics={"acc": m})
        rec.metrics["langs.acc"] = m
    return base, cand


POLICY = GatePolicy.model_validate({"min_items": 20, "gates": [
    {"name": "avg", "kind": "max_drop", "metric": "langs.acc", "max": 0.05},
    {"name": "worst-language", "kind": "max_slice_drop", "metric": "langs.acc", "max_drop": 0.05}]})


def test_average_passes_while_one_slice_fails():
    base, cand = _records({"fr": 20}, {"en": 1000, "fr": 40})
    avg, worst = evaluate_policy(POLICY, cand, base)
    assert avg.verdict == PASS, avg.reason
    assert worst.verdict == FAIL, worst.reason
    assert worst.details["worst_slice"] == "fr"
    assert "worst slice 'fr'" in worst.reason and "alpha/2" in worst.reason
    assert worst.details["slices"]["en"]["estimate"] == 0.0
    table = slice_table(cand, base, 0.05)["langs"]["acc"]
    assert set(table) == {"en", "fr"} and table["fr"]["n"] == 40
    assert table["fr"]["estimate"] == pytest.approx(0.5) and table["fr"]["lower"] > 0.05
    assert table["en"]["estimate"] == 0.0 and table["en"]["units"] == "drop"


def test_slice_gate_passes_when_every_slice_holds_and_waits_for_items():
    base, cand = _records({}, {"en": 1000, "fr": 1000})
    assert evaluate_policy(POLICY, cand, base)[1].verdict == PASS
    base, cand = _records({}, {"en": 1000, "fr": 10})  # fr below min_items: cannot decide
    v = evaluate_policy(POLICY, cand, base)[1]
    assert v.verdict == INCONCLUSIVE


def test_unlabelled_items_are_inconclusive():
    base, cand = _records({"fr": 20}, {"en": 200, "fr": 40})
    for rec in (base, cand):
        for r in rec.suites["langs"].records:
            r.pop("slice")
    v = evaluate_policy(POLICY, cand, base)[1]
    assert v.verdict == INCONCLUSIVE and "no slice label" in v.reason
    assert slice_table(cand, base, 0.05) == {}


# ------------------------------------------------------------------ on the fake model
EN = ["summer", "winter", "river", "valley", "castle", "garden", "market", "harbor", "forest", "meadow",
      "bridge", "tower", "window", "animal", "theatre", "school", "hotel", "island", "mother", "father"]
FR = ["été", "rivière", "vallée", "château", "marché", "forêt", "fenêtre", "éléphant", "théâtre", "café",
      "école", "hôtel", "île", "mère", "père", "fête", "bête", "élève", "étoile", "épée"]


def _custom_suite(folder, n_en: int = 800, n_fr: int = 20):
    """A multiple-choice JSONL suite (field ``language``) as an lm-eval task through the mmlu
    suite's ``task_file``: repeat the word of the day, against a random string of consonants."""
    rng = random.Random(0)
    rows = []
    for lang, words, n in (("en", EN, n_en), ("fr", FR, n_fr)):
        for i in range(n):
            w = words[i % len(words)]
            q = (f"The word of the day is {w}. The word of the day is" if lang == "en"
                 else f"Le mot du jour est {w}. Le mot du jour est")
            wrong = "".join(rng.choice("bcdfghjklmnpqrstvwxz") for _ in range(len(w)))
            choices = [w, wrong] if rng.random() < 0.5 else [wrong, w]
            rows.append({"id": f"{lang}-{i:03d}", "language": lang, "prompt": q, "choices": choices,
                         "answer": choices.index(w)})
    data = folder / "langs.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    (folder / "langs_tasks.py").write_text(textwrap.dedent(f"""
        import json

        def langs_dataset(**_):
            import datasets
            rows = [json.loads(x) for x in open({str(data)!r}, encoding="utf-8") if x.strip()]
            return datasets.DatasetDict({{"test": datasets.Dataset.from_list(rows)}})
    """))
    task = folder / "langs.yaml"
    task.write_text(textwrap.dedent("""
        task: langs
        custom_dataset: !function langs_tasks.langs_dataset
        output_type: multiple_choice
        test_split: test
        doc_to_text: "{{prompt}}"
        doc_to_choice: "{{choices}}"
        doc_to_target: answer
        metric_list:
          - metric: acc
            aggregation: mean
            higher_is_better: true
        metadata:
          version: 1.0
    """))
    return task


def _plan(folder, task) -> dict:
    return {
        "name": "slices",
        "baseline": {"name": "f32", "model": "fake:tiny", "runtime": {"name": "fake"}},
        "candidates": [{"name": "breaks-french", "runtime": {"name": "fake"},
                        "quantizer": {"method": "fake", "params": {"noise": 5.0, "noise_rows": "non-ascii"}}}],
        "suites": [{"suite": "mmlu", "name": "langs", "params": {"task_file": str(task), "limit": None}}],
        "gates": {"min_items": 10, "gates": [
            {"name": "average", "kind": "max_drop", "metric": "langs.acc", "max": 0.05},
            {"name": "worst-language", "kind": "max_slice_drop", "metric": "langs.acc", "max_drop": 0.05}]},
        "tracking": {"enabled": False},
    }


def test_validate_checks_the_suite_has_slices(tmp_path):
    from harness.validate import load_plan

    plan = _plan(tmp_path, tmp_path / "langs.yaml")
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(plan))
    assert check_plan(load_plan(path, check_names=False)) == []  # a task file of your own: may have slices
    plan["suites"] = [{"suite": "gsm8k", "name": "langs", "params": {"limit": 5}}]  # no slice field
    for g in plan["gates"]["gates"]:
        g["metric"] = "langs.exact_match_strict"
    path.write_text(yaml.safe_dump(plan))
    problems = check_plan(load_plan(path, check_names=False))
    assert problems == ["gates[1].metric: gate kind 'max_slice_drop' needs a suite whose items carry a slice "
                        "label, but suite 'langs' (gsm8k) has none; suites with slices: json-format, mmlu, or an "
                        "lm-eval task_file whose documents have a 'slice' or 'language' field"], problems
    plan["suites"] = [{"suite": "mmlu", "name": "langs", "params": {"limit": 5}}]
    for g in plan["gates"]["gates"]:
        g["metric"] = "langs.acc"
    path.write_text(yaml.safe_dump(plan))
    assert check_plan(load_plan(path, check_names=False)) == []


@pytest.mark.slow
def test_fake_model_french_broken_english_fine(tmp_path, monkeypatch):
    """The quantizer breaks only text after non-ASCII bytes: the average accuracy PASSes a
    5-point gate, the worst language (French) FAILs it; results carry the per-slice table."""
    from harness.pipeline import Runner
    from harness.report.markdown import summary_markdown
    from harness.validate import load_plan

    monkeypatch.setenv("QUANTGATE_HOME", str(tmp_path / "home"))
    path = tmp_path / "slices.yaml"
    path.write_text(yaml.safe_dump(_plan(tmp_path, _custom_suite(tmp_path))))
    res = Runner(load_plan(path), reports_dir=tmp_path / "reports", log=lambda s: None).execute()
    cand = res.candidates[0]
    assert cand.status == "ok", cand.error
    by = {v.gate: v for v in cand.verdicts}
    table = cand.slices["langs"]["acc"]
    print(f"\nslices: en {table['en']}, fr {table['fr']}\naverage: {by['average'].reason}\n"
          f"worst: {by['worst-language'].reason}")
    assert by["average"].verdict == PASS, by["average"].reason
    assert by["worst-language"].verdict == FAIL, by["worst-language"].reason
    assert by["worst-language"].details["worst_slice"] == "fr"
    assert table["en"]["estimate"] == 0.0 and table["fr"]["estimate"] > 0.3
    assert "## Slices" in summary_markdown(res)
