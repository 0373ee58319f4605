"""Long work shows progress: ``rtxpack build`` draws a live bar on a terminal (a real pseudo-terminal
of a given size, through pexpect) and writes one line per cell into a pipe; the download bar is
labelled with the model and the artifact kind."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from fault_helpers import child_env, data_of, engine_for, write_repo
from rtxpack.farm.progress import LineProgress, TerminalProgress, as_progress
from test_farm_common import CNN, MLP16, cli, farm, farm_env, target, write_config  # noqa: F401

pexpect = pytest.importorskip("pexpect")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def run_on_tty(args: list[str], cols: int, rows: int = 30, env: dict | None = None, timeout: float = 300) -> str:
    """Run ``python -m rtxpack.cli ARGS`` on a pseudo-terminal of ``cols`` x ``rows``; all it wrote."""
    child = pexpect.spawn(sys.executable, ["-m", "rtxpack.cli", *args], env=env or child_env(), encoding="utf-8",
                          dimensions=(rows, cols), timeout=timeout)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    return child.before


def frames(raw: str) -> list[str]:
    """What each redraw put on screen: split at carriage returns and newlines, escapes removed."""
    return [ANSI.sub("", part) for part in re.split(r"[\r\n]", raw) if ANSI.sub("", part).strip()]


def config(farm_env, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    return write_config(tmp_path / "rtxpack.toml", farm_env, MLP16, CNN.replace("cnn.onnx", "cnn16.onnx"),
                        target("portable", ["8.6", "8.9", "12.0"]), target("ada", ["8.9"]))


@pytest.fixture
def cnn16(farm_env) -> None:  # type: ignore[no-untyped-def]
    from rtxpack.demo import models as examples

    if not (farm_env.models / "cnn16.onnx").exists():
        examples.fp16_variant(farm_env.models / "cnn.onnx", farm_env.models / "cnn16.onnx")


@pytest.mark.parametrize("cols", [100, 44])
def test_build_bar_on_a_terminal(farm, tmp_path: Path, cnn16, cols: int) -> None:
    cfg = config(farm, tmp_path)
    raw = run_on_tty(["build", str(cfg), "--repo", str(tmp_path / "repo"), "-j", "2"], cols)
    shown = frames(raw)
    bars = [f for f in shown if re.search(r"\d/4 cells", f)]
    assert bars, raw
    assert "\r" in raw                                   # redrawn in place, not scrolled
    for b in bars:                                       # fits the terminal: never wraps
        assert len(b) < cols, (len(b), b)
        assert re.search(r"\d/4 cells,? \d running,? \d\d:\d\d( elapsed,)? ETA (--:--|\d\d:\d\d)", b), b
    assert any("0/4 cells" in b for b in bars) and any("4/4 cells" in b for b in bars)
    assert any(re.search(r"[12] running", b) for b in bars)          # -j 2: cells in flight are shown
    if cols >= 80:
        assert any("[#" in b for b in bars) and any("....]" in b for b in bars)
    built = [f for f in shown if re.match(r"\[\d/4\] built ", f)]
    assert len(built) == 4 and all(len(f) < cols for f in built)
    assert re.search(r": 4 built, 0 up to date, 0 skipped, 0 failed", raw)


def test_build_lines_into_a_pipe(farm, tmp_path: Path, cnn16) -> None:
    cfg = config(farm, tmp_path)
    r = cli("build", str(cfg), "--repo", str(tmp_path / "repo"), "-j", "2")
    assert "\r" not in r.stderr and "\x1b" not in r.stderr and "building [" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert sorted(ln[:5] for ln in lines) == ["[1/4]", "[2/4]", "[3/4]", "[4/4]"], lines
    assert all(" built " in ln and "bytes)" in ln for ln in lines)


def test_terminal_bar_eta_and_width() -> None:
    """The bar's arithmetic, on an injected clock: ETA from the cells built so far, width respected."""
    now = [100.0]
    tp = TerminalProgress(open("/dev/null", "w"), clock=lambda: now[0])
    tp.total, tp.done, tp.settled_at_start, tp.t0, tp.running = 10, 2, 2, 100.0, 2
    assert "ETA --:--" in tp.bar(120)                     # nothing built yet: no estimate
    now[0], tp.done = 130.0, 6                           # 4 cells in 30 s: 4 left -> 30 s
    b = tp.bar(120)
    assert "6/10 cells, 2 running, 00:30 elapsed, ETA 00:30" in b and len(b) <= 119
    for width in (20, 40, 61, 200):
        assert len(tp.bar(width)) <= width - 1
    tp.stream.close()


def test_plain_callables_still_get_lines() -> None:
    got: list[str] = []
    rep = as_progress(got.append)
    assert isinstance(rep, LineProgress)
    rep.message("hello")
    assert got == ["hello"]


def test_download_bar_is_labelled_with_model_and_kind(tmp_path: Path, nginx) -> None:
    d = data_of(3 << 20)
    write_repo(nginx.root, [(engine_for(d, model="resnet50"), d)])
    env = child_env(RTXPACK_DEVICE="8.9", RTXPACK_CACHE_DIR=str(tmp_path / "store"))
    raw = run_on_tty(["install", "--repo", nginx.url, "--model", "resnet50"], cols=100, env=env)
    assert "resnet50 engine" in raw, raw
    shown = " ".join(frames(raw))
    assert re.search(r"resnet50 engine:\s+\d+%", shown), shown
    assert engine_for(d).sha256[:12] not in " ".join(f for f in frames(raw) if "%" in f)

