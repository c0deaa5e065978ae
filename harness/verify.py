"""``quantgate verify DIR [--artifacts PATH]``: check a release bundle (``harness.release``).

1. **Files.** Every file is hashed again and compared with ``SHA256SUMS`` and with what
   ``manifest.json`` records (its file list and each suite's items file); a file missing,
   added or changed is named.
2. **Gates.** Every gate is decided again from the bundled per-item records, with the code the
   run used: each suite's metrics are aggregated from its items by the suite's own
   ``aggregate`` (as ``harness.stages`` does after scoring), then ``harness.gates.decide``
   decides the bundled policy (``policy.json``, as the run had it) on them. A metric that no
   longer aggregates to what the bundle records, or a verdict that comes out differently, is
   named with both values. No statistics are re-implemented here, and no model is loaded.
3. **Artifacts.** Each released artifact's files are hashed and compared with the manifest:
   the copies under ``DIR/artifacts/<candidate>/`` (``release --include-artifacts``) and/or
   the ones found under ``--artifacts PATH`` (``PATH/<candidate>/``, ``PATH/<artifact key>/``,
   a store's ``PATH/artifacts/<key>/``, or ``PATH`` itself).

``verify`` returns a ``VerifyReport``; the command exits 0 when nothing differs, 1 on any
mismatch, 2 when DIR is not a bundle this quantgate reads (``BundleError``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from harness import __version__
from harness.errors import QuantgateError
from harness.release import (
    ARTIFACTS_DIR,
    MANIFEST,
    RELEASE_SCHEMA,
    SUMS,
    ReleasedRecord,
    ReleaseManifest,
)
from harness.results import Metric, Record, RunResults, SuiteResult
from harness.store import sha256_file, tree_files

_SUM_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")
#: relative difference under which a re-aggregated metric equals the recorded one (float
#: summation order; the values are the same computation on the same numbers)
REL_TOL = 1e-9


class BundleError(QuantgateError):
    """DIR is not a release bundle this quantgate reads."""


@dataclass
class VerifyReport:
    bundle: Path
    files: int = 0
    gates: int = 0
    metrics: int = 0
    artifacts: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def summary(self) -> str:
        arts = "; ".join(self.artifacts) or "none"
        if self.ok:
            return (f"verify {self.bundle}: ok: {self.files} files match SHA256SUMS and manifest.json; "
                    f"{self.metrics} metrics re-aggregated and {self.gates} gates re-decided from the bundled items "
                    f"match; artifacts: {arts}")
        return f"verify {self.bundle}: FAILED: {len(self.mismatches)} mismatches (above); artifacts: {arts}"


# ------------------------------------------------------------------ reading
def load_manifest(folder: Path) -> ReleaseManifest:
    """manifest.json of a bundle, or BundleError (one line)."""
    if not folder.is_dir():
        raise BundleError(f"{folder}: not a folder (give a bundle made by quantgate release)")
    path = folder / MANIFEST
    if not path.is_file():
        raise BundleError(f"{folder}: not a release bundle: no {MANIFEST} (a bundle made by quantgate release has one)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: cannot read it: {exc}") from None
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: not valid JSON: {exc}") from None
    schema = data.get("schema") if isinstance(data, dict) else None
    if schema != RELEASE_SCHEMA:
        raise BundleError(f"{path}: schema {schema!r}: not a release manifest this quantgate reads ({RELEASE_SCHEMA!r})")
    try:
        return ReleaseManifest.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise BundleError(f"{path}: {loc}: {first['msg']} ({err.error_count()} problem(s))") from None


class _Hashes:
    def __init__(self, root: Path):
        self.root = root
        self.memo: dict[str, str | None] = {}

    def of(self, rel: str) -> str | None:
        """sha256 of a file of the bundle, None when it is missing (or outside the bundle)."""
        if rel not in self.memo:
            p = (self.root / rel)
            try:
                inside = p.resolve().is_relative_to(self.root.resolve())
            except OSError:
                inside = False
            self.memo[rel] = sha256_file(p) if inside and p.is_file() else None
        return self.memo[rel]


def _short(h: str | None) -> str:
    return "missing" if h is None else f"{h[:16]}…"


def check_files(folder: Path, manifest: ReleaseManifest, report: VerifyReport) -> _Hashes:
    """SHA256SUMS and manifest.json against the files: one mismatch line per file."""
    hashes = _Hashes(folder)
    claims: dict[str, list[tuple[str, str]]] = {}  # file -> [(who, sha256)]
    sums = folder / SUMS
    listed: set[str] = set()
    if not sums.is_file():
        report.mismatches.append(f"{SUMS}: missing (every file's sha256 is listed there)")
    else:
        for i, line in enumerate(sums.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            m = _SUM_LINE.match(line)
            if not m:
                report.mismatches.append(f"{SUMS}:{i}: not a sha256sum line: {line[:80]!r}")
                continue
            listed.add(m[2])
            claims.setdefault(m[2], []).append((SUMS, m[1].lower()))
    for f in manifest.files:
        claims.setdefault(f.path, []).append((MANIFEST, f.sha256))
    for rec in manifest.decided():
        for sid, entry in rec.suites.items():
            claims.setdefault(entry.file, []).append((f"{MANIFEST} ({rec.name}/{sid} items)", entry.sha256))
    on_disk = {rel for rel, _ in tree_files(folder)}
    in_manifest = {f.path for f in manifest.files}
    for rel in sorted(set(claims) | on_disk):
        if rel == SUMS:
            continue
        found = hashes.of(rel)
        wrong = [(who, want) for who, want in claims.get(rel, []) if want != found]
        if wrong:
            said = "; ".join(f"{who} says {_short(want)}" for who, want in wrong)
            report.mismatches.append(f"{rel}: sha256 {'is ' + _short(found) if found else 'missing'}; {said}")
        missing_from = [w for w, names in ((SUMS, listed), (MANIFEST, in_manifest | {MANIFEST}))
                        if rel not in names and rel in on_disk]
        if missing_from:
            report.mismatches.append(f"{rel}: not listed in {' nor '.join(missing_from)} (a file added to the bundle)")
        if not wrong and not missing_from and found is not None:
            report.files += 1
    return hashes


# ------------------------------------------------------------------ re-deciding
def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b or abs(a - b) <= REL_TOL * max(abs(a), abs(b))


def reaggregate(kind: str, params: dict[str, Any], records: list[dict]) -> dict[str, Metric] | None:
    """A suite's metrics from its per-item records, by the suite's own ``aggregate`` (None:
    the suite is not installed here). Raises what the suite raises on records it cannot read."""
    from harness.suites import REGISTRY

    if kind not in REGISTRY:
        return None
    suite = REGISTRY.get(kind)()
    p = suite.Params.model_validate(params)
    # suites aggregate from their records alone (the items argument is the scorer's input)
    return {m: Metric(**{"better": suite.metrics.get(m), **v}) for m, v in suite.aggregate([], records, p).items()}


def _read_json(folder: Path, rel: str) -> Any:
    return json.loads((folder / rel).read_text(encoding="utf-8"))


def _record(folder: Path, rec: ReleasedRecord, suites_of: dict[str, tuple[str, dict]],
            report: VerifyReport) -> Record:
    """The record as the gates see it, rebuilt from the bundle: items from items/, metrics
    re-aggregated from them."""
    metrics = {k: v.model_copy() for k, v in rec.metrics.items()}
    suites: dict[str, SuiteResult] = {}
    for sid, entry in rec.suites.items():
        try:
            payload = _read_json(folder, entry.file)
            records = payload["records"]
            if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
                raise TypeError("'records' is not a list of objects")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            report.mismatches.append(f"{entry.file}: unreadable items ({type(exc).__name__}: {exc}); the gates on "
                                     f"{sid} are decided without them")
            records = []
        kind, params = suites_of.get(sid, (entry.suite, {}))
        if records:
            agg: dict[str, Metric] | None = {}
            try:
                agg = reaggregate(kind, params, records)
            except Exception as exc:  # the suite's own reader refused the (edited) records
                report.mismatches.append(f"{entry.file}: the {kind} suite cannot aggregate these items "
                                         f"({type(exc).__name__}: {exc})")
            if agg is None:
                report.notes.append(f"{rec.name}/{sid}: suite {kind!r} is not installed here: its metrics are "
                                    "taken as bundled, not re-aggregated")
            for m, new in (agg or {}).items():
                old = entry.metrics.get(m)
                report.metrics += 1
                if old is None or not _same(old.value, new.value):
                    report.mismatches.append(
                        f"{entry.file}: {sid}.{m} aggregates to {new.value!r} from these items; the bundle records "
                        f"{old.value if old is not None else 'nothing'!r}")
                metrics[f"{sid}.{m}"] = new
        suites[sid] = SuiteResult(records=records, result_key=entry.result_key, items_key=entry.items_key,
                                  metrics={m: metrics.get(f"{sid}.{m}", v) for m, v in entry.metrics.items()},
                                  meta=entry.meta)
    return Record(name=rec.name, role=rec.role, status=rec.status, suites=suites, metrics=metrics, probes=rec.probes,
                  noise_floor=rec.noise_floor, calibration_overlap=rec.calibration_overlap)


def redecide(folder: Path, manifest: ReleaseManifest, report: VerifyReport) -> RunResults | None:
    """Decide the bundled policy again on the bundled items (``harness.gates.decide``)."""
    import yaml

    from harness import gates
    from harness.config import GatePolicy

    try:
        policy_data = _read_json(folder, manifest.policy_file)
        policy = GatePolicy.model_validate(policy_data)
    except (OSError, ValueError) as exc:
        first = exc.errors()[0] if isinstance(exc, ValidationError) else None
        why = (f"{'.'.join(map(str, first['loc']))}: {first['msg']}" if first else f"{type(exc).__name__}: {exc}")
        report.mismatches.append(f"{manifest.policy_file}: not a gate policy this quantgate reads ({why}); "
                                 "no gate re-decided")
        return None
    try:
        plan = yaml.safe_load((folder / manifest.plan_file).read_text(encoding="utf-8")) or {}
    except (OSError, ValueError, yaml.YAMLError) as exc:
        report.mismatches.append(f"{manifest.plan_file}: unreadable ({type(exc).__name__}); the suites' params are "
                                 "unknown, metrics taken as bundled")
        plan = {}
    suites_of = {(s.get("name") or s.get("suite")): (s.get("suite"), s.get("params") or {})
                 for s in (plan.get("suites") or []) if isinstance(s, dict)}
    # the whole run as it was decided: a policy may decide across candidates (a correction for
    # multiple tests), so the candidates not released are decided with the released ones
    decided = manifest.decided()
    base = _record(folder, decided[0], suites_of, report)
    cands = [_record(folder, c, suites_of, report) for c in decided[1:]]
    results = RunResults(run_id=manifest.run.run_id, quantgate_version=manifest.run.quantgate_version, plan=plan,
                         policy=policy_data, started=manifest.run.started, finished=manifest.run.finished,
                         wall_seconds=0.0, baseline=base, candidates=cands)
    results = gates.decide(results, policy)
    for old, new in zip(decided, results.records(), strict=True):
        # keyed by (gate, metric): the calibration-overlap rule gives one verdict per suite, one name
        before = {(v.gate, v.metric): v for v in old.verdicts}
        after = {(v.gate, v.metric): v for v in new.verdicts}
        keys = [*before, *(g for g in after if g not in before)]
        for g in keys:
            name = g[0] if sum(k[0] == g[0] for k in keys) == 1 else f"{g[0]} ({g[1]})"
            if g not in after:
                report.mismatches.append(f"gate {old.name}/{name}: bundled {before[g].verdict}, not in the bundled policy")
            elif g not in before:
                report.mismatches.append(f"gate {old.name}/{name}: not bundled, re-decided {after[g].verdict}: "
                                         f"{after[g].reason}")
            elif before[g].verdict != after[g].verdict:
                report.mismatches.append(f"gate {old.name}/{name}: bundled {before[g].verdict}, re-decided "
                                         f"{after[g].verdict}: {after[g].reason}")
            report.gates += 1
        if old.verdict != new.verdict and old.role == "candidate":
            report.mismatches.append(f"candidate {old.name}: bundled {old.verdict}, re-decided {new.verdict}")
    return results


# ------------------------------------------------------------------ artifacts
def _places(folder: Path, rec: ReleasedRecord, artifacts: Path | None) -> list[tuple[str, Path]]:
    art = rec.artifact
    out = []
    if art.included:
        out.append(("bundle", folder / ARTIFACTS_DIR / rec.name))
    if artifacts is not None:
        for p in (artifacts / rec.name, artifacts / art.key, artifacts / "artifacts" / art.key, artifacts):
            if p.is_dir() and any((p / f.path).is_file() for f in art.files):
                out.append(("--artifacts", p))
                break
    return out


def check_artifacts(folder: Path, manifest: ReleaseManifest, artifacts: Path | None, report: VerifyReport) -> None:
    for rec in manifest.candidates:
        art = rec.artifact
        if art is None:
            continue
        places = _places(folder, rec, artifacts)
        if not places:
            if artifacts is not None:
                report.mismatches.append(f"artifact of {rec.name}: none of its files ({art.files[0].path if art.files else '?'}"
                                         f", …) under {artifacts} (looked in {artifacts}/{rec.name}, "
                                         f"{artifacts}/{art.key}, {artifacts}/artifacts/{art.key} and {artifacts})")
            else:
                report.artifacts.append(f"{rec.name} referenced by hash, not checked (--artifacts PATH checks it)")
            continue
        for where, place in places:
            bad = 0
            for f in art.files:
                p = place / f.path
                shown = p.relative_to(folder).as_posix() if where == "bundle" else str(p)
                if not p.is_file():
                    report.mismatches.append(f"{shown}: missing (a file of {rec.name}'s artifact)")
                    bad += 1
                    continue
                found = sha256_file(p)
                if found != f.sha256:
                    report.mismatches.append(f"{shown}: sha256 is {_short(found)}; {MANIFEST} records "
                                             f"{_short(f.sha256)} for {rec.name}'s artifact")
                    bad += 1
            report.artifacts.append(f"{rec.name} ({where}: {len(art.files) - bad}/{len(art.files)} files match)")


def verify(folder: Path, artifacts: Path | None = None) -> VerifyReport:
    """Check a bundle; BundleError when it is not one."""
    folder = Path(folder)
    manifest = load_manifest(folder)
    if artifacts is not None and not Path(artifacts).is_dir():
        raise BundleError(f"--artifacts {artifacts}: not a folder")
    report = VerifyReport(bundle=folder)
    if manifest.run.quantgate_version != __version__:
        report.notes.append(f"the run was decided by quantgate {manifest.run.quantgate_version}; its gates are "
                            f"re-decided here by quantgate {__version__}")
    check_files(folder, manifest, report)
    redecide(folder, manifest, report)
    check_artifacts(folder, manifest, Path(artifacts) if artifacts is not None else None, report)
    return report
