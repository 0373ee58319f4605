#!/usr/bin/env python
"""rtxpack in one command, from a checkout: the packaged demo (``rtxpack demo``) kept in examples/demo/.

    python3 scripts/demo.py                 # RTX 40-series (CC 8.9) by default
    python3 scripts/demo.py --gpu 7.5       # a Turing card: gets the Turing engine
    python3 scripts/demo.py --gpu 9.0       # Hopper: no TensorRT-RTX engine; the error names the fallback

The flow lives in rtxpack/demo/flow.py (it also runs from an installed wheel: `rtxpack demo`);
this wrapper only points it at examples/demo/ so the models and the repository stay to look at.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rtxpack.demo.flow import main  # noqa: E402

if __name__ == "__main__":
    argv = sys.argv[1:]
    if not any(a == "--dir" or a.startswith("--dir=") for a in argv):
        argv = ["--dir", str(ROOT / "examples" / "demo"), *argv]
    sys.exit(main(argv))
