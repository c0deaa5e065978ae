"""Datasets and scorers for quantgate's lm-eval task YAMLs (``suites/lm_eval/*.yaml``).

lm-eval's own tasks load from the hub (and its ``code_eval`` metric loads from the hub
at import), so they fail offline. These loaders read the pinned local files by default
(``source: local``) and a hub dataset id where one is given (``source: hub:ID``); both
produce the same fields, so one task YAML serves both.
"""

from __future__ import annotations

import json
from pathlib import Path

LETTERS = "ABCD"
GSM8K_FEWSHOT_POOL = 100  # offline: first rows of the test file, never scored
MMLU_DEV_PER_SUBJECT = 5


def _dataset_dict(splits: dict[str, list[dict]]):
    import datasets

    return datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()})


def _hub(source: str):
    import datasets

    parts = source[len("hub:"):].split(":")
    return datasets.load_dataset(parts[0], parts[1] if len(parts) > 1 else None)


def _check_source(source: str) -> None:
    if source != "local" and not source.startswith("hub:"):
        raise ValueError(f"source must be 'local' or 'hub:DATASET_ID[:CONFIG]', not {source!r}")


# ------------------------------------------------------------------- MMLU
def _mmlu_block(row: dict, with_answer: bool) -> str:
    text = row["question"].strip() + "".join(f"\n{LETTERS[i]}. {c}" for i, c in enumerate(row["choices"]))
    return text + "\nAnswer:" + (f" {LETTERS[row['answer']]}" if with_answer else "")


def mmlu_rows(source: str = "local") -> tuple[list[dict], dict[str, list[dict]]]:
    """(test rows, dev rows per subject), each row {id, subject, question, choices, answer}."""
    _check_source(source)
    if source == "local":
        from harness import data
        from harness.sources import read_jsonl

        raw = [r for r in read_jsonl(data.fetch_asset("mmlu")) if r.get("correct_answer") in tuple(LETTERS)]
        rows = [{"id": f"mmlu-{i:05d}", "subject": r["topic"].replace(" ", "_"), "question": r["question"],
                 "choices": [r["answer_a"], r["answer_b"], r["answer_c"], r["answer_d"]],
                 "answer": LETTERS.index(r["correct_answer"])} for i, r in enumerate(raw)]
        dev: dict[str, list[dict]] = {}
        test = []
        for row in rows:  # the first questions of each subject stand in for MMLU's dev split
            bucket = dev.setdefault(row["subject"], [])
            (bucket if len(bucket) < MMLU_DEV_PER_SUBJECT else test).append(row)
        return test, dev
    ds = _hub(source if source.count(":") > 1 else source + ":all")

    def norm(split: str) -> list[dict]:
        return [{"id": f"mmlu-{split}-{i:05d}", "subject": r["subject"], "question": r["question"],
                 "choices": list(r["choices"]), "answer": int(r["answer"])} for i, r in enumerate(ds[split])]

    dev = {}
    for row in norm("dev"):
        dev.setdefault(row["subject"], []).append(row)
    return norm("test"), dev


def mmlu_dataset(source: str = "local", num_fewshot: int = 0, **_):
    if not 0 <= int(num_fewshot) <= MMLU_DEV_PER_SUBJECT:
        raise ValueError(f"mmlu num_fewshot must be 0..{MMLU_DEV_PER_SUBJECT}, not {num_fewshot}")
    test, dev = mmlu_rows(source)
    out = []
    for row in test:
        header = f"The following are multiple choice questions (with answers) about {row['subject'].replace('_', ' ')}.\n\n"
        shots = "".join(_mmlu_block(d, True) + "\n\n" for d in dev.get(row["subject"], [])[: int(num_fewshot)])
        out.append({**row, "fewshot": header + shots})
    return _dataset_dict({"test": out})


# ------------------------------------------------------------------ GSM8K
def gsm8k_dataset(source: str = "local", **_):
    _check_source(source)
    if source == "local":
        from harness import data
        from harness.sources import read_jsonl

        rows = [{"id": f"gsm8k-{i:04d}", "question": r["question"], "answer": r["answer"]}
                for i, r in enumerate(read_jsonl(data.local_file("gsm8k")))]
        return _dataset_dict({"train": rows[:GSM8K_FEWSHOT_POOL], "test": rows[GSM8K_FEWSHOT_POOL:]})
    ds = _hub(source if ":" in source[4:] else source + ":main")
    return _dataset_dict({split: [{"id": f"gsm8k-{split}-{i:04d}", "question": r["question"], "answer": r["answer"]}
                                  for i, r in enumerate(ds[split])] for split in ("train", "test")})


# --------------------------------------------------------------- HumanEval
def humaneval_dataset(source: str = "local", **_):
    _check_source(source)
    if source == "local":
        from harness import data
        from harness.sources import read_jsonl

        rows = read_jsonl(data.fetch_asset("humaneval"))
    else:
        rows = list(_hub(source)["test"])
    keep = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
    return _dataset_dict({"test": [{"id": r["task_id"], **{k: r[k] for k in keep}} for r in rows]})


def humaneval_results(doc: dict, results: list[str]) -> dict[str, float]:
    from harness.scoring import humaneval_check

    outcome = humaneval_check(doc, results[0])
    return {"pass@1": float(bool(outcome["passed"]))}


# ------------------------------------------------------------- JSON format
def json_format_dataset(cases: str | None = None, **_):
    from harness.resources import shipped_path
    from harness.scoring import load_cases

    path = Path(cases) if cases else shipped_path("suites") / "json_format" / "cases.jsonl"
    rows = [{"id": c["id"], "category": c.get("category", ""), "prompt": c["prompt"],
             "schema_json": json.dumps(c["schema"], sort_keys=True),
             "expected_json": json.dumps(c["expected"], sort_keys=True)} for c in load_cases(path)]
    return _dataset_dict({"test": rows})


def json_format_results(doc: dict, results: list[str]) -> dict[str, float]:
    from harness.scoring import score_json

    case = {"id": doc["id"], "schema": json.loads(doc["schema_json"]), "expected": json.loads(doc["expected_json"])}
    s = score_json(results[0], case)
    return {"parsed": float(s["parsed"]), "schema_valid": float(s["schema_valid"]), "field_match": float(s["field_match"])}
