"""Importance matrix for llama.cpp's i-quants, computed through torch.

llama.cpp's ``imatrix`` tool records, for every matrix multiplication, the mean of
the squared input activations per input column over the calibration tokens; the
quantizer weighs each column's rounding error by it. We compute that same
statistic with forward hooks on the BF16 baseline checkpoint (so no llama.cpp tool
has to be built from source) and hand it to ``llama_model_quantize`` through the C
API's ``llama_model_imatrix_data`` array, keyed by GGUF tensor name.
"""

from __future__ import annotations

import ctypes
import json
from pathlib import Path

import numpy as np


def compute_imatrix(hf_dir: Path, calibration: dict, threads: int | None = None) -> tuple[dict[str, np.ndarray], dict]:
    import gguf
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.calibration import load_calibration_text, sample_windows

    if threads:
        torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    model.eval()
    text = load_calibration_text(calibration["source"])
    need = calibration["samples"] * calibration["seq_len"]
    # tokenize a prefix generous enough for the windows (whole corpus when small)
    ids = tok(text[: max(need * 12, 200_000)]).input_ids
    windows = sample_windows(ids, calibration["samples"], calibration["seq_len"], calibration["seed"])

    arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == model.config.model_type)
    name_map = gguf.get_tensor_name_map(arch, model.config.num_hidden_layers)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []
    for mod_name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        gguf_name = name_map.get_name(mod_name + ".weight", try_suffixes=(".weight",))
        if gguf_name is None:
            continue

        def hook(_m, inputs, _out, key=gguf_name):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).float()
            sums[key] = sums.get(key, 0) + (x * x).sum(0)
            counts[key] = counts.get(key, 0) + x.shape[0]

        hooks.append(module.register_forward_hook(hook))
    with torch.no_grad():
        for w in windows:
            model(torch.tensor([w]))
    for h in hooks:
        h.remove()
    matrix = {k: (sums[k] / counts[k]).numpy().astype(np.float32) for k in sums}
    info = {"tensors": len(matrix), "windows": len(windows), "tokens": sum(len(w) for w in windows),
            "method": "torch forward hooks: mean squared input activation per column"}
    return matrix, info


def cached_imatrix(hf_dir: Path, calibration: dict, threads: int | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """The imatrix for (baseline, calibration), computed once and kept in the store (a sealed
    folder: its files' sha256 are checked on reuse, and a folder that fails is rebuilt).

    The entry appears whole or not at all: it is written into a scratch folder that is renamed
    to ``imatrix/<key>`` only once sealed (a killed quantization leaves only that scratch folder,
    which a later ``Store`` removes). One process computes a given key at a time: another that
    needs it waits for the key's lock, then reuses it."""
    from harness.calibration import calibration_identity
    from harness.store import MANIFEST, Store, atomic_dir, content_key

    store = Store()
    key = content_key({"baseline": str(Path(hf_dir).resolve()), "calibration": calibration_identity(calibration),
                       "method": "torch-hooks/1"})
    folder = store.folder("imatrix", key)
    manifest = store.reusable_manifest("imatrix", key)
    if manifest is None:
        with store.lock("imatrix", key):
            manifest = store.reusable_manifest("imatrix", key)  # computed while this one waited
            if manifest is None:
                matrix, info = compute_imatrix(hf_dir, calibration, threads)
                with atomic_dir(folder) as tmp:
                    np.savez_compressed(tmp / "imatrix.npz", **matrix)
                    store.seal(tmp, {"kind": "imatrix", "info": info})
                manifest = json.loads((folder / MANIFEST).read_text())
    with np.load(folder / "imatrix.npz") as z:
        matrix = {k: z[k] for k in z.files}
    return matrix, {**manifest.get("info", {}), "key": key, "path": str(folder / "imatrix.npz")}


def as_c_array(llama_cpp, matrix: dict[str, np.ndarray]):
    """A NULL-terminated ``llama_model_imatrix_data[]``; keep the returned tuple alive during quantize."""
    entries = (llama_cpp.llama_model_imatrix_data * (len(matrix) + 1))()
    keep = []
    for i, (name, values) in enumerate(sorted(matrix.items())):
        arr = np.ascontiguousarray(values, dtype=np.float32)
        bname = name.encode()
        keep += [arr, bname]
        entries[i].name = bname
        entries[i].data = arr.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        entries[i].size = arr.size
    return entries, keep
