"""Release sign-off bundles: ``quantgate release RUN --out DIR``.

A bundle is a folder that a release reviewer (or a model repo) keeps instead of a run folder:
what was released (each candidate's artifact by sha256 and size, optionally the files
themselves), how it was made (the recipe: quantizer method, params, calibration and its
sha256; the runtime with its versions and params), where it was measured (python, the run
interpreter's package list, CPU, GPU), how it was judged (the policy as the run had it, every
verdict with its evidence, and the per-item records every gate decided from), the run's own
reports, a model card (``README.md``, Hugging Face front matter) and the hub's evaluation
results (``.eval_results/<candidate>.yaml``). ``manifest.json`` (schema ``quantgate.release/1``,
``ReleaseManifest``) ties them together, and ``SHA256SUMS`` (``sha256sum -c`` compatible)
holds the sha256 of every file; the bundle's own sha256 is that of ``SHA256SUMS``.

``harness.verify`` re-hashes every file and re-decides every gate from the bundled items with
the run's own code (``harness.gates.decide``). Nothing here loads a model.

Layout::

    manifest.json  SHA256SUMS  README.md  .eval_results/<candidate>.yaml
    policy.json    plan.yaml   results.json  summary.md  report.html
    items/<record>/<suite>.json          per-item records (the baseline and every candidate of the run)
    artifacts/<candidate>/<file>          with --include-artifacts
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from harness import __version__
from harness.errors import QuantgateError
from harness.results import Metric, Record, RunResults, Verdict, load_results
from harness.store import hash_cache, sha256_file, tree_files

RELEASE_SCHEMA = "quantgate.release/1"
MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"
POLICY_FILE = "policy.json"
PLAN_FILE = "plan.yaml"
RESULTS_FILE = "results.json"
REPORT_FILES = ("summary.md", "report.html")
ITEMS_DIR = "items"
ARTIFACTS_DIR = "artifacts"
EVAL_DIR = ".eval_results"
CARD = "README.md"

#: base models quantgate knows by another name: the id the hub knows them by
HUB_IDS = {"embedded:smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}
#: artifact format -> the hub's ``library_name``
LIBRARY = {"gguf": "gguf", "hf": "transformers"}
#: suite kind -> (hub dataset id, task id, the metric reported, scale to the hub's value)
HUB_DATASETS: dict[str, tuple[str, str, str, float]] = {
    "mmlu": ("cais/mmlu", "all", "acc", 100.0),
    "gsm8k": ("openai/gsm8k", "main", "exact_match_strict", 100.0),
    "humaneval": ("openai/openai_humaneval", "openai_humaneval", "pass_at_1", 100.0),
}
#: suites whose metrics measure the distance to the baseline itself (KL): no recovery ratio
BASELINE_RELATIVE = frozenset({"fidelity"})
WIKITEXT = ("Salesforce/wikitext", "wikitext-2-raw-v1", "ppl", 1.0)


class ReleaseError(QuantgateError):
    """A release cannot be made as asked (one line: what, and what to do)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BundleFile(_Model):
    """One file: its path (relative to the bundle, or to the artifact's folder), sha256, size."""

    path: str
    sha256: str
    size: int


class ArtifactEntry(_Model):
    """A released artifact: every file of its store folder, by hash."""

    key: str
    format: str
    #: where it was in the store at release time (its entry file or folder)
    store_path: str
    #: the file a runtime loads, relative to the artifact's folder (None: the folder itself)
    entry: str | None = None
    files: list[BundleFile]
    #: copied into the bundle under ``artifacts/<candidate>/`` (else referenced by hash)
    included: bool = False
    #: hashed from the files at release time (False: the store entry was gone; the hashes are
    #: the ones the run sealed it with)
    rehashed: bool = True


class Recipe(_Model):
    method: str | None = None
    #: the params as the quantizer resolved them (defaults filled in)
    params: dict[str, Any] = Field(default_factory=dict)
    #: the calibration as the plan declared it (None: none)
    calibration: dict[str, Any] | None = None
    #: what identifies the calibration data (its text's sha256 and the sampling settings)
    calibration_identity: dict[str, Any] | None = None
    calibration_sha256: str | None = None
    #: versions of the tools that made the artifact
    versions: dict[str, str] = Field(default_factory=dict)


class SuiteEntry(_Model):
    """A suite's per-item records, as the gates decided from them."""

    suite: str  # the suite kind (perplexity, mmlu, ...)
    file: str  # items/<record>/<suite id>.json
    sha256: str
    n: int
    result_key: str
    items_key: str | None = None
    metrics: dict[str, Metric] = Field(default_factory=dict)
    meta: dict[str, Any] = Field(default_factory=dict)


class ReleasedRecord(_Model):
    name: str
    role: Literal["baseline", "candidate"]
    status: Literal["ok", "error"] = "ok"
    error: str | None = None
    model: str | None = None  # the baseline's model reference
    recipe: Recipe | None = None
    runtime: dict[str, Any] | None = None
    artifact: ArtifactEntry | None = None
    suites: dict[str, SuiteEntry] = Field(default_factory=dict)
    metrics: dict[str, Metric] = Field(default_factory=dict)
    probes: dict[str, dict[str, float | None]] = Field(default_factory=dict)
    verdicts: list[Verdict] = Field(default_factory=list)
    verdict: str | None = None
    #: what the policy decides on beside the gates' metrics: the baseline's run-to-run spread
    #: (``baseline.repeats``) and a candidate's calibration/suite overlap
    noise_floor: dict[str, Any] | None = None
    calibration_overlap: dict[str, Any] | None = None


class Environment(_Model):
    python: str | None = None
    os: str | None = None
    hostname: str | None = None
    cpu: str | None = None
    cpus_usable: int | None = None
    memory_gib: float | None = None
    #: the GPUs and driver as the run recorded them (machine, else the probes' notes)
    gpu: Any = None
    #: quantgate's key packages, as the run recorded them
    packages: dict[str, str] = Field(default_factory=dict)
    #: the run interpreter's every distribution (``importlib.metadata``); None when the run
    #: predates that record
    distributions: dict[str, str] | None = None
    variables: dict[str, str] = Field(default_factory=dict)
    executor: dict[str, Any] = Field(default_factory=dict)


class RunInfo(_Model):
    run_id: str
    plan: str
    plan_file: str | None = None
    quantgate_version: str
    started: str
    finished: str
    exit_code: int | None = None
    approved: list[str] = Field(default_factory=list)
    policy: str
    #: every candidate of the run, in its order (the order ``decide`` saw them in)
    candidates: list[str] = Field(default_factory=list)


class ReleaseManifest(_Model):
    """manifest.json of a release bundle."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_: Literal["quantgate.release/1"] = Field(RELEASE_SCHEMA, alias="schema")
    created: str
    quantgate_version: str  # of the quantgate that made the bundle
    run: RunInfo
    released: list[str]
    allow_unapproved: bool = False
    base_model: str | None = None
    baseline: ReleasedRecord
    candidates: list[ReleasedRecord]
    #: the run's other candidates (not released): their items, metrics and verdicts only, so
    #: ``verify`` re-decides the run as it was decided (a policy may decide across candidates)
    others: list[ReleasedRecord] = Field(default_factory=list)
    policy_file: str = POLICY_FILE
    plan_file: str = PLAN_FILE
    environment: Environment
    #: every file of the bundle but manifest.json and SHA256SUMS
    files: list[BundleFile]

    def records(self) -> list[ReleasedRecord]:
        """The baseline and the released candidates."""
        return [self.baseline, *self.candidates]

    def decided(self) -> list[ReleasedRecord]:
        """The baseline and every candidate of the run, in the run's order."""
        by_name = {r.name: r for r in [*self.candidates, *self.others]}
        order = self.run.candidates or list(by_name)
        return [self.baseline, *(by_name[n] for n in order if n in by_name),
                *(r for n, r in by_name.items() if n not in order)]

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


# ------------------------------------------------------------------ helpers
def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_entry(path: Path, rel: str) -> BundleFile:
    return BundleFile(path=rel, sha256=sha256_file(path), size=path.stat().st_size)


def bundle_files(folder: Path) -> list[tuple[str, Path]]:
    """Every file of a bundle but manifest.json and SHA256SUMS (names relative, sorted)."""
    return [(rel, p) for rel, p in tree_files(folder) if rel not in (MANIFEST, SUMS)]


def sums_text(entries: list[tuple[str, str]]) -> str:
    """``sha256sum`` output: ``<hex>  <path>`` per line (two spaces: text mode)."""
    return "".join(f"{digest}  {rel}\n" for rel, digest in entries)


def bundle_sha256(folder: Path) -> str:
    """A bundle's identity: the sha256 of its SHA256SUMS."""
    return sha256_file(folder / SUMS)


def recovery(base: float | None, cand: float | None, better: str | None) -> float | None:
    """candidate / baseline where higher is better, baseline / candidate where lower is better
    (1.0: no loss; above 1: better than the baseline); None where undefined."""
    if base is None or cand is None or better not in ("higher", "lower"):
        return None
    num, den = (cand, base) if better == "higher" else (base, cand)
    if not (math.isfinite(num) and math.isfinite(den)) or den == 0:
        return None
    return num / den


def _fmt(x: float | None, digits: int = 4) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def resolve_run(ref: str, reports_dir: Path) -> tuple[RunResults, Path]:
    """RUN: a run folder, its results.json, or a run id under ``reports_dir``."""
    path = Path(ref)
    if not path.exists() and (reports_dir / ref).is_dir():
        path = reports_dir / ref
    if not path.exists():
        raise ReleaseError(f"{ref}: no run folder, results.json or run id under {reports_dir}/ by that name")
    return load_results(path)


def select(results: RunResults, names: list[str] | None, allow_unapproved: bool) -> list[Record]:
    """The candidates to release: the approved ones, or the named ones (approved unless
    ``allow_unapproved``)."""
    by_name = {c.name: c for c in results.candidates}

    def why(rec: Record) -> str:
        if rec.status != "ok":
            return f"ERROR: {rec.error.stage}: {rec.error.message}" if rec.error else "ERROR"
        bad = [v for v in rec.verdicts if v.verdict != "PASS"]
        return f"{rec.verdict}" + (f": {bad[0].gate}: {bad[0].reason}" if bad else "")

    if not names:
        if not results.approved:
            verdicts = ", ".join(f"{c.name} {c.verdict}" for c in results.candidates)
            raise ReleaseError(f"run {results.run_id} approved no candidate ({verdicts}); name one with "
                               "--candidates NAME --allow-unapproved to release it anyway")
        return [by_name[n] for n in results.approved if n in by_name]
    out = []
    for n in names:
        if n not in by_name:
            raise ReleaseError(f"--candidates: {n!r} is not a candidate of run {results.run_id} "
                               f"(its candidates: {', '.join(by_name) or 'none'})")
        if n not in results.approved and not allow_unapproved:
            raise ReleaseError(f"--candidates: {n!r} is not approved by run {results.run_id} ({why(by_name[n])}); "
                               "release it anyway with --allow-unapproved")
        if by_name[n] not in out:
            out.append(by_name[n])
    return out


def _artifact_folder(path: Path, entry: str | None) -> Path:
    """The sealed store folder of an artifact: the record's path is ``<folder>/<entry>`` (a
    file, or a checkpoint folder such as llm-compressor's ``model/``)."""
    if entry and Path(entry).parts and path.parts[-len(Path(entry).parts):] == Path(entry).parts:
        return path.parents[len(Path(entry).parts) - 1]
    return path if path.is_dir() else path.parent


def artifact_entry(rec: Record, include: bool, dest: Path | None) -> tuple[ArtifactEntry | None, str | None]:
    """(the artifact by hash, a note) of a record; files copied to ``dest`` when ``include``.
    The files are hashed now and must match the hashes the store sealed them with."""
    art = rec.artifact
    if art is None:
        return None, None
    path = Path(art.path)
    recorded: dict = (art.manifest.get("integrity") or {}).get("files") or {}
    entry = art.manifest.get("entry") or (path.name if path.is_file() else None)
    folder = _artifact_folder(path, art.manifest.get("entry"))
    if not path.exists() or not folder.is_dir():
        if include:
            raise ReleaseError(f"{rec.name}: its artifact {path} is not on this machine (the store moved or was "
                               "cleaned); release without --include-artifacts to reference it by hash, or re-run the plan")
        if not recorded:
            raise ReleaseError(f"{rec.name}: its artifact {path} is gone and the run recorded no hashes of it")
        files = [BundleFile(path=rel, sha256=f["sha256"], size=int(f.get("size") or 0)) for rel, f in sorted(recorded.items())]
        return (ArtifactEntry(key=art.key, format=art.format, store_path=str(path), entry=entry, files=files,
                              included=False, rehashed=False),
                f"{rec.name}: artifact {path} not found: referenced by the hashes the run sealed it with")
    files = []
    on_disk = dict(tree_files(folder))
    # in a store, its hash cache: an unchanged multi-GB file (same size, mtime, ctime, inode) is
    # not read again; any write changes its ctime (verify always reads every byte)
    store_root = folder.parent.parent
    cache = hash_cache(store_root) if (store_root / "hashes").is_dir() else None
    for rel, p in on_disk.items():
        f = BundleFile(path=rel, sha256=cache.sha256(p) if cache else sha256_file(p), size=p.stat().st_size)
        want = recorded.get(rel)
        if want is not None and want.get("sha256") != f.sha256:
            raise ReleaseError(f"{p}: sha256 {f.sha256} is not the {want.get('sha256')} the run's artifact was sealed "
                               f"with (the stored artifact changed since run); re-run the plan to rebuild it")
        files.append(f)
    missing = sorted(set(recorded) - set(on_disk))
    if missing:
        raise ReleaseError(f"{folder / missing[0]}: missing from the artifact the run recorded; re-run the plan")
    if include and dest is not None:
        for rel, p in on_disk.items():
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, target)
    return ArtifactEntry(key=art.key, format=art.format, store_path=str(path), entry=entry, files=files,
                         included=include), None


def recipe_of(rec: Record) -> Recipe | None:
    if rec.quantizer is None and rec.artifact is None:
        return None
    q = rec.quantizer or {}
    man = rec.artifact.manifest if rec.artifact is not None else {}
    key_inputs = man.get("key_inputs") or {}
    cal_id = key_inputs.get("calibration")
    return Recipe(method=q.get("method") or man.get("method"),
                  params=man.get("params") or q.get("params") or {},
                  calibration=q.get("calibration"),
                  calibration_identity=cal_id if isinstance(cal_id, dict) else None,
                  calibration_sha256=(cal_id or {}).get("text_sha256") if isinstance(cal_id, dict) else None,
                  versions={k: str(v) for k, v in (key_inputs.get("versions") or man.get("versions") or {}).items()})


def environment_of(results: RunResults) -> Environment:
    m = results.machine
    gpu = m.get("gpu")
    if gpu is None:  # the probes record the GPUs and the driver they saw
        for rec in results.records():
            g = ((rec.probe_notes or {}).get("machine") or {}).get("gpu")
            if g:
                gpu = g
                break
    return Environment(python=m.get("python"), os=m.get("os"), hostname=m.get("hostname"), cpu=m.get("cpu"),
                       cpus_usable=m.get("cpus_usable"), memory_gib=m.get("memory_gib"), gpu=gpu,
                       packages={k: str(v) for k, v in (m.get("packages") or {}).items()},
                       distributions=m.get("distributions"), variables=dict(results.environment),
                       executor={k: v for k, v in results.executor.items() if k != "placement"})


def base_model_id(results: RunResults, override: str | None) -> str | None:
    """The hub id of the baseline: ``--base-model``, a known embedded model, a hub-like id; a
    local path or the fake model has none."""
    if override:
        return override
    model = str((results.plan.get("baseline") or {}).get("model") or "")
    if model in HUB_IDS:
        return HUB_IDS[model]
    if model.count("/") == 1 and ":" not in model and not Path(model).expanduser().exists() \
            and not model.startswith((".", "/", "~")):
        return model
    return None


# ------------------------------------------------------------------ the model card
def _suite_kinds(plan: dict) -> dict[str, tuple[str, dict]]:
    return {(s.get("name") or s.get("suite")): (s.get("suite"), s.get("params") or {}) for s in plan.get("suites") or []}


def card_metrics(manifest: ReleaseManifest, policy: dict, suite_id: str) -> list[str]:
    """A suite's metrics in the card: the first it declares with a direction, and every gated one."""
    names: list[str] = []
    gated = {g.get("metric") for g in policy.get("gates") or []}
    first = None
    for rec in manifest.records():
        entry = rec.suites.get(suite_id)
        if entry is None:
            continue
        for m, v in entry.metrics.items():
            if first is None and v.better is not None:
                first = m
            full = f"{suite_id}.{m}"
            if full in gated and full not in names:
                names.append(full)
    if first is not None and f"{suite_id}.{first}" not in names:
        names.insert(0, f"{suite_id}.{first}")
    return names


def hub_dataset(kind: str, params: dict) -> tuple[str, str, str, float] | None:
    if kind == "perplexity":
        ds = str(params.get("dataset") or "wikitext2")
        if ds == "wikitext2":
            return WIKITEXT
        if ds.startswith("hub:"):
            parts = ds[4:].split(":")
            return (parts[0], parts[1] if len(parts) > 1 else "default", "ppl", 1.0)
        return None
    return HUB_DATASETS.get(kind)


def eval_results(manifest: ReleaseManifest, rec: ReleasedRecord, plan: dict) -> list[dict]:
    """The hub's ``.eval_results/*.yaml`` entries of one candidate (suites with a hub dataset)."""
    out = []
    date = manifest.run.finished[:10]
    for sid, (kind, params) in _suite_kinds(plan).items():
        entry = rec.suites.get(sid)
        found = hub_dataset(kind, params)
        if entry is None or found is None:
            continue
        dataset_id, task_id, metric, scale = found
        m = entry.metrics.get(metric)
        if m is None or m.value is None or not math.isfinite(m.value):
            continue
        unit = " (percent)" if scale == 100.0 else ""
        out.append({"dataset": {"id": dataset_id, "task_id": task_id},
                    "value": round(m.value * scale, 4),
                    "date": date,
                    "notes": (f"quantgate {sid}.{metric}{unit}, n={entry.n}, candidate {rec.name} "
                              f"({_recipe_words(rec)}) on {(rec.runtime or {}).get('name', '?')}; "
                              f"run {manifest.run.run_id}")})
    return out


def _recipe_words(rec: ReleasedRecord) -> str:
    r = rec.recipe
    if r is None:
        return "no recipe"
    params = ", ".join(f"{k}={v}" for k, v in sorted(r.params.items()) if v not in (None, 0, 0.0, False, ""))
    return f"{r.method}" + (f" {params}" if params else "")


def model_card(manifest: ReleaseManifest, plan: dict, policy: dict, bundle_name: str) -> str:
    """README.md: Hugging Face front matter, then results, verdicts and how to reproduce them."""
    base = manifest.baseline
    front: dict[str, Any] = {}
    if manifest.base_model:
        front["base_model"] = manifest.base_model
    front["tags"] = ["quantized", "quantgate"]
    libs = {LIBRARY.get(c.artifact.format) for c in manifest.candidates if c.artifact is not None} - {None}
    if len(libs) == 1:
        front["library_name"] = libs.pop()
    index = []
    for c in manifest.candidates:
        results = []
        for sid, (kind, params) in _suite_kinds(plan).items():
            entry = c.suites.get(sid)
            if entry is None:
                continue
            found = hub_dataset(kind, params)
            if found is None:  # the hub's model-index names hub datasets; the tables below have the rest
                continue
            metrics = [{"type": n.split(".", 1)[1], "name": n, "value": round(c.metrics[n].value, 6)}
                       for n in card_metrics(manifest, policy, sid)
                       if n in c.metrics and c.metrics[n].value is not None and math.isfinite(c.metrics[n].value)]
            if not metrics:
                continue
            dataset = {"name": sid, "type": found[0], "config": found[1]}
            results.append({"task": {"type": "text-generation"}, "dataset": dataset, "metrics": metrics,
                            "source": {"name": f"quantgate run {manifest.run.run_id}"}})
        if results:
            index.append({"name": c.name, "results": results})
    if index:
        front["model-index"] = index
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(), "---", ""]
    title = manifest.base_model or base.model or base.name
    lines += [f"# {', '.join(manifest.released)}: quantized {title}", "",
              f"Released with quantgate {manifest.quantgate_version} from run `{manifest.run.run_id}` of plan "
              f"`{manifest.run.plan}` ({manifest.run.finished}), decided under policy `{manifest.run.policy}`. "
              f"The baseline is `{base.name}` ({base.model or '?'} on {(base.runtime or {}).get('name', '?')}).", ""]
    if manifest.allow_unapproved:
        lines += ["**Released with `--allow-unapproved`:** not every candidate here passed its gates.", ""]
    lines += ["## Candidates", "", "| candidate | verdict | recipe | runtime | artifact |", "|---|---|---|---|---|"]
    for c in manifest.candidates:
        art = c.artifact
        if art is not None:
            size = sum(f.size for f in art.files)
            main = next((f for f in art.files if f.path == art.entry), art.files[0] if art.files else None)
            art_txt = f"{art.format}, {size / 1024**2:.2f} MiB" + (f", `{main.path}` sha256 `{main.sha256[:16]}…`" if main else "")
        else:
            art_txt = "—"
        rt = c.runtime or {}
        lines.append(f"| {c.name} | {c.verdict} | {_cell(_recipe_words(c))} | "
                     f"{_cell(rt.get('name', '?'))} {_cell(json.dumps(rt.get('params') or {}, sort_keys=True))} | {_cell(art_txt)} |")
    lines += ["", "## Results", "",
              "Recovery is candidate / baseline where higher is better (↑) and baseline / candidate where lower is "
              "better (↓): 1.0 keeps the baseline's quality, below 1 loses some (— where it is undefined: a zero, "
              "or a suite that measures the distance to the baseline itself, such as fidelity's KL). Intervals and "
              "tests are in the gate verdicts below.", ""]
    for sid, (kind, _params) in _suite_kinds(plan).items():
        names = card_metrics(manifest, policy, sid)
        if not names:
            continue
        n = base.suites[sid].n if sid in base.suites else None
        lines += [f"### {sid} ({kind}{f', {n} items' if n else ''})", "",
                  "| metric | candidate | baseline | candidate value | recovery |", "|---|---|---|---|---|"]
        for name in names:
            for c in manifest.candidates:
                m = c.metrics.get(name)
                b = base.metrics.get(name)
                better = (m.better if m is not None else None) or (b.better if b is not None else None)
                arrow = {"higher": " ↑", "lower": " ↓"}.get(better or "", "")
                rec = None if kind in BASELINE_RELATIVE else recovery(b.value if b else None, m.value if m else None,
                                                                      better)
                lines.append(f"| {name}{arrow} | {c.name} | {_fmt(b.value if b else None)} | "
                             f"{_fmt(m.value if m else None)} | {_fmt(rec, 4)} |")
        lines.append("")
    suite_ids = set(_suite_kinds(plan))
    probed = [g.get("metric") for g in policy.get("gates") or []
              if str(g.get("metric", "")).split(".", 1)[0] not in suite_ids]
    probed = list(dict.fromkeys(m for m in probed if m))
    if probed:  # the gated figures that no suite measured: size, speed, memory
        lines += ["### probes (gated)", "", "| metric | candidate | baseline | candidate value | recovery |",
                  "|---|---|---|---|---|"]
        for name in probed:
            for c in manifest.candidates:
                m, b = c.metrics.get(name), base.metrics.get(name)
                better = (m.better if m is not None else None) or (b.better if b is not None else None)
                arrow = {"higher": " ↑", "lower": " ↓"}.get(better or "", "")
                rec = recovery(b.value if b else None, m.value if m else None, better)
                lines.append(f"| {name}{arrow} | {c.name} | {_fmt(b.value if b else None)} | "
                             f"{_fmt(m.value if m else None)} | {_fmt(rec, 4)} |")
        lines.append("")
    lines += ["## Gate verdicts", "", f"Policy `{manifest.run.policy}` (`{POLICY_FILE}`), alpha {policy.get('alpha')}; "
              "each verdict as the run decided it, with its evidence.", "",
              "| candidate | gate | metric | verdict | evidence |", "|---|---|---|---|---|"]
    for rec in manifest.records():
        for v in rec.verdicts:
            lines.append(f"| {rec.name} | {v.gate} | {v.metric} | {v.verdict} | {_cell(v.reason)} |")
    env = manifest.environment
    lines += ["", "## Reproduce", "", "```bash",
              f"quantgate verify {bundle_name}" + ("" if all(c.artifact is None or c.artifact.included
                                                               for c in manifest.candidates)
                                                   else "   # add --artifacts PATH to check the model files too"),
              f"quantgate run {bundle_name}/{PLAN_FILE}      # the evaluation again (the plan, its policy inline)",
              f"quantgate gate {bundle_name}                 # re-decide the stored results under the policy",
              "```", "",
              "`quantgate verify` re-hashes every file (`sha256sum -c SHA256SUMS` checks the same) and re-decides "
              "every gate from the per-item records under `items/`, without loading a model.", "",
              "## Environment", "",
              f"Python {env.python or '?'} on {env.os or '?'}; CPU {env.cpu or '?'} ({env.cpus_usable or '?'} usable), "
              f"{env.memory_gib or '?'} GiB; GPU: {json.dumps(env.gpu) if env.gpu else 'none recorded'}. "
              + ("Key packages: " + ", ".join(f"{k} {v}" for k, v in env.packages.items()) + ". " if env.packages else "")
              + (f"Every installed distribution ({len(env.distributions)}) is in `{MANIFEST}` (`environment.distributions`)."
                 if env.distributions else "The run did not record its full package list."), ""]
    return "\n".join(lines)


# ------------------------------------------------------------------ building
def _items_payload(rec: Record, sid: str, kind: str | None) -> dict[str, Any]:
    entry = rec.suites[sid]
    return {"record": rec.name, "suite_id": sid, "suite": kind, "result_key": entry.result_key,
            "items_key": entry.items_key, "records": entry.records}


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, sort_keys=False, default=str) + "\n", encoding="utf-8")


def _write_items(path: Path, payload: dict[str, Any]) -> None:
    """An items file: JSON, one per-item record a line (reads and diffs well)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    head = json.dumps({k: v for k, v in payload.items() if k != "records"}, default=str)[:-1]
    body = ",\n".join(json.dumps(r, separators=(",", ":"), default=str) for r in payload["records"])
    path.write_text(f'{head}, "records": [\n{body}\n]}}\n', encoding="utf-8")


def _released_record(rec: Record, kinds: dict[str, tuple[str, dict]], out: Path, include: bool,
                     notes: list[str], released: bool = True) -> ReleasedRecord:
    suites = {}
    for sid, entry in rec.suites.items():
        rel = f"{ITEMS_DIR}/{rec.name}/{sid}.json"
        kind = (kinds.get(sid) or (None, {}))[0]
        _write_items(out / rel, _items_payload(rec, sid, kind))
        suites[sid] = SuiteEntry(suite=kind or "?", file=rel, sha256=sha256_file(out / rel), n=len(entry.records),
                                 result_key=entry.result_key, items_key=entry.items_key, metrics=entry.metrics,
                                 meta=entry.meta)
    artifact = None
    if rec.role == "candidate" and released:
        artifact, note = artifact_entry(rec, include, out / ARTIFACTS_DIR / rec.name)
        if note:
            notes.append(note)
    elif rec.artifact is not None:  # the baseline, a candidate not released: as the run sealed it, never copied
        recorded = (rec.artifact.manifest.get("integrity") or {}).get("files") or {}
        artifact = ArtifactEntry(key=rec.artifact.key, format=rec.artifact.format, store_path=rec.artifact.path,
                                 entry=rec.artifact.manifest.get("entry"),
                                 files=[BundleFile(path=k, sha256=v["sha256"], size=int(v.get("size") or 0))
                                        for k, v in sorted(recorded.items())], included=False, rehashed=False)
    rt = rec.runtime
    return ReleasedRecord(
        name=rec.name, role=rec.role, status=rec.status,
        error=f"{rec.error.stage}: {rec.error.message}" if rec.error else None,
        recipe=recipe_of(rec) if rec.role == "candidate" else None,
        runtime=rt.model_dump(mode="json") if rt is not None else None,
        artifact=artifact, suites=suites, metrics=rec.metrics, probes=rec.probes,
        verdicts=rec.verdicts, verdict=rec.verdict, noise_floor=rec.noise_floor,
        calibration_overlap=rec.calibration_overlap)


def _plan_for_bundle(results: RunResults) -> dict:
    """The plan as the run validated it, with its policy inline (the bundle stands alone)."""
    plan = json.loads(json.dumps(results.plan))
    plan["gates"] = results.policy
    return plan


def build(results: RunResults, run_dir: Path, out: Path, names: list[str] | None = None, include: bool = False,
          allow_unapproved: bool = False, base_model: str | None = None,
          shown_as: str | None = None) -> tuple[ReleaseManifest, list[str]]:
    """Write the bundle into ``out`` (a new or empty folder); returns (manifest, notes).
    ``shown_as``: the bundle's path in the model card's commands (default: its name)."""
    chosen = select(results, names, allow_unapproved)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ReleaseError(f"--out {out}: exists and is not an empty folder; give a new one")
    kinds = _suite_kinds(results.plan)
    out.mkdir(parents=True, exist_ok=True)
    try:
        notes: list[str] = []
        baseline = _released_record(results.baseline, kinds, out, False, notes)
        baseline.model = str((results.plan.get("baseline") or {}).get("model") or "") or None
        candidates = [_released_record(c, kinds, out, include, notes) for c in chosen]
        others = [_released_record(c, kinds, out, False, notes, released=False)
                  for c in results.candidates if c not in chosen]
        _write_json(out / POLICY_FILE, results.policy)
        plan = _plan_for_bundle(results)
        (out / PLAN_FILE).write_text(
            f"# plan {results.plan.get('name')} as run {results.run_id} validated it, its gate policy inline\n"
            + yaml.safe_dump(plan, sort_keys=False, allow_unicode=True), encoding="utf-8")
        (out / RESULTS_FILE).write_text(results.to_json() + "\n", encoding="utf-8")
        for name in REPORT_FILES:
            if (run_dir / name).is_file():
                shutil.copyfile(run_dir / name, out / name)
            else:
                notes.append(f"{run_dir / name}: not in the run folder, not bundled")
        manifest = ReleaseManifest(
            created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            quantgate_version=__version__,
            run=RunInfo(run_id=results.run_id, plan=str(results.plan.get("name")), plan_file=results.plan_file,
                        quantgate_version=results.quantgate_version, started=results.started,
                        finished=results.finished, exit_code=results.exit_code, approved=results.approved,
                        policy=str(results.policy.get("name", "inline")),
                        candidates=[c.name for c in results.candidates]),
            released=[c.name for c in candidates], allow_unapproved=allow_unapproved,
            base_model=base_model_id(results, base_model), baseline=baseline, candidates=candidates, others=others,
            environment=environment_of(results), files=[])
        for c in candidates:
            entries = eval_results(manifest, c, results.plan)
            if entries:
                (out / EVAL_DIR).mkdir(exist_ok=True)
                (out / EVAL_DIR / f"{c.name}.yaml").write_text(
                    yaml.safe_dump(entries, sort_keys=False, allow_unicode=True), encoding="utf-8")
        (out / CARD).write_text(model_card(manifest, results.plan, results.policy, shown_as or out.name), encoding="utf-8")
        manifest.files = [file_entry(p, rel) for rel, p in bundle_files(out)]
        (out / MANIFEST).write_text(json.dumps(manifest.dump(), indent=1) + "\n", encoding="utf-8")
        entries = [(rel, sha256_file(p)) for rel, p in tree_files(out) if rel != SUMS]
        (out / SUMS).write_text(sums_text(entries), encoding="utf-8")
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # never leave half a bundle
        raise
    return manifest, notes


# ------------------------------------------------------------------ MLflow
def log_to_mlflow(results: RunResults, run_dir: Path, bundle: Path, digest: str) -> tuple[str, str]:
    """Log the bundle (without artifacts/) to the run's MLflow parent run and tag it
    ``quantgate.release`` = the bundle's sha256. Returns (status, one line): ``logged``, ``off``
    (the run had no tracking) or ``failed`` (the server or the run could not take it)."""
    tr = results.tracking or {}
    if not tr:
        return "off", f"tracking was off for run {results.run_id}: the bundle is not logged to MLflow"
    parent = tr.get("parent_run_id")
    if not parent:
        return "failed", (f"run {results.run_id} was never logged to MLflow ({tr.get('error') or 'no parent run'}); "
                          f"log it with: quantgate log {run_dir}, then release again")
    from harness.tracking import (
        check_reachable,
        credentialed_uri,
        http_limits,
        mlflow_module,
        redact_uri,
    )

    uri = credentialed_uri(tr.get("uri"))
    if tr.get("local") or not uri:  # the sqlite store in the run folder, wherever the folder is now
        if not (run_dir / "mlflow.db").is_file():
            return "failed", f"the run's MLflow store {run_dir / 'mlflow.db'} is gone"
        uri = f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"
    try:
        with http_limits():
            mlflow_module()
            check_reachable(uri, timeout=float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", 5)))
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=uri)
            client.get_run(parent)
            path = f"release-{digest[:12]}"
            for rel, p in tree_files(bundle):
                if rel.startswith(ARTIFACTS_DIR + "/"):
                    continue  # the model files stay out of MLflow: the manifest names them by hash
                sub = str(Path(path, rel).parent.as_posix())
                client.log_artifact(parent, str(p), sub)
            client.set_tag(parent, "quantgate.release", digest)
            client.set_tag(parent, "quantgate.release.candidates", ",".join(
                json.loads((bundle / MANIFEST).read_text())["released"]))
    except QuantgateError as exc:
        return "failed", f"MLflow: {exc}"
    except Exception as exc:  # unreachable, refused, a missing run: the bundle stands without it
        text = " ".join(str(exc).split())[:300]
        return "failed", f"MLflow at {redact_uri(uri)}: {type(exc).__name__}: {text}"
    return "logged", f"MLflow: logged to parent run {parent} at {redact_uri(uri)} (artifacts {path}/, tag quantgate.release={digest})"
