"""The local executor on a machine with several GPUs: its workers see one GPU unless the user
chose (``CUDA_VISIBLE_DEVICES``), and the records say which. No GPU is needed: the GPU count
is the function's argument (NVML's count on a real machine)."""

from __future__ import annotations

import os

import pytest

from harness.executors.local import VISIBLE, LocalExecutor, gpu_count, one_gpu


@pytest.fixture
def no_visible(monkeypatch):
    monkeypatch.delenv(VISIBLE, raising=False)


def test_two_gpus_unset_pins_the_workers_to_one(no_visible):
    with one_gpu(lambda: 2) as shown:
        assert shown == "0" and os.environ[VISIBLE] == "0"
    assert VISIBLE not in os.environ  # restored for whatever runs after the executor


def test_one_gpu_or_none_leaves_the_environment(no_visible):
    for n in (0, 1):
        with one_gpu(lambda n=n: n) as shown:
            assert shown is None and VISIBLE not in os.environ


def test_the_users_choice_stands(monkeypatch):
    monkeypatch.setenv(VISIBLE, "1,0")
    with one_gpu(lambda: 8) as shown:
        assert shown == "1,0" and os.environ[VISIBLE] == "1,0"
    assert os.environ[VISIBLE] == "1,0"


def test_placement_names_the_gpus_shown(monkeypatch):
    from harness import pipeline

    monkeypatch.setenv(VISIBLE, "3")
    assert pipeline.placement(executor="local")["cuda_visible_devices"] == "3"
    assert LocalExecutor().describe()["placement"]["cuda_visible_devices"] == "3"
    monkeypatch.delenv(VISIBLE)
    assert "cuda_visible_devices" not in pipeline.placement(executor="local")


def test_gpu_count_without_a_gpu_is_zero():
    """This machine and CI have no GPU (or no driver): 0, and no CUDA context made."""
    import sys

    if os.path.exists("/dev/nvidia0"):
        pytest.skip("a GPU machine: the count is the driver's")
    assert gpu_count() == 0
    assert "torch" not in sys.modules or not sys.modules["torch"].cuda.is_initialized()
