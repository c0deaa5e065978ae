"""harness.resources: the suites, gate policies and plans quantgate ships, in a checkout and
in a built wheel, and the order in which a plan or policy name is resolved.

The wheel tests build one (``pip wheel --no-deps --no-build-isolation``, ~2 s) from a copy of
the checkout and check its contents; one imports quantgate from the zipped wheel itself (the
shipped folders are then not on the file system) from a folder outside the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import yaml

from harness import resources
from harness.config import load_policy
from harness.errors import PlanError

try:
    from harness.validate import load_plan
except ImportError:  # until load_plan's move from harness.config to harness.validate is committed
    from harness.config import load_plan

ROOT = Path(__file__).resolve().parents[1]

# what the wheel must carry under harness/shipped/: every file a run reads besides code
EXPECTED = {
    "suites": ["lm_eval/mmlu.yaml", "lm_eval/gsm8k.yaml", "lm_eval/humaneval.yaml",
               "lm_eval/json_format.yaml", "lm_eval/quantgate_tasks.py", "json_format/cases.jsonl"],
    "gates": [p.name for p in (ROOT / "gates").glob("*.yaml")],
    "configs": [p.name for p in (ROOT / "configs").glob("*.yaml")],
}


def _policy_yaml(name: str, max_gib: float) -> str:
    return yaml.safe_dump({"name": name, "gates": [
        {"name": "size", "kind": "max_value", "metric": "size.gib", "max": max_gib}]})


@pytest.fixture
def outside(tmp_path, monkeypatch) -> Path:
    """A working directory with no gates/ or configs/ folder of its own."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


# ------------------------------------------------------------------ shipped folders
def test_checkout_serves_its_top_level_folders():
    for kind in resources.KINDS:
        assert Path(resources.shipped(kind)).resolve() == (ROOT / kind).resolve()
        assert resources.shipped_path(kind).resolve() == (ROOT / kind).resolve()
    for kind, names in EXPECTED.items():
        for name in names:
            assert (resources.shipped_path(kind) / name).is_file(), f"{kind}/{name}"


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="one of suites, gates, configs"):
        resources.shipped("models")
    with pytest.raises(ValueError):
        resources.names("suites")


def test_names_list_every_shipped_plan_and_policy():
    assert resources.names("configs") == sorted(n[:-5] for n in EXPECTED["configs"])
    assert resources.names("gates") == sorted(n[:-5] for n in EXPECTED["gates"])
    assert {"smoke", "release", "nightly"} <= set(resources.names("configs"))


def test_every_shipped_plan_and_policy_is_found_and_loads_from_elsewhere(outside):
    for name in resources.names("gates"):
        path = resources.find_policy(name)
        assert path == resources.shipped_path("gates") / f"{name}.yaml"
        assert resources.find_policy(f"{name}.yaml") == path
        assert resources.find_policy(f"gates/{name}.yaml") == path
        load_policy(path)
    for name in resources.names("configs"):
        path = resources.find_plan(name)
        assert path == resources.shipped_path("configs") / f"{name}.yaml"
        assert resources.find_plan(f"configs/{name}.yaml") == path
        plan = load_plan(path, check_names=False)  # its `gates: NAME` resolves too
        assert plan.policy().gates


def test_lm_eval_tasks_and_json_cases_come_from_the_shipped_suites():
    import hashlib

    from harness.suites.json_format import JsonFormatSuite
    from harness.suites.mmlu import MmluSuite

    suite = MmluSuite()
    assert suite.task_path(suite.Params()) == resources.shipped_path("suites") / "lm_eval" / "mmlu.yaml"
    js = JsonFormatSuite()
    cases = resources.shipped_path("suites") / "json_format" / "cases.jsonl"
    assert js.data_identity(js.Params())["cases_sha256"] == hashlib.sha256(cases.read_bytes()).hexdigest()


# --------------------------------------------------------------- resolution order
def test_unknown_names_resolve_to_none(outside):
    assert resources.find_policy("no-such-policy") is None
    assert resources.find_policy("no-such-policy", outside) is None
    assert resources.find_policy(str(outside / "missing.yaml")) is None
    assert resources.find_policy("../gates/smoke") is None  # only bare names reach the shipped copy
    assert resources.find_plan("no-such-plan") is None
    assert resources.find_plan(outside / "missing.yaml") is None


def test_working_directory_gates_win_over_shipped(outside):
    (outside / "gates").mkdir()
    mine = outside / "gates" / "smoke.yaml"
    mine.write_text(_policy_yaml("mine", 9))
    assert resources.find_policy("smoke") == Path.cwd() / "gates" / "smoke.yaml"
    assert resources.find_policy("release") == resources.shipped_path("gates") / "release.yaml"


def test_plan_folder_wins_over_working_directory(outside, tmp_path):
    (outside / "gates").mkdir()
    (outside / "gates" / "smoke.yaml").write_text(_policy_yaml("cwd", 9))
    project = tmp_path / "project"
    (project / "configs").mkdir(parents=True)
    (project / "configs" / "smoke.yaml").write_text(_policy_yaml("beside-plan", 9))
    assert resources.find_policy("smoke.yaml", project / "configs") == project / "configs" / "smoke.yaml"
    (project / "configs" / "gates").mkdir()
    (project / "configs" / "gates" / "smoke.yaml").write_text(_policy_yaml("beside-plan", 9))
    assert resources.find_policy("smoke", project / "configs") == project / "configs" / "gates" / "smoke.yaml"
    # the plan's parent folder (a project root holding configs/ and gates/) comes after the cwd
    (project / "gates").mkdir()
    (project / "gates" / "release.yaml").write_text(_policy_yaml("project", 9))
    assert resources.find_policy("release", project / "configs") == project / "gates" / "release.yaml"
    assert resources.find_policy("smoke", project / "elsewhere") == Path.cwd() / "gates" / "smoke.yaml"


def test_working_directory_configs_win_over_shipped_plans(outside):
    (outside / "configs").mkdir()
    (outside / "configs" / "smoke.yaml").write_text("name: mine\n")
    assert resources.find_plan("smoke") == Path.cwd() / "configs" / "smoke.yaml"
    assert resources.find_plan("configs/smoke.yaml") == Path("configs/smoke.yaml")
    assert resources.find_plan("release") == resources.shipped_path("configs") / "release.yaml"


def _plan_text(gates: str) -> str:
    plan = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    plan["gates"] = gates
    return yaml.safe_dump(plan)


def test_a_plan_outside_the_checkout_uses_the_shipped_policy(outside):
    (outside / "plan.yaml").write_text(_plan_text("smoke"))
    plan = load_plan(outside / "plan.yaml")
    assert plan.policy().name == "smoke"
    assert [g.name for g in plan.policy().gates] == [
        g["name"] for g in yaml.safe_load((ROOT / "gates" / "smoke.yaml").read_text())["gates"]]
    (outside / "gates").mkdir()
    (outside / "gates" / "smoke.yaml").write_text(_policy_yaml("mine", 9))
    assert load_plan(outside / "plan.yaml").policy().name == "mine"


def test_an_unknown_policy_name_is_a_plan_error(outside):
    (outside / "plan.yaml").write_text(_plan_text("no-such-policy"))
    with pytest.raises(PlanError, match="policy file 'no-such-policy' not found"):
        load_plan(outside / "plan.yaml")


# --------------------------------------------------------------------- the wheel
def _listed_packages() -> list[str]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]


def test_pyproject_lists_every_harness_package():
    from setuptools import find_packages

    packages = _listed_packages()
    missing = sorted(set(find_packages(str(ROOT), include=["harness*"])) - set(packages))
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {missing}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """quantgate's wheel, built from a copy of the checkout (no build/ or egg-info left here,
    and no stale build/lib/ from an earlier build in it)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".nox", ".venv", "build", "dist", "reports", "*.egg-info", "__pycache__",
        ".pytest_cache", ".ruff_cache", "mlruns", "mlartifacts", "*.gguf", "*.safetensors"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                          "--no-index", "-q", "-w", str(tmp / "dist"), str(src)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    (path,) = (tmp / "dist").glob("quantgate-*.whl")
    return path


def test_the_wheel_carries_the_shipped_files(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for kind, files in EXPECTED.items():
        for name in files:
            assert f"harness/shipped/{kind}/{name}" in names, f"{kind}/{name} missing from {wheel.name}"
    for package in _listed_packages():
        if not package.startswith("harness.shipped"):
            assert package.replace(".", "/") + "/__init__.py" in names
    assert "harness/resources.py" in names
    assert not [n for n in names if n.split("/")[0] in ("suites", "gates", "configs", "tests")]


def test_quantgate_zipped_in_its_wheel_reads_the_shipped_files(wheel, tmp_path):
    """The harshest install: the package imported from the wheel file itself (zipimport), run
    from a folder outside the checkout. The shipped folders are copied out once; lm-eval's YAML
    loader finds quantgate_tasks.py beside the task file; a plan's `gates: smoke` resolves."""
    pytest.importorskip("lm_eval")
    (tmp_path / "plan.yaml").write_text(_plan_text("smoke"))
    script = textwrap.dedent("""
        import json, sys
        import harness, harness.resources as r
        try:
            from harness.validate import load_plan
        except ImportError:
            from harness.config import load_plan
        from harness.suites.mmlu import MmluSuite
        from harness.suites.json_format import JsonFormatSuite
        suite = MmluSuite()
        cfg = suite.task_config(suite.Params())
        js = JsonFormatSuite()
        print(json.dumps({
            "harness": harness.__file__,
            "suites": str(r.shipped("suites")),
            "suites_path": str(r.shipped_path("suites")),
            "task": str(suite.task_path(suite.Params())),
            "dataset_fn": cfg["custom_dataset"].__name__,
            "cases_sha256": js.data_identity(js.Params())["cases_sha256"],
            "policy": str(r.find_policy("smoke")),
            "plans": r.names("configs"),
            "plan_policy": load_plan("plan.yaml").policy().name,
            "smoke_plan": load_plan(r.find_plan("smoke")).name,
            "sys_path": sys.path,
        }))
    """)
    env = {**os.environ, "PYTHONPATH": str(wheel), "PYTHONSAFEPATH": "1"}
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["harness"].startswith(str(wheel)), got["harness"]
    assert not any(p and Path(p).resolve() == ROOT for p in got["sys_path"])
    assert got["suites"].startswith(str(wheel))  # a zip member, not the checkout's suites/
    extracted = Path(got["suites_path"])
    assert got["task"] == str(extracted / "lm_eval" / "mmlu.yaml")
    assert got["dataset_fn"] == "mmlu_dataset"  # `!function quantgate_tasks.mmlu_dataset` resolved
    import hashlib

    assert got["cases_sha256"] == hashlib.sha256(
        (ROOT / "suites" / "json_format" / "cases.jsonl").read_bytes()).hexdigest()
    assert Path(got["policy"]).name == "smoke.yaml" and not Path(got["policy"]).is_relative_to(ROOT)
    assert got["plans"] == resources.names("configs")
    assert got["plan_policy"] == "smoke" and got["smoke_plan"] == "smoke"
    assert not extracted.exists(), "the copied-out folder is removed at exit"
