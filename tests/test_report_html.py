"""report.html: a self-contained page built from results.json, its figures, and a real browser.

The synthetic run is written as a ``quantgate.results/1`` dict (the shape older runs stored) and
read through ``parse_results``, which upgrades it: the reports only ever see the typed models."""

from __future__ import annotations

import copy
import html as _html
import json
import re
from pathlib import Path

import pytest

from harness.report import figures as F
from harness.report import summary_markdown, write_reports
from harness.report.html import render_html, write_html
from harness.results import SCHEMA, SCHEMA_V1, RunResults, Verdict, load_results, parse_results

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
INJECTED = '<script>alert("x")</script>'


def _m(value, stderr=None, n=1):
    return {"value": value, "stderr": stderr, "n": n}


def _record(name, role, *, method, params, runtime, metrics, verdicts, verdict, status="ok", error=None,
            size_gib=None, tps=None, rss=None):
    probes = {}
    if size_gib is not None:
        probes["size"] = {"bytes": size_gib * 2**30, "gib": size_gib}
        probes["load"] = {"seconds": 0.2}
        probes["decode"] = {"tokens_per_s": tps, "tokens_per_s_min": tps - 1, "tokens_per_s_max": tps + 1}
        probes["memory"] = {"peak_rss_gib": rss}
        metrics = {**metrics, "size.gib": _m(size_gib), "size.bytes": _m(size_gib * 2**30),
                   "load.seconds": _m(0.2), "decode.tokens_per_s": _m(tps), "memory.peak_rss_gib": _m(rss)}
    suites = {}
    for k in metrics:
        s = k.split(".")[0]
        if s in ("wikitext2", "mmlu-0shot", "fidelity"):
            suites.setdefault(s, {"seconds": 3.5, "reused": False, "metrics": {}, "records": [],
                                  "result_key": f"result-{name}-{s}"})
    return {
        "name": name, "role": role, "status": status, "error": error,
        "quantizer": {"method": method, "params": params, "calibration": None},
        "runtime": {"name": runtime, "params": {"n_threads": 2}, "versions": {runtime: "1.0"}},
        "artifact": None if status != "ok" else {
            "key": f"key-{name}", "format": "gguf", "path": f"/store/{name}/model.gguf",
            "manifest": {"key": f"key-{name}", "bits_per_weight": 8.5, "wall_seconds": 1.2,
                         "peak_rss_gib": 0.25, "created": "2026-11-22T21:12:01+00:00",
                         "versions": {"llama-cpp-python": "0.3.36"}},
            "reused": True},
        "suites": suites, "metrics": metrics, "probes": probes, "verdicts": verdicts, "verdict": verdict,
        "seconds": 10.0,
    }


def make_results() -> RunResults:
    """The synthetic run (:func:`make_results_v1`) as the reports read it."""
    return parse_results(make_results_v1())


def make_results_v1() -> dict:
    """A small but realistic ``quantgate.results/1`` dict: a BF16 baseline and three candidates
    (one crashed), perplexity + MMLU + fidelity, probes, verdicts of the old (point) and new
    (paired) shapes. /1 metrics carry no direction: the upgrade takes it from the suites' and
    probes' declarations; the paired verdicts predate the ``paired`` field (told by their test)."""
    gates = [
        {"name": "ppl-increase", "metric": "wikitext2.ppl", "kind": "max_increase_pct", "max_pct": 10.0},
        {"name": "kl-mean", "metric": "fidelity.kl_mean", "kind": "max_value", "max": 0.25},
        {"name": "mmlu-drop", "metric": "mmlu-0shot.acc", "kind": "max_drop_pct", "max_pct": 20.0},
        {"name": "size", "metric": "size.gib", "kind": "max_value", "max": 0.2},
    ]
    policy = {"name": "nightly", "description": "within bounds of the BF16 baseline",
              "inconclusive_blocks": False, "gates": gates}
    fid = {"fidelity.kl_mean": _m(0.012, 0.001, 2048), "fidelity.kl_median": _m(0.006),
           "fidelity.kl_p99": _m(0.09), "fidelity.kl_max": _m(0.6), "fidelity.same_top_rate": _m(0.95, 0.005),
           "fidelity.dp_mean": _m(-0.001, 0.0004), "fidelity.dp_p05": _m(-0.03), "fidelity.dp_p95": _m(0.02)}
    base = _record("bf16", "baseline", method="baseline", params=None, runtime="transformers",
                   metrics={"wikitext2.ppl": _m(30.64, 1.99, 8), "wikitext2.tokens": _m(4088.0, None, 8),
                            "mmlu-0shot.acc": _m(0.30, 0.032, 200)},
                   verdicts=[], verdict="PASS", size_gib=0.252, tps=36.0, rss=0.38)
    q8 = _record("q8_0", "candidate", method="gguf", params={"type": "Q8_0"}, runtime="llama-cpp",
                 metrics={"wikitext2.ppl": _m(30.87, 1.98, 8), "wikitext2.tokens": _m(4088.0, None, 8),
                          "mmlu-0shot.acc": _m(0.295, 0.032, 200), **fid},
                 verdicts=[  # the old shape: a point estimate against the threshold
                     {"gate": "ppl-increase", "kind": "max_increase_pct", "metric": "wikitext2.ppl",
                      "value": 30.87, "baseline": 30.64, "threshold": 10.0, "change_pct": 0.74,
                      "verdict": "PASS", "reason": "wikitext2.ppl 30.87 vs baseline 30.64: +0.74% (max +10%)"},
                     {"gate": "size", "kind": "max_value", "metric": "size.gib", "value": 0.135,
                      "threshold": 0.2, "verdict": "PASS", "reason": "size.gib 0.135 (max 0.2)"}],
                 verdict="PASS", size_gib=0.135, tps=39.7, rss=0.27)
    fid4 = {k: _m(v["value"] * (0.9 if k.endswith("same_top_rate") else 4), v["stderr"], v["n"])
            for k, v in fid.items()}
    q4 = _record("q4_k_m", "candidate", method="gguf", params={"type": "Q4_K_M"}, runtime="llama-cpp",
                 metrics={"wikitext2.ppl": _m(32.38, 2.2, 8), "wikitext2.tokens": _m(4088.0, None, 8),
                          "mmlu-0shot.acc": _m(0.27, 0.031, 200), **fid4},
                 verdicts=[  # the new shape: paired statistics
                     {"gate": "ppl-increase", "kind": "max_increase_pct", "metric": "wikitext2.ppl",
                      "value": 32.38, "baseline": 30.64, "estimate": 5.679, "lower": 3.9, "upper": 7.5, "n": 8,
                      "test": "paired bootstrap (windows)", "p_value": None, "needed_n": None,
                      "threshold": 10.0, "alpha": 0.05, "verdict": "PASS",
                      "reason": "ppl +5.68% [3.9, 7.5] over 8 windows: upper bound under +10%"},
                     {"gate": "mmlu-drop", "kind": "max_drop_pct", "metric": "mmlu-0shot.acc",
                      # paired max_drop_pct: the drop as a fraction of the baseline's accuracy
                      "value": 0.27, "baseline": 0.30, "estimate": 0.1, "lower": -1 / 30, "upper": 7 / 30,
                      "n": 200, "test": "Tang score + McNemar exact", "p_value": 0.21, "needed_n": 850,
                      "threshold": 0.2, "verdict": "INCONCLUSIVE",
                      "reason": "acc drop 10.0% [-3.3, 23.3]: neither bound clears 20%; ~850 items would settle it"},
                     {"gate": "size", "kind": "max_value", "metric": "size.gib", "value": 0.098,
                      "threshold": 0.2, "verdict": "PASS", "reason": "size.gib 0.098 (max 0.2)"}],
                 verdict="INCONCLUSIVE", size_gib=0.098, tps=41.1, rss=0.25)
    gptq = _record("gptq-w4a16", "candidate", method="llm-compressor", params={"scheme": "gptq-w4a16"},
                   runtime="transformers", metrics={}, verdicts=[], verdict="ERROR", status="error",
                   error={"stage": "produce", "message": f"RuntimeError: calibration diverged {INJECTED}",
                          "log": "/runs/logs/gptq-w4a16-produce.log"})
    plan = {"name": "synthetic", "description": "baseline + 3 candidates",
            "baseline": {"name": "bf16", "model": "embedded:smollm2-135m", "runtime": {"name": "transformers"}},
            "candidates": [{"name": n} for n in ("q8_0", "q4_k_m", "gptq-w4a16")],
            "suites": [{"suite": "perplexity", "name": "wikitext2", "params": {}},
                       {"suite": "fidelity", "name": "fidelity", "params": {}},
                       {"suite": "mmlu", "name": "mmlu-0shot", "params": {"limit": 200}}],
            "probes": {"size": {}, "load": {}, "decode": {}, "memory": {}}, "gates": policy}
    return {
        "schema": "quantgate.results/1", "run_id": "20261123-000000-synthetic-abcd",
        "quantgate_version": "0.1.0", "plan": plan, "plan_file": "configs/synthetic.yaml",
        "policy": policy, "started": "2026-11-23T00:00:00+00:00", "finished": "2026-11-23T00:10:00+00:00",
        "wall_seconds": 600.0,
        "machine": {"hostname": "vm", "os": "Linux", "python": "3.11.7", "cpu": "AMD EPYC",
                    "cpus_usable": 2, "memory_gib": 23.5, "gpu": None,
                    "packages": {"quantgate": "0.1.0", "numpy": "2.4.6"}},
        "environment": {"OMP_WAIT_POLICY": "PASSIVE"},
        "baseline": base, "candidates": [q8, q4, gptq], "approved": ["q8_0"], "exit_code": 2,
        "tracking": {"uri": "sqlite:///runs/mlflow.db", "experiment": "x", "parent_run_id": "abc"},
    }


def _external_refs(page: str) -> list[str]:
    """src=/href= (and CSS url()) pointing anywhere but inside the page."""
    refs = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]+)""", page, flags=re.I)
    refs += re.findall(r"""url\(\s*["']?([^"')]+)""", page, flags=re.I)
    return [r for r in refs if not (r.startswith("#") or r.startswith("data:"))]


# ---------------------------------------------------------------- unit tests

def test_render_contains_everything_and_is_self_contained():
    results = make_results()
    page = render_html(results)
    for rec in results.records():
        assert rec.name in page
    for rec in results.candidates:
        assert f">{rec.verdict}<" in page
        for v in rec.verdicts:
            assert _html.escape(v.reason) in page
    assert "<svg" in page or "data:image/png;base64" in page
    assert _external_refs(page) == []
    assert not re.search(r"""(?:src|href)\s*=\s*["']?https?://""", page, flags=re.I)
    assert "<script" not in page.lower()  # the injected one is escaped, and the page has none of its own
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    # header, sections, and evidence of both verdict shapes
    for text in ("20261123-000000-synthetic-abcd", "Verdicts", "Quality vs size", "Suites",
                 "Fidelity to the baseline", "Probes", "Errors", "Plan", "Machine and versions",
                 "/runs/logs/gptq-w4a16-produce.log", "p=0.21", "n=200",
                 "Tang score + McNemar exact", "key-q4_k_m", "AMD EPYC"):
        assert text in page, text
    # intervals: value ± stderr, and the paired interval mapped into the metric's units
    assert "30.87 ± 2" in page
    assert "[0.23, 0.31]" in page  # 0.30 * (1 - 7/30), 0.30 * (1 + 1/30): a drop as a fraction
    assert "[31.83, 32.94]" in page  # 30.64 * (1 + 3.9%), 30.64 * (1 + 7.5%)
    # the arrows: the directions the suites declared (tokens: "higher", as perplexity declares it)
    assert "ppl ↓" in page and "acc ↑" in page and "tokens ↑" not in page  # a count: no direction


def test_a_v1_results_dict_is_upgraded_and_rendered(tmp_path):
    """An old (/1) results dict, read through parse_results: directions from the registries,
    summary.md and report.html from it, results.json written back as /2 and read back equal."""
    results = make_results()
    assert make_results_v1()["schema"] == SCHEMA_V1 and results.upgraded_from == SCHEMA_V1
    q4 = results.record("q4_k_m")
    assert q4.metrics["wikitext2.ppl"].better == "lower" and q4.metrics["mmlu-0shot.acc"].better == "higher"
    assert q4.metrics["fidelity.kl_mean"].better == "lower" and q4.metrics["size.gib"].better == "lower"
    assert q4.metrics["decode.tokens_per_s"].better == "higher"
    md = summary_markdown(results)
    assert md.startswith("# quantgate: synthetic")
    assert "| candidate | method | runtime | verdict | wikitext2.ppl ↓ | mmlu-0shot.acc ↑ |" in md
    row = next(ln for ln in md.splitlines() if ln.startswith("| q4_k_m |"))
    assert "| gguf Q4_K_M | llama-cpp | INCONCLUSIVE | 32.38 ± 2.2 |" in row
    assert "| gptq-w4a16 | llm-compressor gptq-w4a16 | transformers | ERROR |" in md
    assert "produce: RuntimeError: calibration diverged" in md
    assert "## Approved list\n\n- q8_0\n" in md
    assert "| fidelity.kl_mean ↓ | — | 0.012 ± 0.001 | 0.048 ± 0.001 | — |" in md
    assert "Machine: AMD EPYC, 2 CPUs, 23.5 GiB; wall time 600.0 s." in md
    page = render_html(results)
    assert f"schema {SCHEMA} (read from {SCHEMA_V1})" in page
    assert "[0.23, 0.31]" in page and "INCONCLUSIVE" in page

    paths = write_reports(results, tmp_path)
    stored = json.loads(paths["results"].read_text())
    assert stored["schema"] == SCHEMA and "upgraded_from" not in stored
    again, _ = load_results(tmp_path)
    assert again.dump() == results.dump() and again.upgraded_from is None
    assert summary_markdown(again) == md == paths["summary"].read_text()
    assert _no_svg(render_html(again)) == _no_svg(page).replace(f" (read from {SCHEMA_V1})", "")


def _no_svg(page: str) -> str:
    """The page without its figures (matplotlib salts the ids inside an SVG at random)."""
    return re.sub(r"<svg.*?</svg>", "<svg/>", page, flags=re.S)


def _bare(**over) -> RunResults:
    """The least a /2 results file holds: a baseline that failed, no candidate."""
    data = {"schema": SCHEMA, "run_id": "r", "quantgate_version": "0.1.0", "plan": {"name": "p"},
            "policy": {"gates": []}, "started": "s", "finished": "f", "wall_seconds": 1.0,
            "baseline": {"name": "b", "role": "baseline", "status": "error",
                         "error": {"stage": "baseline", "message": "no such model"}},
            "candidates": [], "exit_code": 2}
    return parse_results({**data, **over})


def test_render_survives_missing_everything(tmp_path):
    bare = _bare()
    page = render_html(bare)
    assert "quantgate: p" in page and "nothing to plot" in page and "no such model" in page
    assert "Machine: ?, ? CPUs, ? GiB" in summary_markdown(bare)
    assert write_reports(bare, tmp_path)["html"].is_file()
    # candidates without metrics, probes, suites, artifacts or machine
    lean = copy.deepcopy(make_results_v1())
    for r in [lean["baseline"], *lean["candidates"]]:
        for k in ("metrics", "probes", "suites", "artifact", "runtime", "quantizer"):
            r.pop(k, None)
    lean.pop("machine")
    lean = parse_results(lean)
    page = render_html(lean)
    assert "q4_k_m" in page and "no suite metric was measured" in page
    assert "| q4_k_m |" in summary_markdown(lean)


def test_a_failing_figure_becomes_a_note(monkeypatch):
    def boom(*a, **k):
        raise ValueError("no axes today")

    monkeypatch.setattr(F, "pareto", boom)
    page = render_html(make_results())
    assert "could not be drawn" in page and "no axes today" in page
    assert "q8_0" in page


def test_write_reports_writes_html_and_never_loses_results(tmp_path, monkeypatch):
    results = make_results()
    paths = write_reports(results, tmp_path / "a")
    assert paths["html"].name == "report.html" and paths["html"].is_file()
    assert paths["results"].read_text() == results.to_json()
    assert json.loads(paths["results"].read_text())["run_id"] == results.run_id
    assert [p.name for p in (tmp_path / "a").iterdir() if p.name.startswith(".tmp")] == []

    import harness.report.html as H

    def boom(*a, **k):
        raise RuntimeError("matplotlib exploded")

    monkeypatch.setattr(H, "write_html", boom)
    paths = write_reports(results, tmp_path / "b")
    assert (tmp_path / "b" / "results.json").is_file() and (tmp_path / "b" / "summary.md").is_file()
    assert "matplotlib exploded" in str(paths.get("html_error"))


def test_figures_pareto_and_bars():
    results = make_results()
    assert F.default_quality_metric(results) == "wikitext2.ppl"
    assert F.lower_is_better("wikitext2.ppl", results) and F.lower_is_better("fidelity.kl_mean", results)
    assert not F.lower_is_better("mmlu-0shot.acc", results)
    assert not F.lower_is_better("fidelity.same_top_rate", results)
    # size, quality: (0.1, 5) beats (0.2, 6); (0.3, 4) is bigger but better
    assert F.pareto_front([(0.2, 6), (0.1, 5), (0.3, 4), (0.4, 4.5)], lower_better=True) == [1, 2]
    assert F.pareto_front([(0.2, 0.6), (0.1, 0.5), (0.3, 0.4)], lower_better=False) == [1, 0]
    fig = F.pareto(results)
    assert fig.get_size_inches().tolist() == [6.0, 4.0]
    bars = F.suite_bars(results)
    assert [name for name, _ in bars] == ["wikitext2", "fidelity", "mmlu-0shot"]
    assert F.pareto(results, quality_metric="mmlu-0shot.acc", size_metric="memory.peak_rss_gib")


def test_directions_come_from_the_results_not_from_names():
    """A metric's direction is what its suite or probe declared (Metric.better), whatever its
    name says; a metric that declares none is drawn higher-is-better and gets no arrow."""
    base = {"name": "b", "role": "baseline", "verdict": "PASS",
            "metrics": {"s.ppl": {"value": 1.0, "better": "higher"}, "s.loss_gib": {"value": 2.0},
                        "s.acc": {"value": 0.5, "better": "lower"}},
            "suites": {"s": {"records": [], "result_key": "k"}}}
    results = _bare(plan={"name": "p", "suites": [{"suite": "custom", "name": "s"}]}, baseline=base)
    assert not F.lower_is_better("s.ppl", results) and F.lower_is_better("s.acc", results)
    assert F.metric_better(results, "s.loss_gib") is None and not F.lower_is_better("s.loss_gib", results)
    page = render_html(results)
    assert "ppl ↑" in page and "acc ↓" in page and "loss_gib</th>" in page
    md = summary_markdown(results)
    assert "| s.ppl ↑ |" in md and "| s.loss_gib |" in md


def test_threshold_lines_come_from_the_gate_classes():
    results = make_results()
    assert F.threshold_lines(results, "wikitext2.ppl") == [(pytest.approx(30.64 * 1.1), "ppl-increase: +10%")]
    assert F.threshold_lines(results, "mmlu-0shot.acc") == [(pytest.approx(0.24), "mmlu-drop: -20%")]
    assert F.threshold_lines(results, "size.gib") == [(0.2, "size: max 0.2")]
    assert F.threshold_lines(results, "fidelity.kl_mean") == [(0.25, "kl-mean: max 0.25")]
    # kinds the old figure code drew no line for
    results.policy["gates"] += [
        {"name": "acc-abs", "metric": "mmlu-0shot.acc", "kind": "max_drop", "max": 0.05},
        {"name": "acc-ratio", "metric": "mmlu-0shot.acc", "kind": "min_ratio", "min": 0.9},
        {"name": "acc-floor", "metric": "mmlu-0shot.acc", "kind": "min_value", "min": 0.25},
        {"name": "not-installed", "metric": "mmlu-0shot.acc", "kind": "no_such_kind", "max": 1}]
    lines = dict((label, y) for y, label in F.threshold_lines(results, "mmlu-0shot.acc"))
    assert lines == {"mmlu-drop: -20%": pytest.approx(0.24), "acc-abs: -0.05": pytest.approx(0.25),
                     "acc-ratio: x0.9": pytest.approx(0.27), "acc-floor: min 0.25": 0.25}
    assert F.suite_bars(results) and F.pareto(results, quality_metric="mmlu-0shot.acc")


def _verdict(**kw) -> Verdict:
    return Verdict(gate=kw.pop("gate", "g"), metric=kw.pop("metric", "m"), verdict=kw.pop("verdict", "PASS"),
                   reason="r", **kw)


def test_verdict_interval_units():
    """Each gate class maps its own units back to the metric's: no guessing among maps."""
    ppl = _verdict(kind="max_increase_pct", value=32.38, baseline=30.64, estimate=5.679, lower=3.9, upper=7.5,
                   paired=True)
    lo, hi = F.verdict_metric_interval(ppl)
    assert lo == pytest.approx(30.64 * 1.039) and hi == pytest.approx(30.64 * 1.075)
    # max_drop_pct: paired statistics give the drop as a fraction, measured values in percent
    acc = _verdict(kind="max_drop_pct", value=0.27, baseline=0.30, estimate=0.1, lower=-1 / 30, upper=7 / 30,
                   paired=True)
    assert F.verdict_metric_interval(acc) == pytest.approx((0.23, 0.31))
    point = _verdict(kind="max_drop_pct", value=0.27, baseline=0.30, estimate=10.0, lower=-10 / 3, upper=70 / 3,
                     test="normal bound on the standard error", paired=False)
    assert F.verdict_metric_interval(point) == pytest.approx((0.23, 0.31))
    # without the paired field (older files), the test tells
    old = acc.model_copy(update={"paired": None, "test": "Tang score interval for the paired ratio"})
    assert F.verdict_metric_interval(old) == pytest.approx((0.23, 0.31))
    # an estimate of zero is no longer ambiguous: the gate's class knows its units
    zero = _verdict(kind="max_drop_pct", value=0.3, baseline=0.3, estimate=0.0, lower=-0.02, upper=0.02,
                    paired=True)
    assert F.verdict_metric_interval(zero) == pytest.approx((0.294, 0.306))
    # the baseline from the caller where the verdict has none
    drop = _verdict(kind="max_drop", value=0.27, estimate=0.03, lower=0.01, upper=0.05, paired=True)
    assert F.verdict_metric_interval(drop) is None
    assert F.verdict_metric_interval(drop, 0.30) == pytest.approx((0.25, 0.29))
    ratio = _verdict(kind="min_ratio", value=0.27, baseline=0.30, estimate=0.9, lower=0.8, upper=1.0, paired=True)
    assert F.verdict_metric_interval(ratio) == pytest.approx((0.24, 0.30))
    assert F.verdict_metric_interval(_verdict(kind="max_value", lower=1.0, upper=2.0)) == (1.0, 2.0)
    assert F.verdict_metric_interval(_verdict(kind="min_value", lower=0.5, upper=0.7, paired=False)) == (0.5, 0.7)
    assert F.verdict_metric_interval(_verdict(kind="max_value", value=1.0)) is None
    assert F.verdict_metric_interval(_verdict(kind="no_such_kind", lower=1.0, upper=2.0)) is None


# ---------------------------------------------------------------- a real browser

def _png_stats(path: Path) -> tuple[int, int, int, float]:
    """(width, height, distinct grey levels, fraction of non-white pixels) of a PNG."""
    from PIL import Image  # a matplotlib dependency

    with Image.open(path) as im:
        assert im.format == "PNG"
        grey = im.convert("L")
        hist = grey.histogram()
        w, h = grey.size
    levels = sum(1 for c in hist if c)
    return w, h, levels, 1 - hist[255] / (w * h)


@pytest.mark.slow
def test_report_in_headless_chromium(tmp_path):
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is missing (pip install playwright)")
    out = write_html(make_results(), tmp_path)
    shot = tmp_path / "report.png"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(out.as_uri())
            rows = page.locator("table.verdicts tbody tr")
            assert rows.count() == 4  # baseline + 3 candidates
            for i in range(rows.count()):
                assert rows.nth(i).is_visible()
            for name in ("bf16", "q8_0", "q4_k_m", "gptq-w4a16"):
                assert page.locator("table.verdicts").get_by_text(name, exact=True).first.is_visible()
            plots = page.locator("figure.plot svg")
            assert plots.count() >= 4  # the Pareto plot and a chart per suite
            for i in range(plots.count()):
                box = plots.nth(i).bounding_box()
                assert box and box["width"] > 200 and box["height"] > 150, box
            assert page.evaluate("document.scripts.length") == 0  # the injected <script> stayed text
            assert page.get_by_text('<script>alert("x")</script>', exact=False).count() >= 1
            page.screenshot(path=str(shot), full_page=True)
            assert [u for u in requests if not u.startswith("file://")] == []
        finally:
            browser.close()
    w, h, levels, inked = _png_stats(shot)
    assert w >= 1000 and h > 900
    assert levels > 16 and inked > 0.02, f"the screenshot looks blank ({levels} grey levels, {inked:.1%} inked)"


def test_speed_and_memory_plan_tables():
    """Throughput/latency medians with their ranges and the planner's prediction beside the
    measurement, with its error, in summary.md and report.html; a planner that failed is a row
    with its message, not a missing report."""
    results = make_results()
    q8 = results.candidates[0]
    q8.probes["throughput"] = {"decode_tps_p128_b4": 120.0, "decode_tps_p128_b4_min": 110.0,
                               "decode_tps_p128_b4_max": 130.0, "decode_tps_p128_b4_std": 9.9,
                               "decode_tps_p128_b4_mean": 121.0}
    q8.probes["latency"] = {"ttft_seconds_p50_c1": 0.15}
    q8.probes["memory"]["model_rss_gib"] = 0.2
    q8.planner = {"weights_gib": 0.132, "weights_error_pct": -2.2, "total_gib": 0.6,
                     "probe_predicted_gib": 0.22, "probe_measured_gib": 0.2, "probe_error_pct": 10.0,
                     "probe_prediction": {"weights_as": "as-is (Q8_0) as stored",
                                          "workload": "session context + batch context (4 x 256 tokens)"}}
    results.candidates[1].planner = {"error": "ValueError: no config"}
    md = summary_markdown(results)
    speed = md[md.index("## Speed and memory"):md.index("## Memory plan vs measured")]
    row = next(ln for ln in speed.splitlines() if ln.startswith("| throughput | decode_tps_p128_b4 |"))
    assert row.split(" | ")[3] == "120 (110–130)"  # the columns: probe, figure, bf16, q8_0, ...
    assert "_std" not in speed and "| latency | ttft_seconds_p50_c1 |" in speed
    assert "| memory | model_rss_gib |" in speed
    plan = md[md.index("## Memory plan vs measured"):md.index("## All metrics")]
    row = next(ln for ln in plan.splitlines() if ln.startswith("| q8_0 |"))
    assert "| 0.132 | 0.135 | -2.2% | 0.22 | 0.2 | +10.0% | 0.6 |" in row and "4 x 256 tokens" in row
    assert "| q4_k_m | — |" in plan and "ValueError: no config" in plan
    page = render_html(results)
    assert "Memory plan vs measured" in page and "+10.0%" in page and "ValueError: no config" in page
    assert "decode tps p128 b4" in page and "decode tps p128 b4 std" not in page
