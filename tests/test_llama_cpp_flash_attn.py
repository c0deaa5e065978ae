"""llama.cpp's flash-attention setting: auto as llama.cpp's tools default (on for the CPU),
recorded with results, and entering the result cache key (it changes the numbers a little)."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def test_flash_attn_modes_on_embedded_gguf(qg_home):
    from harness import baseline
    from harness.config import EMBEDDED_MODEL
    from harness.runtimes.llama_cpp import LlamaCppParams, LlamaCppRuntime
    from harness.suites.perplexity import PerplexityParams, token_windows

    path = baseline.derive(EMBEDDED_MODEL, "gguf", log=lambda m: None)
    rt = LlamaCppRuntime()
    assert LlamaCppParams().flash_attn == "auto"
    logp, resolved = {}, {}
    for mode in ("off", "on", "auto"):
        session = rt.load(path, LlamaCppParams(n_threads=1, flash_attn=mode), 256)
        try:
            resolved[mode] = session.info()["flash_attn"]["resolved"]
            window = token_windows(PerplexityParams(context_length=256, max_tokens=256), session)[0]
            logp[mode] = session.token_logprobs(window)
            # the swapped-in context still generates and batches
            assert session.greedy_decode(window[:16], 4)["decode_seconds"] > 0
            assert len(session.greedy_decode_batch([window[:16], window[16:32]], 4)["tokens"]) == 2
        finally:
            session.close()
    assert resolved == {"off": "off", "on": "on", "auto": "on"}
    np.testing.assert_array_equal(logp["auto"], logp["on"])
    # another kernel, the same model: close but not bit-identical
    assert 0 < np.abs(logp["on"] - logp["off"]).max() < 0.05
    assert abs(logp["on"].mean() / logp["off"].mean() - 1) < 1e-3
    assert rt.result_identity(LlamaCppParams(flash_attn="off")) != rt.result_identity(LlamaCppParams())
