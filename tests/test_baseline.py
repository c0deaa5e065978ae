"""The baseline derived from the embedded GGUF: F16 GGUF and BF16 safetensors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harness import baseline
from harness.config import EMBEDDED_MODEL

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def f16_path(qg_home):
    return baseline.derive(EMBEDDED_MODEL, "gguf", log=lambda m: None)


def test_f16_gguf_keeps_metadata_and_tokenizer(f16_path):
    import gguf

    src = gguf.GGUFReader(baseline.source_file(EMBEDDED_MODEL))
    dst = gguf.GGUFReader(f16_path)
    src_keys = {k for k in src.fields if not k.startswith("GGUF.")}
    dst_keys = {k for k in dst.fields if not k.startswith("GGUF.")}
    assert src_keys == dst_keys
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.chat_template",
                "tokenizer.ggml.eos_token_id", "tokenizer.ggml.add_bos_token", "llama.rope.freq_base"):
        assert src.fields[key].contents() == dst.fields[key].contents(), key
    assert dst.fields["general.file_type"].contents() == 1  # MOSTLY_F16
    types = {t.tensor_type.name for t in dst.tensors}
    assert types == {"F16", "F32"}
    assert all(t.tensor_type.name == "F32" for t in dst.tensors if len(t.shape) == 1)
    # the dequantized values are the source's, to F16 rounding
    s = next(t for t in src.tensors if t.name == "blk.0.attn_q.weight")
    d = next(t for t in dst.tensors if t.name == "blk.0.attn_q.weight")
    ref = gguf.quants.dequantize(s.data, s.tensor_type)
    np.testing.assert_allclose(np.asarray(d.data, dtype=np.float32), ref, rtol=1e-3, atol=1e-4)
    # derived once: a second call returns the stored file without rewriting it
    mtime = f16_path.stat().st_mtime_ns
    assert baseline.derive(EMBEDDED_MODEL, "gguf", log=lambda m: None) == f16_path
    assert f16_path.stat().st_mtime_ns == mtime
    manifest = json.loads((f16_path.parent / "manifest.json").read_text())
    assert manifest["source_tensor_types"]["Q4_1"] > 0


def test_bf16_checkpoint_matches_gguf_baseline(f16_path):
    """The BF16 safetensors checkpoint loads in transformers and scores like the F16 GGUF."""
    import llama_cpp
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_dir = baseline.derive(EMBEDDED_MODEL, "hf", log=lambda m: None)
    config = json.loads((hf_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["eos_token_id"] == 2 and config["dtype"] == "bfloat16"
    tok = AutoTokenizer.from_pretrained(hf_dir)
    assert tok.eos_token_id == 2 and tok.eos_token == "<|im_end|>"
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)

    from harness.runtimes.llama_cpp import LlamaCppParams, LlamaCppRuntime
    from harness.suites.perplexity import load_text

    text = load_text("wikitext2", "lf")[:20000]
    session = LlamaCppRuntime().load(f16_path, LlamaCppParams(), 256)
    ids = session.tokenize(text)[:512]
    assert tok(text[:2000]).input_ids[:50] == ids[:50]  # one tokenizer, two runtimes
    nll_gguf, nll_hf = [], []
    with torch.no_grad():
        for w in (ids[:256], ids[256:512]):
            nll_gguf.append(-session.token_logprobs(w).mean())
            logits = model(torch.tensor([w])).logits[0, :-1].double()
            lp = torch.log_softmax(logits, -1)[torch.arange(len(w) - 1), torch.tensor(w[1:])]
            nll_hf.append(-lp.mean().item())
    session.close()
    ppl_gguf, ppl_hf = np.exp(np.mean(nll_gguf)), np.exp(np.mean(nll_hf))
    assert abs(ppl_hf / ppl_gguf - 1) < 0.02, (ppl_gguf, ppl_hf)
    assert isinstance(llama_cpp.__version__, str)
