"""report.html: a self-contained page built from results.json, its figures, and a real browser."""

from __future__ import annotations

import copy
import html as _html
import json
import re
from pathlib import Path

import pytest

from harness.report import figures as F
from harness.report import write_reports
from harness.report.html import render_html, write_html

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
            suites.setdefault(s, {"seconds": 3.5, "reused": False, "metrics": {}})
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


def make_results() -> dict:
    """A small but realistic results dict: a BF16 baseline and three candidates (one crashed),
    perplexity + MMLU + fidelity, probes, verdicts of the old (point) and new (paired) shapes."""
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
                      "value": 0.27, "baseline": 0.30, "estimate": 0.03, "lower": -0.01, "upper": 0.07,
                      "n": 200, "test": "Tango score + McNemar exact", "p_value": 0.21, "needed_n": 850,
                      "threshold": 0.06, "verdict": "INCONCLUSIVE",
                      "reason": "acc drop 3.0 pt [-1.0, 7.0]: neither bound clears 6 pt; ~850 items would settle it"},
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
    for rec in [results["baseline"], *results["candidates"]]:
        assert rec["name"] in page
    for rec in results["candidates"]:
        assert f">{rec['verdict']}<" in page
        for v in rec["verdicts"]:
            assert _html.escape(v["reason"]) in page
    assert "<svg" in page or "data:image/png;base64" in page
    assert _external_refs(page) == []
    assert not re.search(r"""(?:src|href)\s*=\s*["']?https?://""", page, flags=re.I)
    assert "<script" not in page.lower()  # the injected one is escaped, and the page has none of its own
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    # header, sections, and evidence of both verdict shapes
    for text in ("20261123-000000-synthetic-abcd", "Verdicts", "Quality vs size", "Suites",
                 "Fidelity to the baseline", "Probes", "Errors", "Plan", "Machine and versions",
                 "/runs/logs/gptq-w4a16-produce.log", "p=0.21", "n=200",
                 "Tango score + McNemar exact", "key-q4_k_m", "AMD EPYC"):
        assert text in page, text
    # intervals: value ± stderr, and the paired interval mapped into the metric's units
    assert "30.87 ± 2" in page
    assert "[0.23, 0.31]" in page  # 0.30 - 0.07, 0.30 + 0.01
    assert "[31.83, 32.94]" in page  # 30.64 * (1 + 3.9%), 30.64 * (1 + 7.5%)


def test_render_survives_missing_everything():
    results = make_results()
    bare = {"schema": "quantgate.results/1", "run_id": "r", "plan": {"name": "p"}, "policy": {"gates": []},
            "baseline": None, "candidates": [], "approved": [], "exit_code": 2}
    page = render_html(bare)
    assert "quantgate: p" in page and "nothing to plot" in page
    # candidates without metrics, probes, suites, artifacts or machine
    lean = copy.deepcopy(results)
    for r in [lean["baseline"], *lean["candidates"]]:
        for k in ("metrics", "probes", "suites", "artifact", "runtime", "quantizer"):
            r.pop(k, None)
    lean.pop("machine")
    page = render_html(lean)
    assert "q4_k_m" in page and "no suite metric was measured" in page


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
    assert json.loads(paths["results"].read_text())["run_id"] == results["run_id"]

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
    assert F.lower_is_better("wikitext2.ppl") and F.lower_is_better("fidelity.kl_mean")
    assert not F.lower_is_better("mmlu-0shot.acc") and not F.lower_is_better("fidelity.same_top_rate")
    assert F.lower_is_better("x.acc", {"policy": {"gates": [{"metric": "x.acc", "kind": "max_value"}]}})
    # size, quality: (0.1, 5) beats (0.2, 6); (0.3, 4) is bigger but better
    assert F.pareto_front([(0.2, 6), (0.1, 5), (0.3, 4), (0.4, 4.5)], lower_better=True) == [1, 2]
    assert F.pareto_front([(0.2, 0.6), (0.1, 0.5), (0.3, 0.4)], lower_better=False) == [1, 0]
    fig = F.pareto(results)
    assert fig.get_size_inches().tolist() == [6.0, 4.0]
    bars = F.suite_bars(results)
    assert [name for name, _ in bars] == ["wikitext2", "fidelity", "mmlu-0shot"]
    assert F.pareto(results, quality_metric="mmlu-0shot.acc", size_metric="memory.peak_rss_gib")


def test_verdict_interval_units():
    ppl = {"kind": "max_increase_pct", "value": 32.38, "baseline": 30.64, "estimate": 5.679,
           "lower": 3.9, "upper": 7.5}
    lo, hi = F.verdict_metric_interval(ppl)
    assert lo == pytest.approx(30.64 * 1.039) and hi == pytest.approx(30.64 * 1.075)
    acc = {"kind": "max_drop_pct", "value": 0.27, "baseline": 0.30, "estimate": 0.03, "lower": -0.01, "upper": 0.07}
    assert F.verdict_metric_interval(acc) == pytest.approx((0.23, 0.31))
    assert F.verdict_metric_interval({"kind": "max_value", "lower": 1.0, "upper": 2.0}) == (1.0, 2.0)
    # an estimate of zero fits several unit maps: refuse to guess
    assert F.verdict_metric_interval({"kind": "max_drop_pct", "value": 0.3, "baseline": 0.3,
                                      "estimate": 0.0, "lower": -0.02, "upper": 0.02}) is None
    assert F.verdict_metric_interval({"kind": "max_value", "value": 1.0}) is None


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
    from harness.report import summary_markdown

    results = make_results()
    q8 = results["candidates"][0]
    q8["probes"]["throughput"] = {"decode_tps_p128_b4": 120.0, "decode_tps_p128_b4_min": 110.0,
                                  "decode_tps_p128_b4_max": 130.0, "decode_tps_p128_b4_std": 9.9,
                                  "decode_tps_p128_b4_mean": 121.0}
    q8["probes"]["latency"] = {"ttft_seconds_p50_c1": 0.15}
    q8["probes"]["memory"]["model_rss_gib"] = 0.2
    q8["planner"] = {"weights_gib": 0.132, "weights_error_pct": -2.2, "total_gib": 0.6,
                     "probe_predicted_gib": 0.22, "probe_measured_gib": 0.2, "probe_error_pct": 10.0,
                     "probe_prediction": {"weights_as": "as-is (Q8_0) as stored",
                                          "workload": "session context + batch context (4 x 256 tokens)"}}
    results["candidates"][1]["planner"] = {"error": "ValueError: no config"}
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
