#!/usr/bin/env bash
# The farm on a Dask cluster with a real GPU worker: build an nvrtc matrix with --cluster local (the
# worker declares this machine's GPU), compare with a local build, warm runtime caches for the
# config's [[gpus]] SKU on that worker, then install on the same machine and check that the shipped
# runtime cache is used. Needs rtxpack[cluster,gpu] and an NVIDIA GPU; prints JSON lines.
#   bash scripts/check_cluster_gpu.sh [WORKDIR]
set -euo pipefail
W=${1:-/tmp/rtxpack_cluster_gpu}
rm -rf "$W" && mkdir -p "$W/models"
RTX="python3 -m rtxpack.cli"
CC=${CHECK_CC:-$(python3 -c "from rtxpack.core.device import detect_gpus; g=detect_gpus()[0]; print(g[0].compute_capability if g else '')")}
[ -n "$CC" ] || { echo "no GPU: this check needs one" >&2; exit 2; }
OTHER=$(python3 -c "print('7.5' if '$CC' != '7.5' else '7.0')")   # an older CC: PTX from it runs here
python3 -c "from rtxpack.demo import models as m; m.small_cnn('$W/models/cnn.onnx', dynamic_batch=True); m.mlp('$W/models/mlp.onnx')"
cat > "$W/rtxpack.toml" <<TOML
[project]
name = "cluster-gpu"
version = "1.0.0"
[[models]]
name = "cnn"
onnx = "models/cnn.onnx"
[models.inputs.x]
min = [1, 3, 32, 32]
opt = [2, 3, 32, 32]
max = [8, 3, 32, 32]
[[models]]
name = "mlp"
onnx = "models/mlp.onnx"
[[targets]]
name = "portable"                  # not this GPU's CC: it runs the PTX, JIT-compiled once, kept by warm
backend = "nvrtc"
compute_capabilities = ["$OTHER"]
ptx = true
[[targets]]
name = "stripped"
backend = "nvrtc"
compute_capabilities = ["$CC"]
strip_weights = true
[[gpus]]
sku = "thisgpu"
compute_capability = "$CC"
TOML
cd "$W"
$RTX build rtxpack.toml --repo repo --cluster local -j 2 --json > build_cluster.json
$RTX build rtxpack.toml --repo repo_local -j 2 --json > build_local.json
python3 - <<'PY'
import json
def blobs(r):
    m = json.load(open(f"{r}/manifest.json"))
    return sorted((a.get("model"), a.get("target"), a.get("sha256")) for a in m["artifacts"])
a, b = blobs("repo"), blobs("repo_local")
print(json.dumps({"check": "cluster build == local build", "artifacts": len(a), "same": a == b}))
PY
$RTX warm rtxpack.toml --repo repo --cluster local --json > warm.json
python3 -c "import json; d=json.load(open('warm.json')); print(json.dumps({'check': 'warm', 'warmed': d['warmed'], 'failed': d['failed'], 'missing': d['missing'], 'gpus': d['gpus'], 'engines': d['engines']}, default=str)[:3000])"
RTXPACK_CACHE_DIR="$W/store" $RTX install --repo repo --model cnn --json > install.json
python3 -c "import json; d=json.load(open('install.json')); print(json.dumps({'check': 'install', 'result': d}, default=str)[:1500])"
RTXPACK_CACHE_DIR="$W/store2" python3 - <<'PY'
import json
import numpy as np
import rtxpack
s = rtxpack.load("cnn", repo="repo", store="store2")
out = s.run({"x": np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)})
p = s.provenance
kernels = next(st["sources"] for st in p.to_dict()["steps"] if st["step"] == "kernels")
assert kernels["runtime-cache"] > 0 and kernels["nvrtc-jit"] == kernels["ptx-jit"] == 0, kernels
print(json.dumps({"check": "load in a fresh process", "outputs": {k: list(v.shape) for k, v in out.items()},
                  "provenance": p.to_dict() if hasattr(p, "to_dict") else str(p)}, default=str)[:3000])
PY
