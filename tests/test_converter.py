"""An HF checkpoint folder as a GGUF baseline, through llama.cpp's own converter
(harness/converter.py: ``convert_hf_to_gguf.py`` from the llama-cpp-python 0.3.36 sdist).

The real-model checks run on the embedded model's BF16 folder (derived from its GGUF):
(a) the converted F16 GGUF holds the BF16 weights exactly (checked against the safetensors
with our own name map and q/k permutation, and against the dequantized source GGUF);
(b) its perplexity on the smoke windows matches transformers' on the BF16 folder within 0.1%;
(c) Q4_K_M (and IQ4_XS with an importance matrix) from the HF baseline through ``quantgate
run``, Q4_K_M compared with Q4_K_M from the embedded GGUF path.
"""

from __future__ import annotations

import json
import os
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from harness import converter
from tests.conftest import run_cli

#: the sdist where this project's machines keep one (else pip downloads it, once per store)
LOCAL_SDIST = Path("/tmp/sdist") / converter.SDIST


@pytest.fixture(scope="session")
def sdist_env():
    if not os.environ.get(converter.SDIST_ENV) and LOCAL_SDIST.is_file():
        os.environ[converter.SDIST_ENV] = str(LOCAL_SDIST)
    yield


@pytest.fixture(scope="session")
def converter_dir(qg_home, sdist_env) -> Path:
    return converter.ensure_converter(log=lambda m: None)


def _write_folder(folder: Path, config: dict | None) -> Path:
    """An HF-looking folder: config.json (unless None) and one readable, empty safetensors file."""
    folder.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    header = json.dumps({"__metadata__": {"format": "pt"}}).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    return folder


def _plan(path: Path, model: str, candidates: list[dict], baseline_runtime: str = "llama-cpp") -> Path:
    plan = {
        "name": path.stem,
        "baseline": {"name": "base", "model": model, "runtime": {"name": baseline_runtime, "params": {"n_threads": 2}}},
        "candidates": candidates,
        "suites": [{"suite": "perplexity", "name": "wikitext2",
                    "params": {"dataset": "wikitext2", "context_length": 512, "max_tokens": 8192, "newline": "lf"}}],
        "probes": {"size": {}},
        "gates": [{"name": "ppl-increase", "kind": "max_increase_pct", "metric": "wikitext2.ppl", "max_pct": 10}],
        "tracking": {"enabled": False},
    }
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


Q4_K_M = {"name": "q4_k_m", "quantizer": {"method": "gguf", "params": {"type": "Q4_K_M"}},
          "runtime": {"name": "llama-cpp", "params": {"n_threads": 2}}}


# ------------------------------------------------------------------ no model
def test_one_pin_for_the_sdist():
    import benchmarks.llama_tools as tools

    assert tools.SDIST_SHA256 == converter.SDIST_SHA256 and tools.SDIST == converter.SDIST


def test_architectures_read_without_import(tmp_path):
    (tmp_path / "conversion").mkdir()
    (tmp_path / "conversion" / "__init__.py").write_text(
        'import nothing_that_exists\nTEXT_MODEL_MAP: dict[str, str] = {"LlamaForCausalLM": "llama", "XModel": "x"}\n')
    assert converter.supported_architectures(tmp_path) == {"LlamaForCausalLM", "XModel"}
    old = tmp_path / "old"
    old.mkdir()
    (old / converter.CONVERTER).write_text('@ModelBase.register("AForCausalLM", "BModel")\nclass A: pass\n')
    assert converter.supported_architectures(old) == {"AForCausalLM", "BModel"}
    # the architecture the converter picks: a text_config's, else architectures[0]
    assert converter.architecture({"architectures": ["Top"], "text_config": {"architectures": ["Text"]}}) == "Text"
    assert converter.architecture({"architectures": ["LlamaForCausalLM"]}) == "LlamaForCausalLM"
    assert converter.architecture({}) is None


def test_last_error_line():
    out = ["INFO:hf-to-gguf:Loading model: x", "Traceback (most recent call last):", '  File "a.py"',
           "KeyError: 'num_attention_heads'", ""]
    assert converter.last_error_line(out) == "KeyError: 'num_attention_heads'"
    assert converter.last_error_line(["ERROR:hf-to-gguf:Model Foo is not supported", "done"]) == \
        "ERROR:hf-to-gguf:Model Foo is not supported"
    assert converter.last_error_line([]) == "no output"


def test_converter_extracted_once_and_pinned(converter_dir):
    """Only the converter, its model classes, gguf-py and the requirements come out of the sdist,
    sealed in the store; the converter's sha256 is the pin; sentencepiece is in its requirements."""
    from harness.store import Store

    assert converter_dir.name == f"convert-{converter.SDIST_SHA256[:12]}"
    names = {p.name for p in converter_dir.iterdir()}
    assert names == {"convert_hf_to_gguf.py", "conversion", "gguf-py", "requirements", "LICENSE", "manifest.json"}
    manifest = json.loads((converter_dir / "manifest.json").read_text())
    assert manifest["converter_sha256"] == converter.CONVERTER_SHA256
    assert manifest["sdist_sha256"] == converter.SDIST_SHA256
    reqs = (converter_dir / "requirements").glob("*.txt")  # the converter's, and the legacy one it includes
    assert "sentencepiece" in "".join(p.read_text() for p in reqs)
    assert "LlamaForCausalLM" in converter.supported_architectures(converter_dir)
    mtime = (converter_dir / "manifest.json").stat().st_mtime_ns
    assert converter.ensure_converter(Store(log=lambda m: None), log=lambda m: None) == converter_dir
    assert (converter_dir / "manifest.json").stat().st_mtime_ns == mtime  # reused, not extracted again


def test_sdist_with_another_hash_is_refused(tmp_path, monkeypatch):
    from harness.errors import DataError

    bad = tmp_path / converter.SDIST
    bad.write_bytes(b"not the sdist")
    monkeypatch.setenv(converter.SDIST_ENV, str(bad))
    with pytest.raises(DataError, match="is not the pinned"):
        converter.fetch_sdist(tmp_path, log=lambda m: None)


def test_validate_refuses_folder_without_config(qg_home, tmp_path):
    folder = _write_folder(tmp_path / "noconfig", None)
    plan = _plan(tmp_path / "noconfig.yaml", str(folder), [Q4_K_M])
    res = run_cli("validate", str(plan))
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "baseline.model" in lines[0] and "without config.json" in lines[0], res.stderr


def test_validate_refuses_unsupported_architecture(converter_dir, tmp_path):
    folder = _write_folder(tmp_path / "notamodel", {"architectures": ["NotAModel"], "model_type": "x"})
    plan = _plan(tmp_path / "notamodel.yaml", str(folder), [Q4_K_M])
    res = run_cli("validate", str(plan))
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert "baseline.model" in lines[0] and "'NotAModel' is not one llama.cpp's convert_hf_to_gguf.py converts" \
        in lines[0], lines[0]
    # no GGUF needed (an HF baseline on transformers, an HF-input candidate): the folder is not asked
    # to convert, so only the usual checks apply
    hf_only = _plan(tmp_path / "hfonly.yaml", str(folder),
                    [{"name": "same", "quantizer": {"method": "unquantized", "params": {"format": "hf"}},
                      "runtime": {"name": "transformers"}}], baseline_runtime="transformers")
    res = run_cli("validate", str(hf_only))
    assert "NotAModel" not in res.stdout + res.stderr


def test_derive_refuses_unsupported_architecture(converter_dir, tmp_path):
    from harness import baseline
    from harness.errors import PlanError

    folder = _write_folder(tmp_path / "notamodel", {"architectures": ["NotAModel"]})
    with pytest.raises(PlanError, match="'NotAModel' is not one"):
        baseline.derive(str(folder), "gguf", log=lambda m: None)


@pytest.mark.slow
def test_converter_failure_names_its_last_error_line(converter_dir, tmp_path):
    """A supported architecture whose folder the converter cannot read: the error is the
    converter's own last error line (here: no weights / hparams it needs)."""
    folder = _write_folder(tmp_path / "broken", {"architectures": ["LlamaForCausalLM"], "model_type": "llama"})
    with pytest.raises(RuntimeError, match=r"convert_hf_to_gguf\.py failed on .* \(exit [1-9]\d*\): \S") as err:
        converter.convert(folder, tmp_path / "out.gguf", log=lambda m: None)
    print(err.value)


# ------------------------------------------------------------------ the embedded model's BF16 folder
@pytest.fixture(scope="module")
def hf_dir(qg_home) -> Path:
    """The embedded model's BF16 folder as ``baseline.derive(EMBEDDED_MODEL, "hf")`` writes it.
    Its tokenizer.json must be a byte-level BPE as SmolLM2's repository ships one: transformers 5
    writes a GGUF's "gpt2" vocabulary with ``byte_fallback: true`` and a SentencePiece decoder,
    which llama.cpp's converter reads as a Llama SentencePiece vocabulary (no merges: llama.cpp
    tokenizes text differently); ``harness.baseline`` rewrites it."""
    from harness import baseline
    from harness.config import EMBEDDED_MODEL

    return baseline.derive(EMBEDDED_MODEL, "hf", log=lambda m: None)


@pytest.mark.slow  # derives the BF16 folder: ~50 s on 2 cores
def test_derived_tokenizer_is_byte_level_bpe(hf_dir):
    """The derived folder's tokenizer: byte fallback off, a ByteLevel decoder; text with
    spaces, digits, punctuation and non-ASCII comes back unchanged from encode -> decode."""
    from transformers import AutoTokenizer

    tok = json.loads((hf_dir / "tokenizer.json").read_text(encoding="utf-8"))
    assert tok["model"]["type"] == "BPE" and tok["model"]["byte_fallback"] is False
    assert tok["decoder"]["type"] == "ByteLevel"
    manifest = json.loads((hf_dir.parent / "manifest.json").read_text())
    assert manifest["tokenizer_fix"].startswith("byte-level BPE")
    text = " The 2024 run, at 3.5 GiB: caf\u00e9 \u2014 na\u00efve \u2581 \U0001f600 end.\n  x"
    t = AutoTokenizer.from_pretrained(hf_dir)
    assert t.decode(t(text, add_special_tokens=False)["input_ids"]) == text


@pytest.fixture(scope="module")
def converted(hf_dir, converter_dir) -> tuple[Path, float]:
    """The F16 GGUF of the BF16 folder (derived into the store) and the conversion's seconds."""
    from harness import baseline

    t0 = time.perf_counter()
    path = baseline.derive(str(hf_dir), "gguf", log=lambda m: None)
    return path, time.perf_counter() - t0


def _bf16_round(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 (round to nearest even, as torch's .to(bfloat16)) -> float32."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return u.astype(np.uint32).view(np.float32)


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order (its converter's LlamaModel.permute), in numpy."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_HF_TO_GGUF = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
               "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def _gguf_name(hf: str) -> str:
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    _, _, layer, rest = hf.split(".", 3)
    module, _, kind = rest.rpartition(".")
    return f"blk.{layer}.{_HF_TO_GGUF[module]}.{kind}"


@pytest.mark.slow
def test_converted_gguf_holds_the_bf16_weights(hf_dir, converted):
    """(a) Tensor by tensor, read with gguf-py and safetensors (no llama.cpp): every 2-D tensor is
    the BF16 weight in F16 (q/k in llama.cpp's permuted row order), every 1-D one in F32 --
    exactly; and the whole chain from the embedded Q4_1 GGUF (dequantize -> BF16 folder -> converter)
    gives F16(BF16(dequantized source)) exactly. The max abs diff against the harness's own F16
    baseline (the source dequantized straight to F16) is the BF16 rounding, printed."""
    import gguf
    from safetensors.torch import load_file

    from harness import baseline
    from harness.config import EMBEDDED_MODEL

    path, seconds = converted
    manifest = json.loads((path.parent / "manifest.json").read_text())
    assert manifest["kind"] == "gguf-f16-converted"
    assert manifest["versions"]["convert_hf_to_gguf.py"] == converter.CONVERTER_SHA256
    assert manifest["versions"][converter.SDIST] == converter.SDIST_SHA256
    assert manifest["converter"]["architecture"] == "LlamaForCausalLM"
    fields = gguf.GGUFReader(path).fields
    assert fields["tokenizer.ggml.model"].contents() == "gpt2" and fields["tokenizer.ggml.pre"].contents() == "smollm"
    assert (path.parent / "convert.log").is_file()
    config = json.loads((hf_dir / "config.json").read_text())
    n_head, n_kv = config["num_attention_heads"], config["num_key_value_heads"]

    conv = {t.name: t for t in gguf.GGUFReader(path).tensors}
    assert gguf.GGUFReader(path).fields["general.file_type"].contents() == 1  # MOSTLY_F16
    state = {}
    for f in sorted(hf_dir.glob("*.safetensors")):
        state.update(load_file(f))
    expected_names = {_gguf_name(k) for k in state}
    assert set(conv) == expected_names, set(conv) ^ expected_names
    for hf_name, tensor in state.items():
        w = tensor.float().numpy()
        name = _gguf_name(hf_name)
        if name.endswith("attn_q.weight"):
            w = _permute(w, n_head)
        elif name.endswith("attn_k.weight"):
            w = _permute(w, n_kv)
        t = conv[name]
        got = np.asarray(t.data)
        if w.ndim == 1:
            assert t.tensor_type.name == "F32", name
            np.testing.assert_array_equal(got, w, err_msg=name)
        else:
            assert t.tensor_type.name == "F16", name
            assert got.shape == w.shape, name
            np.testing.assert_array_equal(got, w.astype(np.float16), err_msg=name)

    # the chain from the source: the embedded Q4_1 GGUF dequantized, rounded to BF16 (the folder),
    # then to F16 (the converter); and the harness's F16 baseline (no BF16 step) beside it
    src = {t.name: t for t in gguf.GGUFReader(baseline.source_file(EMBEDDED_MODEL, log=lambda m: None)).tensors}
    f16 = {t.name: t for t in gguf.GGUFReader(baseline.derive(EMBEDDED_MODEL, "gguf", log=lambda m: None)).tensors}
    assert set(src) == set(conv) == set(f16)
    max_diff, max_rel = 0.0, 0.0
    for name, t in conv.items():
        x = gguf.quants.dequantize(src[name].data, src[name].tensor_type).astype(np.float32)
        want = _bf16_round(x)
        want = want if want.ndim == 1 else want.astype(np.float16).astype(np.float32)
        got = np.asarray(t.data, dtype=np.float32)
        np.testing.assert_array_equal(got, want, err_msg=name)
        ref = np.asarray(f16[name].data, dtype=np.float32)
        diff = np.abs(got - ref)
        max_diff = max(max_diff, float(diff.max()))
        max_rel = max(max_rel, float((diff / np.maximum(np.abs(ref), 1e-3)).max()))
    print(f"\nconversion: {seconds:.1f} s ({manifest['converter']['seconds']} s in convert_hf_to_gguf.py); "
          f"{len(conv)} tensors equal to the BF16 weights; vs the harness's F16 baseline: max abs diff "
          f"{max_diff:.3g}, max rel diff {max_rel:.3g} (BF16 rounding)")
    # BF16 keeps 8 significant bits: rounding moves a value by at most 2^-8 of it; F16 (11 bits) adds 2^-11
    assert max_rel <= 2 ** -8 + 2 ** -11


@pytest.mark.heavy  # 16 windows on transformers and on llama.cpp: ~2 min on 2 cores (nox -s heavy, in CI)
def test_converted_gguf_perplexity_matches_transformers(hf_dir, converted):
    """(b) The smoke windows (WikiText-2, 16 x 512 tokens, tokenized by the BF16 folder's
    tokenizer): perplexity of the converted F16 GGUF on llama.cpp within 0.1% of transformers'
    on the BF16 folder; llama.cpp's tokenizer from the GGUF gives the same ids."""
    from harness.runtimes.llama_cpp import LlamaCppParams, LlamaCppRuntime
    from harness.runtimes.transformers import TransformersParams, TransformersRuntime
    from harness.suites.perplexity import PerplexityParams, PerplexitySuite, load_text

    suite = PerplexitySuite()
    params = PerplexityParams(dataset="wikitext2", context_length=512, max_tokens=8192, newline="lf")
    hf = TransformersRuntime().load(hf_dir, TransformersParams(n_threads=2), 512)
    gg = LlamaCppRuntime().load(converted[0], LlamaCppParams(n_threads=2), 512)
    try:
        text = load_text("wikitext2", "lf")[:20000]
        ids = hf.tokenize(text)
        assert gg.tokenize(text) == ids  # one tokenizer in both formats
        assert gg.detokenize(ids) == text.encode()
        from transformers import AutoTokenizer

        derived = AutoTokenizer.from_pretrained((hf_dir / "config.json").resolve().parent)
        assert derived(text, add_special_tokens=False).input_ids == ids  # the derived folder encodes alike
        items = suite.prepare(params, hf)["items"]
        assert len(items) == 16
        t0 = time.perf_counter()
        ppl_hf = suite.aggregate(items, suite.score(hf, items, params), params)["ppl"]
        t1 = time.perf_counter()
        ppl_gg = suite.aggregate(items, suite.score(gg, items, params), params)["ppl"]
        t2 = time.perf_counter()
    finally:
        gg.close()
        hf.close()
    rel = ppl_gg["value"] / ppl_hf["value"] - 1
    print(f"\nppl transformers BF16 {ppl_hf['value']:.4f} (+-{ppl_hf['stderr']:.3f}, {t1 - t0:.0f} s), "
          f"llama.cpp converted F16 {ppl_gg['value']:.4f} ({t2 - t1:.0f} s): {rel * 100:+.4f}%")
    assert abs(rel) < 0.001, (ppl_hf, ppl_gg)


def _run(plan: Path, reports: Path) -> dict:
    res = run_cli("run", str(plan), "--reports-dir", str(reports), "--no-tracking")
    assert res.returncode in (0, 1), res.stdout[-3000:] + res.stderr[-3000:]
    return json.loads((next(reports.iterdir()) / "results.json").read_text())


@pytest.mark.heavy  # two full runs with an importance matrix: 11-16 min on a loaded 2-core machine
def test_q4_k_m_from_hf_baseline_matches_gguf_path(hf_dir, converted, tmp_path):
    """(c) A plan whose baseline is the BF16 folder (on llama.cpp: the converted F16 GGUF) runs
    Q4_K_M and IQ4_XS (importance matrix from the folder) through ``quantgate run``; its Q4_K_M
    scores like Q4_K_M made from the embedded GGUF path. Compared: the two Q4_K_M perplexities,
    window by window (the same token windows), against the paired noise -- the standard error of
    the mean per-token log-ratio over the 16 windows -- and against the width of each run's paired
    gate interval."""
    iq4 = {"name": "iq4_xs", "quantizer": {"method": "gguf", "params": {"type": "IQ4_XS"},
                                           "calibration": {"source": "wikitext2", "samples": 8, "seq_len": 128}},
           "runtime": {"name": "llama-cpp", "params": {"n_threads": 2}}}
    from_hf = _run(_plan(tmp_path / "from-hf.yaml", str(hf_dir), [Q4_K_M, iq4]), tmp_path / "hf")
    from_gguf = _run(_plan(tmp_path / "from-gguf.yaml", "embedded:smollm2-135m", [Q4_K_M]), tmp_path / "gguf")

    base = from_hf["baseline"]
    assert base["status"] == "ok", base["error"]
    assert base["artifact"]["manifest"]["kind"] == "gguf-f16-converted"
    cands = {c["name"]: c for c in from_hf["candidates"]}
    for c in cands.values():
        assert c["status"] == "ok", c["error"]
    assert cands["q4_k_m"]["artifact"]["key"] != from_gguf["candidates"][0]["artifact"]["key"]
    assert cands["iq4_xs"]["artifact"]["manifest"]["imatrix"]
    a, b = cands["q4_k_m"], from_gguf["candidates"][0]
    ra, rb = a["suites"]["wikitext2"]["records"], b["suites"]["wikitext2"]["records"]
    assert [r["prompt_hash"] for r in ra] == [r["prompt_hash"] for r in rb]  # identical windows
    d = np.array([(x["logprob_sum"] - y["logprob_sum"]) / x["n_scored"] for x, y in zip(rb, ra, strict=True)])
    se = d.std(ddof=1) / np.sqrt(len(d))
    ppl_a, ppl_b = a["metrics"]["wikitext2.ppl"]["value"], b["metrics"]["wikitext2.ppl"]["value"]
    va, vb = a["verdicts"][0], b["verdicts"][0]
    rel = ppl_a / ppl_b - 1
    print(f"\nQ4_K_M from HF {ppl_a:.4f} ({va['reason']}); from GGUF {ppl_b:.4f} ({vb['reason']}); "
          f"diff {rel * 100:+.3f}%, paired over windows: mean log-ratio {d.mean():+.5f} +- {se:.5f} (se); "
          f"IQ4_XS from HF {cands['iq4_xs']['metrics']['wikitext2.ppl']['value']:.4f} "
          f"({cands['iq4_xs']['verdicts'][0]['reason']}); baselines: converted F16 "
          f"{base['metrics']['wikitext2.ppl']['value']:.4f}, embedded F16 "
          f"{from_gguf['baseline']['metrics']['wikitext2.ppl']['value']:.4f}")
    assert abs(d.mean()) < 3 * se + 1e-4  # no difference the windows can show
    half_width = min(va["upper"] - va["lower"], vb["upper"] - vb["lower"]) / 2
    assert abs(rel) * 100 < half_width  # inside the paired gate's noise


@pytest.mark.heavy  # an importance matrix and GPTQ calibration on 2 cores: ~5 min
def test_one_plan_from_an_hf_folder_makes_every_family(hf_dir, converted, tmp_path):
    """A plan whose baseline is an HF checkpoint folder (the BF16 folder, on transformers) makes and
    scores GGUF Q4_K_M and IQ4_XS (importance matrix) through llama.cpp's converter, and GPTQ
    W4A16 and FP8-dynamic through llm-compressor, every candidate on the baseline's windows. FP8
    stays within 3% of the baseline's perplexity (+1.7% measured); the 4-bit ones lose more than FP8."""
    cal = {"source": "wikitext2", "samples": 8, "seq_len": 128}
    tf = {"name": "transformers", "params": {"n_threads": 2}}
    cands = [Q4_K_M,
             {"name": "iq4_xs", "quantizer": {"method": "gguf", "params": {"type": "IQ4_XS"}, "calibration": cal},
              "runtime": {"name": "llama-cpp", "params": {"n_threads": 2}}},
             {"name": "gptq", "quantizer": {"method": "llm-compressor", "params": {"scheme": "gptq-w4a16", "group_size": 64},
                                            "calibration": cal}, "runtime": tf},
             {"name": "fp8", "quantizer": {"method": "llm-compressor", "params": {"scheme": "fp8-dynamic"}}, "runtime": tf}]
    path = _plan(tmp_path / "every-family.yaml", str(hf_dir), cands, baseline_runtime="transformers")
    plan = yaml.safe_load(path.read_text())
    plan["suites"][0]["params"]["max_tokens"] = 4096  # 8 windows
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    res = _run(path, tmp_path / "reports")
    base = res["baseline"]
    assert base["status"] == "ok", base["error"]
    assert base["artifact"]["path"] == str(hf_dir)  # the folder itself, not a copy
    by = {c["name"]: c for c in res["candidates"]}
    assert sorted(by) == ["fp8", "gptq", "iq4_xs", "q4_k_m"]
    for c in by.values():
        assert c["status"] == "ok", (c["name"], c["error"])
        assert [r["prompt_hash"] for r in c["suites"]["wikitext2"]["records"]] == \
            [r["prompt_hash"] for r in base["suites"]["wikitext2"]["records"]]
    assert by["iq4_xs"]["artifact"]["manifest"]["imatrix"]
    assert {by[n]["runtime"]["name"] for n in ("gptq", "fp8")} == {"transformers"}
    ppl = {n: c["metrics"]["wikitext2.ppl"]["value"] for n, c in [("base", base), *by.items()]}
    print("\nppl from the HF folder:", {k: round(v, 3) for k, v in ppl.items()})
    assert abs(ppl["fp8"] / ppl["base"] - 1) < 0.03, ppl
    assert min(ppl["q4_k_m"], ppl["iq4_xs"], ppl["gptq"]) > ppl["fp8"], ppl
