"""The ``fake`` quantizer: perturbs the fake model's weights by a declared amount (a test tool).

It reads the baseline of ``harness.runtimes.fake`` (``baseline.model: fake:tiny``) and writes
an artifact the ``fake`` runtime loads. Two perturbations, applied to each weight tensor
(``bigram``, ``trigram``; the trigram index and the copy gains stay exact), in this order:

- ``noise``: Gaussian noise of standard deviation ``noise`` × the tensor's own standard
  deviation. The draws depend on ``seed`` only, so for one seed a larger ``noise`` moves the
  weights further along the same direction and KL and perplexity grow with it;
- ``bits``: row-wise asymmetric uniform rounding to ``2**bits`` levels (per-row minimum and
  step, as GGUF's Q4_1), stored bit-packed, so the artifact shrinks; ``bits_per_weight`` in
  the manifest is the stored bytes per weight, per-row scales included (``bits`` + 0.25).

Measured on 16 WikiText-2 windows of 256 bytes (baseline ``fake:tiny``: perplexity 15.65 per
byte): noise 0.01 / 0.02 / 0.05 / 0.1 / 0.2 / 0.3 / 0.5 give KL 0.00016 / 0.0006 / 0.004 /
0.016 / 0.064 / 0.14 / 0.40 and perplexity +0.1 / +0.3 / +1.0 / +2.9 / +9.3 / +20 / +58%;
bits 8 / 6 / 5 / 4 / 3 / 2 give KL 0.00005 / 0.0006 / 0.0024 / 0.011 / 0.059 / 0.27 and
perplexity +0.06 / +0.17 / +0.6 / +0.8 / +7.8 / +35%, at 0.25 / 0.19 / 0.16 / 0.13 / 0.10 /
0.07 MB (float32: 0.94 MB).

``noise_rows: non-ascii`` adds the noise only to the rows read after a non-ASCII byte: text
with accents (French) breaks while English is untouched, a failure only per-slice metrics see.

``fail`` makes the quantizer fail on purpose, to test error records:

- ``quantize``: raises in the quantize stage;
- ``crash``: the quantize worker process exits abruptly (``os._exit``), as a segfault or the
  OOM killer would end it (in the main process it raises instead: never kills a caller);
- ``load``: writes an artifact that the runtime refuses to load (the error comes in the
  evaluate stage; the artifact itself is stored like any other).
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from harness.quantizers import QuantizeContext, Quantizer


class FakeQuantParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    noise: float = Field(0.0, ge=0, le=10, description="Gaussian noise, relative to each weight tensor's std")
    bits: int | None = Field(None, ge=2, le=8, description="round each row to 2**bits levels (stored packed)")
    seed: int = Field(0, ge=0, description="the noise draws")
    noise_rows: Literal["all", "non-ascii"] = Field("all", description=(
        "test tool: 'non-ascii' adds the noise only to the rows read after a non-ASCII byte (context byte "
        ">= 128): text in accented languages breaks, English is untouched (a per-slice failure)"))
    fail: Literal["quantize", "crash", "load"] | None = Field(
        None, description="test tool: fail on purpose (quantize: raise; crash: the worker dies; load: an "
                          "artifact the runtime refuses)")
    delay_seconds: float = Field(0.0, ge=0, le=600, description="test tool: sleep after writing the file "
                                 "into the scratch folder (a long quantization to interrupt)")
    child_seconds: float = Field(0.0, ge=0, le=600, description="test tool: first start a child process "
                                 "that sleeps this long (stands in for an engine subprocess that must not outlive "
                                 "the worker)")


def perturb(arrays: dict, noise: float, seed: int, rows: str = "all") -> dict:
    """``arrays`` with Gaussian noise added to the weight tensors (float32); same seed, same draws.
    ``rows="non-ascii"``: only the rows whose context byte (the last one read) is >= 128."""
    import numpy as np

    from harness.runtimes.fake import VOCAB_SIZE, WEIGHTS

    out = dict(arrays)
    if noise <= 0:
        return out
    context = {"bigram": np.arange(np.asarray(arrays["bigram"]).shape[0]),
               "trigram": np.asarray(arrays["trigram_keys"], dtype=np.int64) % VOCAB_SIZE}
    for i, name in enumerate(WEIGHTS):
        w = np.asarray(arrays[name], dtype=np.float64)
        z = np.random.default_rng([seed, i]).standard_normal(w.shape)
        if rows == "non-ascii":
            z *= ((context[name] >= 128) & (context[name] < 256))[:, None]
        out[name] = (w + noise * w.std() * z).astype(np.float32)
    return out


class FakeQuantizer(Quantizer):
    name = "fake"
    Params = FakeQuantParams
    input_format = "fake"
    output_format = "fake"

    def versions(self) -> dict[str, str]:
        from harness.runtimes.fake import FILE_FORMAT

        return {"quantgate-fake": FILE_FORMAT}

    def quantize(self, ctx: QuantizeContext, params: FakeQuantParams) -> dict[str, Any]:
        from harness.runtimes import fake

        if params.fail == "quantize":
            raise RuntimeError("fake quantizer: failing on purpose (fail: quantize)")
        if params.fail == "crash":
            import multiprocessing

            if multiprocessing.parent_process() is None:  # not a worker: do not end the caller
                raise RuntimeError("fake quantizer: fail: crash ends only a worker process; raising instead")
            os._exit(70)
        arrays, meta = fake.read_model(ctx.source)
        arrays = perturb(arrays, params.noise, params.seed, params.noise_rows)
        quant_type = f"Q{params.bits}" if params.bits else "F32"
        meta = {**meta, "quantization": {"noise": params.noise, "bits": params.bits, "seed": params.seed,
                                         "type": quant_type,
                                         **({"noise_rows": params.noise_rows} if params.noise_rows != "all" else {})}}
        if params.fail == "load":
            meta["unloadable"] = "written unloadable on purpose (fake quantizer, fail: load)"
        entry = f"model-{quant_type}" + (f"-noise{params.noise:g}" if params.noise else "") + ".npz"
        info = fake.write_model(ctx.out_dir / entry, arrays, meta, bits=params.bits)
        if params.child_seconds:
            import subprocess
            import sys

            subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({params.child_seconds})"])
        if params.delay_seconds:
            import time

            time.sleep(params.delay_seconds)
        return {"entry": entry, "quant_type": quant_type, "noise": params.noise, **info}
