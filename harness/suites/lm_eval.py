"""lm-eval as the engine of quantgate's task suites (mmlu, gsm8k, humaneval, json-format).

Each suite names a task YAML under ``suites/lm_eval/`` (in a wheel: the package's shipped
copy, ``harness.resources``; copy one to make your own and point ``task_file`` at it).
``prepare`` (on the baseline) fixes which documents are scored (a seeded subset of
``limit`` documents, stratified by subject where the task has one); ``score`` runs
lm-eval's ``evaluate`` on exactly those documents through the candidate's session
(``harness.lmeval.SessionLM``) with per-sample logging, and turns lm-eval's samples into
quantgate's per-item records (id, prompt hash, response, target, scores) so gates can pair
candidate and baseline item by item.
"""

from __future__ import annotations

import hashlib
import logging
import random
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from harness.resources import shipped_path
from harness.suites import Suite


class LmEvalParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field("local", description="'local' (pinned offline data) or 'hub:DATASET_ID[:CONFIG]'")
    limit: int | None = Field(100, ge=1, description="documents scored (a seeded subset); null: all")
    seed: int = 0
    task_file: str | None = Field(None, description="a task YAML of your own instead of the shipped one")
    context_length: int = Field(2048, ge=64)
    batch_size: int = Field(64, ge=1)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class LmEvalSuite(Suite):
    #: file name under suites/lm_eval/
    task_yaml: ClassVar[str] = ""
    #: each lm-eval ``evaluate`` call costs ~1 s before its first request (measured on the fake
    #: runtime: 20 MMLU items took 12 s in chunks of 2, 1.5 s in one call)
    min_chunk_items = 50
    #: lm-eval (metric, filter) -> quantgate metric name
    metric_map: ClassVar[dict[tuple[str, str], str]] = {}
    #: wrap prompts in the model's chat template (lm-eval's apply_chat_template)
    chat_template: ClassVar[bool] = False
    #: document field that stratifies the subset (round-robin over its values)
    stratify_by: ClassVar[str | None] = None
    #: params.num_fewshot goes to lm-eval's sampler (MMLU builds its own per-subject shots)
    fewshot_by_lm_eval: ClassVar[bool] = False

    def unavailable(self) -> str | None:
        from harness.registry import package_missing

        return package_missing("lm_eval", f"suite {self.name!r}", "lm-eval", "eval")

    # ---- task construction
    def dataset_kwargs(self, params: BaseModel) -> dict[str, Any]:
        return {"source": params.source}

    def task_path(self, params: BaseModel) -> Path:
        # a real file: lm-eval resolves `!function quantgate_tasks.X` next to it
        if params.task_file:
            return Path(params.task_file).expanduser()
        return shipped_path("suites") / "lm_eval" / self.task_yaml

    def task_config(self, params: BaseModel) -> dict[str, Any]:
        from lm_eval.tasks._yaml_loader import load_yaml

        path = self.task_path(params)
        if not path.is_file():
            raise FileNotFoundError(f"lm-eval task file not found: {path}")
        cfg = load_yaml(path, resolve_func=True)
        cfg["dataset_kwargs"] = {**(cfg.get("dataset_kwargs") or {}), **self.dataset_kwargs(params)}
        # suite params that override the task file: the generation budget, lm-eval's few-shot count
        if getattr(params, "max_gen_toks", None):
            cfg["generation_kwargs"] = {**cfg.get("generation_kwargs", {}), "max_gen_toks": params.max_gen_toks}
        if self.fewshot_by_lm_eval and getattr(params, "num_fewshot", None) is not None:
            cfg["num_fewshot"] = params.num_fewshot
        return cfg

    def build_task(self, params: BaseModel):
        from lm_eval.api.task import ConfigurableTask

        # lm-eval warns on every custom_dataset task that --metadata exists: not for us
        task_log = logging.getLogger("lm_eval.api.task")
        level = task_log.level
        task_log.setLevel(logging.ERROR)
        try:
            return ConfigurableTask(config=self.task_config(params))
        finally:
            task_log.setLevel(level)

    def context_length(self, params: BaseModel) -> int:
        return params.context_length

    def data_identity(self, params: BaseModel) -> dict[str, Any]:
        return {"task_yaml_sha256": hashlib.sha256(self.task_path(params).read_bytes()).hexdigest(),
                "dataset_kwargs": self.dataset_kwargs(params)}

    def select(self, docs: list[dict], params: BaseModel) -> list[int]:
        n = len(docs)
        if params.limit is None or params.limit >= n:
            return list(range(n))
        rng = random.Random(params.seed)
        if self.stratify_by:
            groups: dict[str, list[int]] = {}
            for i, d in enumerate(docs):
                groups.setdefault(str(d[self.stratify_by]), []).append(i)
            for idx in groups.values():
                rng.shuffle(idx)
            order = sorted(groups)
            rng.shuffle(order)
            chosen, depth = [], 0
            while len(chosen) < params.limit:
                for g in order:
                    if depth < len(groups[g]) and len(chosen) < params.limit:
                        chosen.append(groups[g][depth])
                depth += 1
            return sorted(chosen)
        return sorted(rng.sample(range(n), params.limit))

    def slice_of(self, doc: dict) -> dict[str, str]:
        """The document's slice label for per-slice metrics: its ``slice`` or ``language``
        field, else the field that stratifies the subset (MMLU subject, JSON-format category)."""
        for key in ("slice", "language", self.stratify_by):
            if key and doc.get(key) not in (None, ""):
                return {"slice": str(doc[key])}
        return {}

    # ---- the suite interface
    def prepare(self, params: BaseModel, session) -> dict[str, Any]:
        task = self.build_task(params)
        docs = list(task.eval_docs)
        chosen = self.select(docs, params)
        items = [{"id": str(docs[i].get("id", i)), "doc_index": i,
                  "prompt_hash": _sha(str(task.doc_to_text(docs[i]))), **self.slice_of(docs[i])} for i in chosen]
        meta = {"task": task.config.task, "task_file": str(self.task_path(params)), "source": params.source,
                "documents": len(docs), "items": len(items),
                "num_fewshot": getattr(params, "num_fewshot", task.config.num_fewshot),
                "chat_template": self.chat_template, "seed": params.seed,
                "lm_eval": _version("lm_eval")}
        return {"items": items, "meta": meta}

    def score(self, session, items: list[dict], params: BaseModel) -> list[dict[str, Any]]:
        from lm_eval.evaluator import evaluate

        from harness.lmeval import SessionLM

        logging.getLogger("lm_eval").setLevel(logging.WARNING)
        # one task per suite object and params: the runner scores items in chunks (progress),
        # and building MMLU's task reads all 14,000 questions (~1.7 s)
        cache_key = params.model_dump_json()
        if getattr(self, "_task_cache", (None, None))[0] != cache_key:
            self._task_cache = (cache_key, self.build_task(params))
        task = self._task_cache[1]
        name = task.config.task
        lm = SessionLM(session, batch_size=params.batch_size)
        # the chosen documents' positions; lm-eval renumbers doc_id within the subset,
        # so records are matched to items through the document's own id
        out = evaluate(lm, {name: task}, samples={name: sorted(it["doc_index"] for it in items)},
                       log_samples=True, bootstrap_iters=0, apply_chat_template=self.chat_template,
                       confirm_run_unsafe_code=True)  # code runs only in harness.sandbox
        by_id: dict[str, dict[str, Any]] = {}
        for sample in out["samples"][name]:
            doc_id = str(sample["doc"].get("id", sample["doc_id"]))
            rec = by_id.setdefault(doc_id, {
                "id": doc_id,
                "prompt_hash": _sha(str(sample["arguments"][0][0])),
                "target": str(sample["target"]),
                "response": _response(sample["resps"]),
                "scores": {},
            })
            filt = sample.get("filter", "none")
            if filt != "none":
                rec.setdefault("filtered", {})[filt] = _response(sample["filtered_resps"])
            for metric in sample.get("metrics", []):
                key = self.metric_map.get((metric, filt))
                if key is not None:
                    rec["scores"][key] = float(sample[metric])
        missing = [it["id"] for it in items if it["id"] not in by_id]
        if missing:
            raise RuntimeError(f"lm-eval returned no sample for {len(missing)} items, e.g. {missing[:3]}")
        return [by_id[it["id"]] for it in items]

    def aggregate(self, items: list[dict], records: list[dict], params: BaseModel) -> dict[str, dict]:
        out = {}
        for metric in self.metrics:
            x = np.array([r["scores"][metric] for r in records if metric in r["scores"]], dtype=np.float64)
            n = int(x.size)
            out[metric] = {"value": float(x.mean()) if n else float("nan"),
                           "stderr": float(x.std(ddof=1) / np.sqrt(n)) if n > 1 else None, "n": n}
        return out


def _response(resps) -> Any:
    """lm-eval's nested response lists, flattened to what the model said (loglikelihood
    requests: their (logprob, is_greedy) pairs)."""
    while isinstance(resps, (list, tuple)) and len(resps) == 1 and isinstance(resps[0], (list, tuple)):
        resps = resps[0]
    if isinstance(resps, (list, tuple)):
        flat = []
        for r in resps:
            r = r[0] if isinstance(r, (list, tuple)) and len(r) == 1 else r
            flat.append([float(r[0]), bool(r[1])] if isinstance(r, (list, tuple)) and len(r) == 2 else r)
        return flat[0] if len(flat) == 1 else flat
    return resps


def _version(dist: str) -> str:
    from harness.registry import package_version

    return package_version(dist.replace("_", "-"))
