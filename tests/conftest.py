from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The project's offline data folder sits beside the checkout (CI sets it too).
if "QUANTGATE_DATA" not in os.environ and (ROOT.parent / "shared" / "data").is_dir():
    os.environ["QUANTGATE_DATA"] = str((ROOT.parent / "shared" / "data").resolve())
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session")
def qg_home(tmp_path_factory) -> Path:
    """One store for the whole test session: later tests reuse what earlier ones built,
    as a user's second run would. Fetching and deriving it is part of what is tested."""
    home = tmp_path_factory.mktemp("quantgate-home")
    os.environ["QUANTGATE_HOME"] = str(home)
    return home


def run_cli(*args: str, cwd: Path = ROOT, env: dict | None = None, timeout: int = 1800) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


#: the longest test modules (real models end to end), run first: with pytest-xdist's
#: ``--dist loadfile`` (nox -s tests) a worker that takes one of them early leaves the many short
#: modules to balance the end, instead of one worker running a long module alone at the end
LONGEST_FIRST = ("test_smoke_e2e.py", "test_ray_executor.py", "test_quantizers.py", "test_fidelity.py",
                 "test_probes.py", "test_long_context.py", "test_tracking_outbox.py", "test_mlflow_server.py",
                 "test_release.py", "test_serving_probe.py", "test_openai_server.py", "test_converter.py",
                 "test_suites_e2e.py", "test_kv_cache.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(Path(str(item.fspath)).name, len(rank)))  # stable for the rest
