#!/usr/bin/env python3
"""What the app's weights digest costs at start-up, first start vs second start, on a ~100 MB ONNX.

Each measurement is a fresh process (as an app start is): import rtxpack, make an InstallContext on a
fresh store (first start) or on the store the first start filled (second start), and time
``ctx.weights_digest(onnx)`` alone. ``--peer-tree DIR`` runs the same in another checkout of rtxpack
(e.g. the commit before a change) in the same run, for a before/after table.

    python scripts/bench_digest.py                       # this tree, 5 runs each
    python scripts/bench_digest.py --peer-tree /tmp/old  # and another checkout, alternating
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROBE = """
import json, sys, time
from pathlib import Path
from rtxpack.installer.context import InstallContext
ctx = InstallContext.create(store=sys.argv[2])
t0 = time.perf_counter()
d = ctx.weights_digest(Path(sys.argv[1]))
print(json.dumps({"seconds": time.perf_counter() - t0, "digest": d}))
"""


def probe(tree: Path, onnx: Path, store: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    env.pop("RTXPACK_CACHE_DIR", None)
    out = subprocess.run([sys.executable, "-c", PROBE, str(onnx), str(store)], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--hidden", type=int, default=4096, help="width of the MLP (4096: ~100 MB of weights)")
    ap.add_argument("--peer-tree", type=Path, default=None, help="another rtxpack checkout to compare with")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from rtxpack.demo import models as examples

    trees = [("this tree", ROOT)] + ([("peer", args.peer_tree.resolve())] if args.peer_tree else [])
    with tempfile.TemporaryDirectory() as tmp:
        onnx = examples.mlp(Path(tmp) / "big.onnx", in_features=args.hidden, hidden=(args.hidden, args.hidden // 2),
                            out_features=10)
        size = onnx.stat().st_size
        subprocess.run(["cat", str(onnx)], stdout=subprocess.DEVNULL, check=True)   # page cache: warm for everyone
        times: dict[str, dict[str, list[float]]] = {name: {"first": [], "second": []} for name, _ in trees}
        for run in range(args.runs):
            for name, tree in trees:
                store = Path(tmp) / f"store-{name.replace(' ', '-')}-{run}"
                times[name]["first"].append(probe(tree, onnx, store)["seconds"])
                times[name]["second"].append(probe(tree, onnx, store)["seconds"])
    print(f"# weights digest of a {size / 1e6:.1f} MB ONNX, fresh process per start, median of {args.runs}")
    print(f"{'tree':<12} {'first start s':>14} {'second start s':>15}  runs (second)")
    for name, _ in trees:
        first, second = statistics.median(times[name]["first"]), statistics.median(times[name]["second"])
        print(f"{name:<12} {first:>14.4f} {second:>15.4f}  " + " ".join(f"{t:.4f}" for t in times[name]["second"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
