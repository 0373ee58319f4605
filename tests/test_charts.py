"""The benchmark charts: drawn from the recorded figures (scripts/charts.py) and from measured ones."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("matplotlib")
sys.path.insert(0, str(ROOT / "scripts"))

import charts  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def test_recorded_charts_are_pngs(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "charts.py"), str(tmp_path)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    for name in ("load_paths.png", "download_vs_curl.png", "farm_throughput.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000, name


def test_charts_take_measured_data(tmp_path: Path) -> None:
    """What the bench scripts pass with --chart: their own figures, any number of paths / rows / workers."""
    charts.load_paths({"a": 1.0, "b": 2.0}, {"a": {"imports": 0.3}, "b": {"imports": 0.3, "build": 1.2}},
                      tmp_path / "l.png")
    charts.download_vs_curl([("ext4", 400.0, 600.0)], tmp_path / "d.png")
    charts.farm_throughput({"cells": {1: 100.0, 2: 180.0, 4: 300.0}}, tmp_path / "f.png")
    assert all((tmp_path / n).read_bytes().startswith(PNG) for n in ("l.png", "d.png", "f.png"))
