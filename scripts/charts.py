#!/usr/bin/env python
"""PNG charts of the benchmarks (matplotlib: ``pip install 'rtxpack[charts]'``).

    python3 scripts/charts.py            # the three charts README shows, from the recorded figures below

The benchmark scripts call the same functions with what they just measured (``--chart PNG``):
``bench_load.py`` (where ``rtxpack.load()``'s time goes, stacked per path), ``bench_download.py``
(throughput against curl) and ``bench_farm.py`` (cells per minute against workers).

The recorded figures are copied from the write-ups, not made up: the load() paths from README's
Performance section / tests/GPU_RESULTS.md (H100, 2026-11-21: ``bench_load.py`` needs a GPU),
download from scripts/BENCH_DOWNLOAD.md (2026-11-21), farm from scripts/BENCH_FARM.md (2026-11-20).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Mapping, Sequence

HERE = Path(__file__).resolve().parent

#: README "Performance": bench_load, ResNet-26, H100, median seconds of fresh processes (2026-11-21).
#: "other" is the rest of each path's measured total (process start, session set-up, first run).
LOAD_TOTALS = {"(a) full plan + shipped cache": 1.23, "(b) stripped + refit": 1.79,
               "(c) offline JIT build": 2.57, "(d) second start after (c)": 1.05}
LOAD_PARTS: dict[str, dict[str, float]] = {
    "(a) full plan + shipped cache": {"imports": 0.32, "manifest": 0.23, "plan download": 0.18, "backend load": 0.18},
    "(b) stripped + refit": {"imports": 0.32, "weights digest": 0.31, "refit": 0.41},
    "(c) offline JIT build": {"imports": 0.32, "NVRTC build": 1.0},
    "(d) second start after (c)": {"imports": 0.32, "backend load": 0.14},
}
#: scripts/BENCH_DOWNLOAD.md, 2026-11-21: 512 MiB from loopback nginx, median of 7, MB/s
DOWNLOAD = [("ext4", 468.0, 768.0), ("tmpfs", 474.0, 497.0)]
#: scripts/BENCH_FARM.md, 2026-11-20 (invocation 5): cells per minute at -j 1 and -j 2
FARM = {"example cells (MLP, small CNN)": {1: 964.0, 2: 1497.0},
        "realistic cells (ResNet-50/26/14)": {1: 121.0, 2: 239.0}}


def _plt():
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("charts need matplotlib: pip install 'rtxpack[charts]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def load_paths(totals: Mapping[str, float], parts: Mapping[str, Mapping[str, float]], out: Path,
               title: str = "rtxpack.load(): time to first inference, where it goes") -> Path:
    """Stacked horizontal bars: one per load() path, one segment per step (seconds)."""
    plt = _plt()
    labels = list(totals)
    names: list[str] = []
    for p in labels:
        names += [n for n in parts.get(p, {}) if n not in names]
    names.append("other")
    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=120)
    colors = plt.get_cmap("tab10")
    left = [0.0] * len(labels)
    for k, name in enumerate(names):
        widths = []
        for p in labels:
            if name == "other":
                widths.append(max(0.0, totals[p] - sum(parts.get(p, {}).values())))
            else:
                widths.append(parts.get(p, {}).get(name, 0.0))
        ax.barh(labels, widths, left=left, color=colors(k % 10), label=name, edgecolor="white", linewidth=0.6)
        left = [a + b for a, b in zip(left, widths)]
    for y, p in enumerate(labels):
        ax.text(totals[p] + 0.03, y, f"{totals[p]:.2f} s", va="center", fontsize=9)
    ax.invert_yaxis()
    ax.set_xlabel("seconds (median of fresh processes)")
    ax.set_xlim(0, max(totals.values()) * 1.18)
    ax.set_title(title, fontsize=11)
    ax.legend(ncol=len(names), fontsize=8, loc="upper center", bbox_to_anchor=(0.45, -0.2), frameon=False,
              handlelength=1.2, columnspacing=1.0)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def download_vs_curl(rows: Sequence[tuple[str, float, float]], out: Path,
                     title: str = "Download of 512 MiB from loopback nginx: rtxpack (sha256 on) vs curl") -> Path:
    """Grouped bars: MB/s of curl and of rtxpack per target file system, with the ratio."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 3.6), dpi=120)
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r[1] for r in rows], width=0.4, label="curl -o (no hashing)", color="#999999")
    ax.bar([x + 0.2 for x in xs], [r[2] for r in rows], width=0.4, label="rtxpack (sha256 verified)", color="#2a7ab9")
    for x, (_, curl, rtx) in zip(xs, rows):
        ax.text(x + 0.2, rtx + 10, f"{rtx / curl:.2f}x curl", ha="center", fontsize=9)
    ax.set_xticks(list(xs), [r[0] for r in rows])
    ax.set_ylabel("MB/s (median)")
    ax.set_ylim(0, max(max(r[1], r[2]) for r in rows) * 1.2)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, frameon=False, loc="upper right")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def farm_throughput(series: Mapping[str, Mapping[int, float]], out: Path,
                    title: str = "Build farm: cells per minute against workers (2 vCPUs, real TensorRT-RTX builds)") -> Path:
    """One line per cell set: cells/min at each -j, with the ideal (linear) scaling dashed."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(series), figsize=(9, 3.4), dpi=120)
    axes = axes if len(series) > 1 else [axes]
    for ax, (name, pts) in zip(axes, series.items()):
        js = sorted(pts)
        ax.plot(js, [pts[j] for j in js], marker="o", color="#2a7ab9", label="measured")
        ax.plot(js, [pts[js[0]] * j / js[0] for j in js], linestyle="--", color="#999999", label="linear")
        for j in js:
            ax.annotate(f"{pts[j]:.0f}", (j, pts[j]), textcoords="offset points", xytext=(6, -12), fontsize=9)
        ax.set_xticks(js, [f"-j {j}" for j in js])
        ax.set_ylim(0, max(max(pts.values()), pts[js[0]] * js[-1] / js[0]) * 1.15)
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("cells / min")
        ax.legend(fontsize=8, frameon=False, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    outdir = Path(argv[0]) if argv else HERE
    for p in (load_paths(LOAD_TOTALS, LOAD_PARTS, outdir / "load_paths.png"),
              download_vs_curl(DOWNLOAD, outdir / "download_vs_curl.png"),
              farm_throughput(FARM, outdir / "farm_throughput.png")):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
