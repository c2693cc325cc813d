"""units: the one cache directory rule and atomic writes."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from budgetlm import units


def test_cache_dir_prefers_budgetlm_then_xdg_then_home(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUDGETLM_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert units.cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("BUDGETLM_CACHE_DIR")
    assert units.cache_dir() == tmp_path / "xdg" / "budgetlm"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert units.cache_dir() == tmp_path / "home" / ".cache" / "budgetlm"


def test_write_json_is_whole_and_readable_by_others(tmp_path: Path) -> None:
    path = units.write_json(tmp_path / "sub" / "out.json", {"a": 1, "p": Path("x")})
    assert json.loads(path.read_text()) == {"a": 1, "p": "x"}
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in path.parent.iterdir()] == ["out.json"]  # no temporary file left


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    path = units.atomic_write_text(tmp_path / "f.txt", "old")

    with pytest.raises(TypeError):
        units.atomic_write_text(path, 3)  # type: ignore[arg-type]
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def test_formatters_keep_their_units() -> None:
    assert units.format_count(1.23e9) == "1.23B"
    assert units.format_flops_rate(9.89e14) == "989 TFLOP/s"
    assert units.format_seconds(90) == "90 s" and units.format_seconds(7200) == "2 h"
    assert units.human_bytes(1.5 * 2**30) == "1.50 GiB"
    assert units.format_sci(1.2e19) == "1.2e19" and units.format_sci(None) == "-"


def test_parsed_numbers_must_be_finite() -> None:
    assert units.parse_number("8B", "--flops") == 8e9
    for text in ("inf", "-inf", "nan", "1e400", "Infinity"):
        with pytest.raises(units.UserError, match="--flops: must be finite"):
            units.parse_number(text, "--flops")
    with pytest.raises(units.UserError, match="--flops: expected a number"):
        units.parse_number("lots", "--flops")
    with pytest.raises(units.UserError, match=r"must be finite, got '9{37}\.\.\.'"):
        units.parse_number("9" * 400, "--flops")  # long input shown cut short: one line


def test_durations_take_plain_seconds_in_any_float_syntax_and_must_be_finite() -> None:
    assert units.parse_duration("1e3") == 1000.0
    assert units.parse_duration("1h30m") == 5400.0
    for text in ("inf", "1e400", "nan", "9" * 400 + "h"):
        with pytest.raises(units.UserError, match="--time: must be finite"):
            units.parse_duration(text)
    with pytest.raises(units.UserError, match="--time: must be finite"):
        units.parse_duration(float("inf"))
    for text in ("0", "-5", "-5m"):
        with pytest.raises(units.UserError, match="--time: must be positive"):
            units.parse_duration(text)
