#!/usr/bin/env python
"""Generate the small example ONNX models (rtxpack.demo.models) -- no downloads.

    python scripts/make_models.py mlp models/mlp.onnx            # dynamic batch input x [N, 64]
    python scripts/make_models.py mlp models/mlp16.onnx --fp16   # the same MLP in fp16 (Turing-capable)
    python scripts/make_models.py cnn models/cnn.onnx            # small CNN, x [1, 3, 32, 32]
    python scripts/make_models.py demo                           # examples/demo/models/*
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rtxpack.demo import models as examples  # noqa: E402
from rtxpack.demo.models import fp16_variant  # noqa: E402


def make(kind: str, out: Path, fp16: bool = False) -> Path:
    gen = {"mlp": examples.mlp, "cnn": examples.small_cnn}[kind]
    if not fp16:
        return gen(out)
    tmp = out.with_suffix(".fp32.onnx")
    gen(tmp)
    fp16_variant(tmp, out)
    tmp.unlink()
    return out


def make_demo(root: Path = ROOT / "examples" / "demo") -> list[Path]:
    """The models the demo's rtxpack.toml (rtxpack/demo/rtxpack.toml) names."""
    from rtxpack.demo.flow import demo_models

    return demo_models(root)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=["mlp", "cnn", "demo"])
    p.add_argument("out", nargs="?", help="output .onnx path (not for 'demo')")
    p.add_argument("--fp16", action="store_true", help="fp16 weights, inputs and outputs")
    a = p.parse_args(argv)
    if a.kind == "demo":
        for path in make_demo():
            print(path)
        return 0
    if not a.out:
        p.error("give an output path")
    print(make(a.kind, Path(a.out), a.fp16))
    return 0


if __name__ == "__main__":
    sys.exit(main())
