"""Fidelity to the baseline: token-level KL divergence on identical windows, across runtimes.

The baseline's distributions are computed once, while the items are prepared (with
the baseline's own session), and kept as its top-k log-probabilities per position
plus the log-probability of the actual next token. A candidate's KL(P_base || Q)
sums over the baseline's top-k tokens and adds one term for the remaining mass
(the tail: P's and Q's probability outside those k tokens), so it is exact when
the tail mass is zero and a lower bound otherwise (log-sum inequality).
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import numpy as np
from pydantic import Field

from harness.suites import Suite
from harness.suites.perplexity import PerplexityParams, token_windows


class FidelityParams(PerplexityParams):
    unit: Literal["window"] = "window"
    top_k: int = Field(32, ge=1, le=1024, description="baseline log-probabilities kept per position")
    max_tokens: int = Field(2048, ge=16)


def _round(xs, digits: int = 6) -> list[float]:
    return [float(f"{x:.{digits}g}") for x in xs]


def _percentile(x: np.ndarray, q: float) -> float:
    return float(np.percentile(x, q)) if x.size else float("nan")


class FidelitySuite(Suite):
    name = "fidelity"
    Params = FidelityParams
    version = "1"
    metrics = {
        "kl_mean": "lower", "kl_median": "lower", "kl_p99": "lower", "kl_max": "lower",
        "same_top_rate": "higher", "dp_mean": "higher", "dp_p05": "higher", "dp_p95": "higher",
        "ref_tail_mass_mean": "lower",
    }

    def context_length(self, params: FidelityParams) -> int:
        return params.context_length

    def data_identity(self, params: FidelityParams) -> dict[str, Any]:
        from harness.suites.perplexity import load_text

        return {"text_sha256": hashlib.sha256(load_text(params.dataset, params.newline).encode()).hexdigest()}

    def prepare(self, params: FidelityParams, session) -> dict[str, Any]:
        items = []
        k = params.top_k
        for w, window in enumerate(token_windows(params, session)):
            logp = session.token_distributions(window)
            top = np.argpartition(-logp, k - 1, axis=1)[:, :k]
            top_lp = np.take_along_axis(logp, top, axis=1)
            order = np.argsort(-top_lp, axis=1)  # top-1 first
            top, top_lp = np.take_along_axis(top, order, axis=1), np.take_along_axis(top_lp, order, axis=1)
            target = logp[np.arange(len(window) - 1), window[1:]]
            items.append({"id": f"w{w:04d}", "tokens": window, "ref_top_ids": top.tolist(),
                          "ref_top_logp": [_round(r) for r in top_lp], "ref_target_logp": _round(target)})
        meta = {"dataset": params.dataset, "newline": params.newline, "windows": len(items),
                "context_length": params.context_length, "top_k": k}
        return {"items": items, "meta": meta}

    def score(self, session, items: list[dict], params: FidelityParams) -> list[dict[str, Any]]:
        records = []
        for item in items:
            q = session.token_distributions(item["tokens"])
            top = np.asarray(item["ref_top_ids"])
            p_lp = np.asarray(item["ref_top_logp"], dtype=np.float64)
            q_lp = np.take_along_axis(q, top, axis=1)
            p, q_top = np.exp(p_lp), np.exp(q_lp)
            p_tail = np.clip(1.0 - p.sum(1), 0.0, 1.0)
            q_tail = np.clip(1.0 - q_top.sum(1), 1e-12, 1.0)
            kl = (p * (p_lp - q_lp)).sum(1) + np.where(p_tail > 0, p_tail * np.log(np.maximum(p_tail, 1e-300) / q_tail), 0.0)
            kl = np.maximum(kl, 0.0)
            same_top = q.argmax(1) == top[:, 0]
            targets = np.asarray(item["tokens"][1:])
            dp = np.exp(q[np.arange(len(targets)), targets]) - np.exp(np.asarray(item["ref_target_logp"]))
            records.append({
                "id": item["id"],
                "prompt_hash": hashlib.sha256(np.asarray(item["tokens"], dtype=np.int64).tobytes()).hexdigest()[:16],
                "kl": _round(kl, 5), "dp": _round(dp, 5),
                "same_top": int(same_top.sum()), "n": int(len(targets)),
                "ref_tail_mass": float(p_tail.mean()),
            })
        return records

    def aggregate(self, items: list[dict], records: list[dict], params: FidelityParams) -> dict[str, dict]:
        kl = np.concatenate([np.asarray(r["kl"]) for r in records])
        dp = np.concatenate([np.asarray(r["dp"]) for r in records])
        n = len(records)
        per_window_kl = np.array([np.mean(r["kl"]) for r in records])
        se = float(per_window_kl.std(ddof=1) / np.sqrt(n)) if n > 1 else None
        same = sum(r["same_top"] for r in records) / sum(r["n"] for r in records)
        tokens = int(kl.size)
        return {
            "kl_mean": {"value": float(kl.mean()), "stderr": se, "n": tokens},
            "kl_median": {"value": float(np.median(kl)), "stderr": None, "n": tokens},
            "kl_p99": {"value": _percentile(kl, 99), "stderr": None, "n": tokens},
            "kl_max": {"value": float(kl.max()), "stderr": None, "n": tokens},
            "same_top_rate": {"value": float(same), "stderr": float(np.sqrt(same * (1 - same) / tokens)), "n": tokens},
            "dp_mean": {"value": float(dp.mean()), "stderr": float(dp.std(ddof=1) / np.sqrt(tokens)), "n": tokens},
            "dp_p05": {"value": _percentile(dp, 5), "stderr": None, "n": tokens},
            "dp_p95": {"value": _percentile(dp, 95), "stderr": None, "n": tokens},
            "ref_tail_mass_mean": {"value": float(np.mean([r["ref_tail_mass"] for r in records])), "stderr": None, "n": n},
        }
