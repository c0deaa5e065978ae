"""Reference implementations of the Session hooks the probes use where a runtime offers them,
written for the transformers runtime (``harness.runtimes.transformers.TransformersSession``).

The benchmarks attach them to a loaded session (``attach(session)``); the runtime owners can
move them into the session class as they are. Contracts:

- ``greedy_decode_batch(prompts, n_tokens) -> {"prefill_seconds", "decode_seconds"}``: prompts
  of equal length, prefilled together in one forward pass, then ``n_tokens`` greedy steps of
  the whole batch (EOS ignored); timed with the device synchronized at each boundary.
- ``weight_bytes() -> int``: bytes of weights one batch-1 decode step reads (only needed where
  the probe cannot look at a torch model or the artifact).
"""

from __future__ import annotations

import types


def transformers_greedy_decode_batch(self, prompts: list[list[int]], n_tokens: int) -> dict[str, float]:
    """The runtime's own batch decode (``TransformersSession.greedy_decode_batch``)."""
    from harness.runtimes.transformers import TransformersSession

    if len(prompts[0]) + n_tokens > self.n_ctx:
        raise ValueError(f"prompt of {len(prompts[0])} + {n_tokens} tokens exceeds n_ctx={self.n_ctx}")
    return TransformersSession.greedy_decode_batch(self, prompts, n_tokens)


def attach(session) -> None:
    """Give a transformers session the batch hook (a no-op where it already has one)."""
    if not callable(getattr(session, "greedy_decode_batch", None)):
        session.greedy_decode_batch = types.MethodType(transformers_greedy_decode_batch, session)


def transformers_greedy_decode_last_logits(self, prompt: list[int], n_tokens: int) -> dict[str, float]:
    """``greedy_decode`` with the prefill computing the last position's logits only
    (``logits_to_keep=1``, as ``generate()`` does)."""
    return transformers_greedy_decode_batch_last_logits(self, [prompt], n_tokens)


def transformers_greedy_decode_batch_last_logits(self, prompts: list[list[int]], n_tokens: int) -> dict[str, float]:
    from harness.runtimes.transformers import TransformersSession

    return TransformersSession.greedy_decode_batch(self, prompts, n_tokens, last_logits_only=True)


def attach_last_logits(session) -> None:
    """Both decode entry points with last-position-only prefill logits."""
    session.greedy_decode = types.MethodType(transformers_greedy_decode_last_logits, session)
    session.greedy_decode_batch = types.MethodType(transformers_greedy_decode_batch_last_logits, session)
