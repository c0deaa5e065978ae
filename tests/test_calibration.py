from __future__ import annotations

import pytest

from harness.calibration import calibration_identity, load_calibration_text, sample_windows


def test_sample_windows_seeded_and_disjoint():
    ids = list(range(10_000))
    a = sample_windows(ids, 8, 256, seed=0)
    assert a == sample_windows(ids, 8, 256, seed=0)
    assert a != sample_windows(ids, 8, 256, seed=1)
    assert all(len(w) == 256 for w in a)
    starts = sorted(w[0] for w in a)
    assert all(b - s >= 256 for s, b in zip(starts, starts[1:], strict=False))  # no overlap


def test_builtin_sources_and_slices(qg_home):
    code = load_calibration_text("humaneval")
    first, second = load_calibration_text("humaneval[0:82]"), load_calibration_text("humaneval[82:]")
    assert "def " in first and "def " in second
    assert len(first) + len(second) + 2 == len(code)  # the halves partition the set
    assert "Question:" in load_calibration_text("gsm8k[0:3]")
    with pytest.raises(ValueError, match="record slices apply to"):
        load_calibration_text("wikitext2[0:3]")
    with pytest.raises(FileNotFoundError, match="not a built-in"):
        load_calibration_text("no-such-corpus")


def test_calibration_identity_hashes_the_text(tmp_path):
    f = tmp_path / "cal.txt"
    f.write_text("alpha beta gamma")
    a = calibration_identity({"source": str(f), "samples": 4, "seq_len": 64, "seed": 0})
    f.write_text("alpha beta delta")
    b = calibration_identity({"source": str(f), "samples": 4, "seq_len": 64, "seed": 0})
    assert a["text_sha256"] != b["text_sha256"]  # same path, new text: a new artifact key
    assert calibration_identity(None) is None


def test_jsonl_calibration(tmp_path):
    f = tmp_path / "chat.jsonl"
    f.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
                 '{"text": "plain"}\n')
    assert load_calibration_text(str(f)) == "user: hi\nassistant: hello\n\nplain"
