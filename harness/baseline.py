"""The baseline in the formats runtimes and quantizers read.

``gguf``: an F16 GGUF (every quantized tensor dequantized, 1-D tensors kept
F32, all metadata and the tokenizer copied) written with the ``gguf`` package;
from an HF checkpoint folder, the F16 GGUF that llama.cpp's own converter writes
(``harness.converter``: ``convert_hf_to_gguf.py`` at the runtime's llama.cpp revision).
``hf``: a BF16 safetensors checkpoint. transformers 5 loads a GGUF but refuses
to ``save_pretrained`` it, so the model class is rebuilt from its config and
the state dict loaded into it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.config import EMBEDDED_MODEL
from harness.errors import PlanError
from harness.store import HashCache, Store, atomic_dir, content_key, dir_size, hash_cache

F16_NAME = "model-F16.gguf"
HF_NAME = "hf-bf16"
#: the layout of the folder write_hf_bf16 writes, in its store entry's name: a store holding an
#: older layout builds the folder again (2: tokenizer.json of a byte-level BPE vocabulary
#: written as one, so llama.cpp's converter reads it back)
HF_LAYOUT = 2
# GGUF file types that already are an unquantized baseline
_FLOAT_FILE_TYPES = {0: "F32", 1: "F16", 32: "BF16"}


def source_file(model: str, log=print) -> Path:
    """The file or folder a baseline ``model`` string names (fetching the embedded one, or
    checking the unpacked one against its pin)."""
    if model == EMBEDDED_MODEL:
        from harness.data import fetch_asset

        return fetch_asset("smollm2-135m", log=log)
    if model.startswith("embedded:"):
        raise PlanError(f"baseline.model: unknown embedded model {model!r}; allowed: {EMBEDDED_MODEL}")
    path = Path(model).expanduser()
    if not path.exists():
        raise PlanError(f"baseline.model: {model!r} is neither {EMBEDDED_MODEL!r} nor an existing file or folder")
    return path


def source_key(path: Path, hashes: HashCache | None = None) -> str:
    """The baseline's identity from its bytes (the embedded model's too: ``source_file`` has
    checked that file against its pin), hashed through the store's cache."""
    hashes = hashes or hash_cache()
    if path.is_file():
        return hashes.sha256(path)[:24]
    # an HF folder: hash its weights and config
    parts = {p.name: hashes.sha256(p) for p in sorted(path.iterdir()) if p.suffix in (".json", ".safetensors")}
    return content_key(parts)


def gguf_file_type(path: Path) -> int | None:
    import gguf

    field = gguf.GGUFReader(path).fields.get("general.file_type")
    return int(field.contents()) if field is not None else None


def write_f16_gguf(src: Path, dst: Path) -> dict[str, Any]:
    """Dequantize every tensor of ``src`` into an F16 GGUF at ``dst``."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(str(dst), arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "general.file_type"):
            continue
        vtype = field.types[0]
        sub = field.types[1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    source_types: dict[str, int] = {}
    for t in reader.tensors:
        source_types[t.tensor_type.name] = source_types.get(t.tensor_type.name, 0) + 1
        data = gguf.quants.dequantize(t.data, t.tensor_type)
        # norms and other 1-D tensors stay F32, as llama.cpp's converter writes them
        data = data.astype(np.float32 if data.ndim == 1 else np.float16)
        writer.add_tensor(t.name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"source_tensor_types": source_types, "tensors": len(reader.tensors)}


def write_hf_bf16(src_gguf: Path, dst: Path) -> dict[str, Any]:
    """A BF16 safetensors checkpoint (model + tokenizer) from a GGUF through transformers."""
    import gguf
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = src_gguf.parent, src_gguf.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the gguf "quantization" is only how it was read
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    state = {k: v.to(torch.bfloat16) for k, v in loaded.state_dict().items()}
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(f"state dict mismatch: missing {result.missing_keys}, unexpected {result.unexpected_keys}")
    # Special tokens must agree with the GGUF (transformers' conversion has written
    # eos=<|im_start|> for this model in some versions).
    fields = gguf.GGUFReader(src_gguf).fields
    eos_id = int(fields["tokenizer.ggml.eos_token_id"].contents())
    eos_tok = tokenizer.convert_ids_to_tokens(eos_id)
    tokenizer.eos_token = eos_tok
    model.config.eos_token_id = eos_id
    if model.generation_config is not None:
        model.generation_config.eos_token_id = eos_id
    model.save_pretrained(dst, safe_serialization=True)
    tokenizer.save_pretrained(dst)
    info = {"eos_token": eos_tok, "eos_token_id": eos_id, "dtype": "bfloat16"}
    if str(fields["tokenizer.ggml.model"].contents()) == "gpt2" and _as_byte_level_bpe(dst / "tokenizer.json"):
        info["tokenizer_fix"] = "byte-level BPE: byte_fallback off, ByteLevel decoder"
    return info


def _as_byte_level_bpe(path: Path) -> bool:
    """transformers 5 writes a GGUF's byte-level BPE vocabulary ("gpt2") as a tokenizer.json with
    byte fallback on and a SentencePiece-style decoder (ByteFallback, Fuse, Replace U+2581 with a
    space, ByteLevel). Encoding does not change (its ByteLevel pre-tokenizer maps every byte to a
    vocabulary symbol, so nothing falls back), but llama.cpp's convert_hf_to_gguf.py takes such a
    file for a SentencePiece vocabulary: the GGUF it writes tokenizes differently (no merges) or,
    where the vocabulary is smaller than the embedding, does not load. Written here as the model's
    own repository ships a byte-level BPE. False when the file is not one (left as it is)."""
    import json

    tok = json.loads(path.read_text(encoding="utf-8"))
    model, pre = tok.get("model") or {}, tok.get("pre_tokenizer") or {}
    pres = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    if model.get("type") != "BPE" or not any(p.get("type") == "ByteLevel" for p in pres):
        return False
    model["byte_fallback"] = False
    tok["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    path.write_text(json.dumps(tok, ensure_ascii=False, indent=2), encoding="utf-8")
    return True


def derive(model: str, fmt: str, store: Store | None = None, log=print) -> Path:
    """Path of the baseline in format ``fmt`` ("gguf" or "hf"; "fake" for ``fake:<name>``),
    built once into the store."""
    from harness.runtimes import runtime_owning

    store = store or Store(log=log)
    owner = runtime_owning(model)
    if owner is not None:
        return _derive_owned(owner, model, fmt, store, log)
    src = source_file(model, log)
    key = source_key(src, store.hashes)
    if fmt == "gguf":
        if src.is_file() and gguf_file_type(src) in _FLOAT_FILE_TYPES:
            return src  # already unquantized
        if not src.is_file():
            return derive_gguf_from_hf(src, key, store, log)
        def build_f16(tmp: Path) -> None:
            log(f"deriving F16 GGUF baseline from {src.name}")
            t0 = time.perf_counter()
            info = write_f16_gguf(src, tmp / F16_NAME)
            _write_manifest(store, tmp, src, key, "gguf-f16", F16_NAME, t0, info)

        return _derive_once(store, f"{key}-f16", build_f16, log) / F16_NAME
    if fmt == "hf":
        if src.is_dir():
            return src
        def build_hf(tmp: Path) -> None:
            log(f"deriving BF16 safetensors baseline from {src.name}")
            t0 = time.perf_counter()
            info = write_hf_bf16(src, tmp / HF_NAME)
            _write_manifest(store, tmp, src, key, "hf-bf16", HF_NAME, t0, info)

        return _derive_once(store, f"{key}-hf-bf16-v{HF_LAYOUT}", build_hf, log) / HF_NAME
    raise ValueError(f"unknown baseline format {fmt!r}")


def derive_gguf_from_hf(src: Path, key: str, store: Store, log=print, outtype: str = "f16") -> Path:
    """An F16 (or ``outtype``) GGUF of the HF checkpoint folder ``src`` (content key ``key``),
    written by llama.cpp's own ``convert_hf_to_gguf.py`` (``harness.converter``) into
    ``baselines/<key>-convert-<outtype>``. Its output is the stage log and ``convert.log``."""
    from harness import converter
    from harness.registry import package_version

    name = f"model-{outtype.upper()}.gguf"

    def build(tmp: Path) -> None:
        log(f"converting the HF checkpoint {src} to a {outtype.upper()} GGUF with llama.cpp's converter")
        t0 = time.perf_counter()
        info = converter.convert(src, tmp / name, outtype, store=store, log=log, log_file=tmp / "convert.log")
        versions = {p: package_version(p) for p in ("gguf", "transformers", "torch", "sentencepiece", "numpy")}
        versions.update({"convert_hf_to_gguf.py": converter.CONVERTER_SHA256,
                         converter.SDIST: converter.SDIST_SHA256, "gguf-py (vendored)": info["gguf_py_version"]})
        _write_manifest(store, tmp, src, key, f"gguf-{outtype}-converted", name, t0,
                        {"converter": info["converter"], "versions": versions})

    return _derive_once(store, f"{key}-convert-{outtype}", build, log) / name


def _derive_owned(runtime, model: str, fmt: str, store: Store, log) -> Path:
    """A model a runtime owns (``fake:tiny``: fitted from text bundled with the fake runtime; no
    source file), stored like any derived baseline under the key the runtime gives it."""
    why = runtime.check_baseline(model)
    if why:
        raise PlanError(f"baseline.model: {why}")
    if fmt not in runtime.accepts:
        raise PlanError(f"baseline.model: {model!r} exists only in format {runtime.accepts[0]!r}, not {fmt!r}")
    key = runtime.baseline_key(model)

    def build(tmp: Path) -> None:
        log(f"fitting the {runtime.name} baseline {model}")
        t0 = time.perf_counter()
        info = runtime.write_baseline(model, tmp)
        store.seal(tmp, {"kind": runtime.name, "entry": runtime.baseline_entry, "source": model, "source_key": key,
                         "size_bytes": dir_size(tmp / runtime.baseline_entry),
                         "seconds": round(time.perf_counter() - t0, 3), "versions": runtime.versions(), **info})

    return _derive_once(store, f"{key}-{fmt}", build, log) / runtime.baseline_entry


def _derive_once(store: Store, name: str, build: Callable[[Path], None], log) -> Path:
    """``baselines/<name>``, built by ``build`` (into a scratch folder that becomes the entry
    once complete) unless a reusable one is there. One builder per entry at a time: another
    process deriving the same entry holds its lock; this one waits, then reuses the result."""
    folder = store.folder("baselines", name)
    if store.reusable_manifest("baselines", name) is not None:
        return folder
    with store.lock("baselines", name, on_wait=log):
        if store.reusable_manifest("baselines", name) is None:  # not built while this one waited
            with atomic_dir(folder) as tmp:
                build(tmp)
    return folder


def _write_manifest(store: Store, folder: Path, src: Path, key: str, kind: str, entry: str, t0: float,
                    info: dict) -> None:
    """The manifest, sealed with the sha256 of every file the folder holds."""
    from harness.registry import package_version

    manifest = {
        "kind": kind,
        "entry": entry,
        "source": str(src),
        "source_key": key,
        "size_bytes": dir_size(folder / entry),
        "seconds": round(time.perf_counter() - t0, 3),
        "versions": {p: package_version(p) for p in ("gguf", "transformers", "torch")},
        **info,
    }
    store.seal(folder, manifest)
