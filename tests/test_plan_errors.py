"""Bad plans: one line naming file, key path, bad value and allowed values; exit 2."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from harness.cli import main
from tests.conftest import ROOT, run_cli

SMOKE = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())


def _plan(tmp_path: Path, mutate) -> Path:
    data = yaml.safe_load(yaml.safe_dump(SMOKE))
    data["gates"] = str(ROOT / "gates" / "smoke.yaml")
    mutate(data)
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _set(path: str, value):
    def mutate(data):
        node = data
        keys = path.split(".")
        for k in keys[:-1]:
            node = node[int(k)] if k.isdigit() else node[k]
        last = keys[-1]
        node[int(last) if last.isdigit() else last] = value
    return mutate


def _dup(data):
    data["candidates"][2]["name"] = "q8_0"


def _inline_gates(gates):
    def mutate(data):
        data["gates"] = gates
    return mutate


CASES = [
    # (id, mutation, fragments the one error line must contain)
    ("unknown-top-key", _set("candidatez", []), ["<root>: unknown key 'candidatez'", "allowed keys: name, description, baseline, candidates"]),
    ("unknown-nested-key", _set("candidates.1.quantizer.metod", "gguf"),
     ["candidates[1].quantizer: unknown key 'metod'", "allowed keys: method, params, calibration"]),
    ("unknown-method", _set("candidates.2.quantizer.method", "gptqq"),
     ["candidates[2].quantizer.method: unknown quantizer method 'gptqq'", "allowed: autoawq, fake, gguf, llm-compressor, prebuilt, unquantized"]),
    ("unknown-runtime", _set("candidates.0.runtime.name", "llamacpp"),
     ["candidates[0].runtime.name: unknown runtime 'llamacpp'", "allowed: fake, llama-cpp, openai-server, transformers"]),
    ("iquant-without-calibration", _set("candidates.1.quantizer.params.type", "IQ4_XS"),
     ["candidates[1].quantizer.calibration: method 'gguf' needs calibration data"]),
    ("gptq-without-calibration", _set("candidates.0", {"name": "gptq", "runtime": {"name": "transformers"},
                                                        "quantizer": {"method": "llm-compressor", "params": {"scheme": "gptq-w4a16"}}}),
     ["candidates[0].quantizer.calibration: method 'llm-compressor' needs calibration data"]),
    ("unknown-scheme", _set("candidates.0", {"name": "x", "runtime": {"name": "transformers"},
                                             "quantizer": {"method": "llm-compressor", "params": {"scheme": "gptq-w3"}}}),
     ["candidates[0].quantizer.params.scheme:", "'gptq-w4a16'", "'nvfp4'", "got 'gptq-w3'"]),
    ("gguf-on-transformers", _set("candidates.0.runtime.name", "transformers"),
     ["candidates[0].runtime.name: runtime 'transformers' loads hf artifacts, not 'gguf'; runtimes that load 'gguf': llama-cpp"]),
    ("autoawq-archived", _set("candidates.0", {"name": "awq", "runtime": {"name": "transformers"},
                                               "quantizer": {"method": "autoawq", "calibration": {"source": "wikitext2"}}}),
     ["candidates[0].quantizer.method: quantizer 'autoawq': archived upstream", "scheme 'awq-w4a16'"]),
    ("baseline-not-gguf", _set("baseline.model", str(ROOT / "README.md")),
     ["baseline.model:", "README.md", "neither a GGUF file"]),
    ("unknown-quant-type", _set("candidates.1.quantizer.params.type", "Q9_K"),
     ["candidates[1].quantizer.params.type:", "'Q8_0'", "'Q4_K_M'", "got 'Q9_K'"]),
    ("wrong-type", _set("suites.0.params.context_length", "long"),
     ["suites[0].params.context_length:", "valid integer", "got 'long'"]),
    ("missing-policy-file", _set("gates", "gates/does-not-exist.yaml"),
     ["gates: policy file 'gates/does-not-exist.yaml' not found"]),
    ("negative-budget", _inline_gates([{"name": "size", "kind": "max_value", "metric": "size.gib", "max": -1}]),
     ["gates[0].max:", "greater than 0", "got -1"]),
    ("duplicate-candidate", _dup, ["candidates[2].name: duplicate name 'q8_0' (also candidates[0].name)"]),
    ("unknown-gate-kind", _inline_gates([{"name": "g", "kind": "max_pct", "metric": "size.gib", "max": 1}]),
     ["gates[0].kind: unknown gate kind 'max_pct'", "allowed: max_drop, max_drop_pct, max_increase_pct, max_slice_drop, max_value, min_ratio, min_value"]),
    ("unknown-metric", _inline_gates([{"name": "g", "kind": "max_value", "metric": "wikitext2.pplx", "max": 1}]),
     ["gates[0].metric: unknown metric 'wikitext2.pplx'", "wikitext2.ppl"]),
    ("missing-baseline", lambda d: d.pop("baseline"), ["baseline: required key is missing"]),
    ("unknown-probe", _set("probes.latency_p99", {}),
     ["probes.latency_p99: unknown probe 'latency_p99'", "allowed: bench, decode, latency, load, memory, roofline, serving, size, throughput"]),
    ("unknown-probe-param", _set("probes.decode.tokens", 5),
     ["probes.decode: unknown key 'tokens'", "allowed keys: prompt_tokens, gen_tokens, repetitions, warmup"]),
    ("budget-below-window", _set("suites.0.params.max_tokens", 100),
     ["suites[0].params:", "max_tokens (100) must be at least context_length (512)"]),
    ("prebuilt-missing-file", _set("candidates.0.quantizer", {"method": "prebuilt", "params": {"path": "/nope/x.gguf"}}),
     ["candidates[0].quantizer.params.path: file not found: '/nope/x.gguf'"]),
    ("runtime-cannot-load", _set("candidates.0.quantizer", {"method": "prebuilt", "params": {"path": "/", "format": "hf"}}),
     ["candidates[0].runtime.name: runtime 'llama-cpp' loads gguf artifacts, not 'hf'"]),
    ("bad-name", _set("candidates.0.name", "q8 0"), ["candidates[0].name:", "should match pattern", "got 'q8 0'"]),
]


@pytest.mark.parametrize("mutate,fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_plan_one_line_exit_2(tmp_path, capsys, mutate, fragments):
    plan = _plan(tmp_path, mutate)
    code = main(["validate", str(plan)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith(f"error: {plan}: "), line
    for frag in fragments:
        assert frag in line, f"{frag!r} not in {line!r}"


def test_invalid_yaml_names_line(tmp_path, capsys):
    plan = tmp_path / "broken.yaml"
    plan.write_text("name: x\ncandidates: [a, b\n")
    assert main(["validate", str(plan)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {plan}:") and "not valid YAML" in err


def test_missing_plan_file(capsys):
    assert main(["validate", "no/such/plan.yaml"]) == 2
    assert "no/such/plan.yaml: plan file not found" in capsys.readouterr().err


def test_cli_prints_no_traceback(tmp_path):
    plan = _plan(tmp_path, _set("candidates.2.quantizer.method", "awq-magic"))
    proc = run_cli("validate", str(plan))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.strip().splitlines() == [
        f"error: {plan}: candidates[2].quantizer.method: unknown quantizer method 'awq-magic'; allowed: autoawq, fake, gguf, llm-compressor, prebuilt, unquantized"
    ]


def test_policy_file_errors_name_the_policy(tmp_path, capsys):
    policy = tmp_path / "p.yaml"
    policy.write_text(textwrap.dedent("""
        gates:
          - {name: a, kind: max_value, metric: size.gib, max: 1, colour: red}
    """))
    plan = _plan(tmp_path, _set("gates", str(policy)))
    assert main(["validate", str(plan)]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"error: {policy}: gates[0]: unknown key 'colour'"), line
    assert "allowed keys: name, metric, kind, max" in line


def test_smoke_plan_is_valid(capsys):
    assert main(["validate", str(ROOT / "configs" / "smoke.yaml")]) == 0
    assert "valid plan 'smoke'" in capsys.readouterr().out


def test_validate_needs_no_heavy_backend(tmp_path):
    """import harness + validate work with torch, llama_cpp, mlflow and transformers absent."""
    code = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in ('torch', 'llama_cpp', 'mlflow', 'transformers'):
                    raise ImportError('blocked ' + name)
                return None
        sys.meta_path.insert(0, Block())
        from harness.cli import main
        rc = main(['validate', {str(ROOT / 'configs' / 'smoke.yaml')!r}])
        assert rc == 0, rc
        assert not any(m.split('.')[0] in ('torch', 'llama_cpp', 'mlflow', 'transformers') for m in sys.modules)
    """)
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "note: quantizer 'gguf' needs the Python package 'llama-cpp-python'" in proc.stdout
    assert "pip install 'quantgate[llamacpp]'" in proc.stdout
