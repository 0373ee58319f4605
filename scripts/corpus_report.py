#!/usr/bin/env python3
"""Gap report for the real-model corpus (tests/models): materialize, check with onnxruntime, build with nvrtc.

    python3 scripts/corpus_report.py materialize FULL_DIR            # any env with onnx + numpy
    VENV/bin/python scripts/corpus_report.py ort FULL_DIR ort.json   # needs onnxruntime
    PYTHONPATH=. python3 scripts/corpus_report.py nvrtc FULL_DIR nvrtc.json   # rtxpack + cuda-python, no GPU
    PYTHONPATH=. python3 scripts/corpus_report.py analyze analysis.json     # static split of the gaps
    python3 scripts/corpus_report.py table ort.json nvrtc.json analysis.json   # -> tests/models/CORPUS.md + corpus.json

``nvrtc`` builds each materialized model in its own process (a crash or a hang is then one row, not
the run): ``NvrtcBackend().build(path, compute_capabilities=["9.0"], ptx=False, profiles=...)`` with
the corpus's suggested profiles, and records ok / the UnsupportedModel message and its list /
any other exception with its traceback.
"""
from __future__ import annotations

import json
import os

import numpy as np
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import model_corpus as mc  # noqa: E402


def _load(p: str | Path) -> dict:
    p = Path(p)
    return json.loads(p.read_text()) if p.exists() else {}


def _save(p: str | Path, d: dict) -> None:
    Path(p).write_text(json.dumps(d, indent=1, sort_keys=True) + "\n")


def cmd_materialize(full_dir: str, names: list[str]) -> None:
    for n in names or mc.list_models():
        t0 = time.time()
        p = mc.materialize(n, full_dir)
        print(f"{n}: {p.stat().st_size / 1e6:.1f} MB in {time.time() - t0:.1f}s", flush=True)


def cmd_ort(full_dir: str, out: str, names: list[str]) -> None:
    import numpy as np
    import onnxruntime as ort

    res = _load(out)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 2
    for n in names or mc.list_models():
        rec: dict = {}
        try:
            t0 = time.time()
            sess = ort.InferenceSession(str(Path(full_dir) / f"{n}.onnx"), so, providers=["CPUExecutionProvider"])
            rec["load_s"] = round(time.time() - t0, 2)
            static_batch = all(isinstance(i["shape"][0], int) for i in mc.info(n)["inputs"] if i["shape"])
            for b in (1, 2):
                key = f"batch{b}"
                if b == 2 and static_batch:
                    rec[key] = {"status": "n/a (static batch 1)"}
                    continue
                feeds = mc.typical_inputs(n, batch=b)
                t0 = time.time()
                outs = sess.run(None, feeds)
                dt = time.time() - t0
                finite = all(bool(np.isfinite(o).all()) for o in outs if np.issubdtype(o.dtype, np.floating))
                rec[key] = {"status": "ok" if finite else "NON-FINITE",
                            "inputs": {k: list(v.shape) for k, v in feeds.items()},
                            "outputs": [list(o.shape) for o in outs],
                            "max_abs": [float(np.abs(o.astype(np.float64)).max()) if o.size else 0.0 for o in outs],
                            "seconds": round(dt, 2)}
            rec["status"] = "ok" if all(v.get("status", "").startswith(("ok", "n/a")) for k, v in rec.items()
                                        if k.startswith("batch")) else "problem"
        except Exception as e:  # noqa: BLE001 - a broken export is a result
            rec = {"status": "error", "error": f"{type(e).__name__}: {str(e)[:1500]}"}
        res[n] = rec
        print(n, rec["status"], {k: (v.get("status"), v.get("max_abs")) for k, v in rec.items() if k.startswith("batch")},
              flush=True)
        _save(out, res)


def _build_one(path: str, profiles_json: str) -> dict:
    """Runs in a child process: one nvrtc build; returns a JSON-able record."""
    from rtxpack.backends.nvrtc import NvrtcBackend
    from rtxpack.core.errors import UnsupportedModel

    profiles = json.loads(profiles_json) or None
    t0 = time.time()
    try:
        plan = NvrtcBackend().build(path, compute_capabilities=["9.0"], ptx=False, profiles=profiles)
        info = NvrtcBackend().inspect(plan)
        return {"status": "ok", "seconds": round(time.time() - t0, 1), "plan_bytes": len(plan),
                "kernels": info.details.get("kernels")}
    except UnsupportedModel as e:
        return {"status": "unsupported", "seconds": round(time.time() - t0, 1), "message": str(e),
                "unsupported": list(getattr(e, "details", {}).get("unsupported", []) or []),
                "import_stage": "unsupported" in getattr(e, "details", {})}
    except Exception as e:  # noqa: BLE001 - this is what the report is for
        return {"status": "crash", "seconds": round(time.time() - t0, 1), "exception": type(e).__name__,
                "message": str(e)[:3000], "traceback": traceback.format_exc()[-6000:]}


def cmd_nvrtc(full_dir: str, out: str, names: list[str], timeout: int = 900) -> None:
    res = _load(out)
    for n in names or mc.list_models():
        prof = mc.profiles(n)
        code = ("import json,sys; sys.path.insert(0, %r); import corpus_report as r; "
                "print('@@' + json.dumps(r._build_one(sys.argv[1], sys.argv[2])))" % str(ROOT / "scripts"))
        t0 = time.time()
        try:
            p = subprocess.run([sys.executable, "-c", code, str(Path(full_dir) / f"{n}.onnx"), json.dumps(prof)],
                               capture_output=True, text=True, timeout=timeout, env=dict(os.environ))
            line = next((ln for ln in p.stdout.splitlines() if ln.startswith("@@")), None)
            if line is None:
                rec = {"status": "crash", "exception": f"process exit {p.returncode}",
                       "message": (p.stderr or p.stdout)[-3000:]}
            else:
                rec = json.loads(line[2:])
        except subprocess.TimeoutExpired:
            rec = {"status": "timeout", "seconds": timeout}
        rec["profiles"] = prof
        rec["wall_s"] = round(time.time() - t0, 1)
        res[n] = rec
        print(n, rec["status"], rec.get("message", "")[:200].replace("\n", " "), flush=True)
        _save(out, res)


# ------------------------------------------------------------------------------------------- analyze
def classify(name: str) -> dict:
    """Static look at one structure copy with the backend's own placement rules (rtxpack must import).

    The backend stops at import, so its list mixes three things; this splits them:
    ``host``: an op with no implementation whose inputs are all shape-derived (would be host numpy
    shape arithmetic if the host evaluator had it: Mod, Equal, Where over shapes ...);
    ``device``: an op with no kernel on data-dependent values;
    ``cascade``: a Reshape/Slice/... whose shape input is "computed on the GPU" only because an
    upstream host-able op is missing (it resolves with that op), vs ``data_dependent`` (it does not);
    ``latent``: limits the planner would hit after the import problems are fixed (Conv1d, 1-D pools).
    """
    import onnx
    from rtxpack.backends.nvrtc.onnx_import import DEVICE_OPS, HOST_INPUTS, HOST_OPS

    m = onnx.load(str(mc.model_path(name)))
    meta = mc.info(name)
    # element types for no-op Cast detection: declare the stripped tensors, then infer
    probe = onnx.ModelProto()
    probe.CopyFrom(m)
    for r in meta["stripped"]:
        probe.graph.input.append(onnx.helper.make_tensor_value_info(
            r["name"], onnx.helper.np_dtype_to_tensor_dtype(np.dtype(r["dtype"])), r["shape"]))
    try:
        probe = onnx.shape_inference.infer_shapes(probe)
    except Exception:  # noqa: BLE001 - advisory only
        pass
    etype = {v.name: v.type.tensor_type.elem_type for v in list(probe.graph.value_info) + list(probe.graph.input)
             + list(probe.graph.output)}
    etype.update({i.name: i.data_type for i in m.graph.initializer})
    weights = {i.name for i in m.graph.initializer} | {r["name"] for r in meta["stripped"]}
    wshape = {i.name: list(i.dims) for i in m.graph.initializer} | {r["name"]: r["shape"] for r in meta["stripped"]}
    now, ext = set(weights), set(weights)
    host: dict[str, int] = {}
    device: dict[str, int] = {}
    cascade: dict[str, int] = {}
    data_dep: dict[str, int] = {}
    latent: dict[str, int] = {}
    for n in m.graph.node:
        outs = [o for o in n.output if o]
        if n.op_type == "Constant":
            now.update(outs), ext.update(outs)
            continue
        ins = [i for i in n.input if i]
        on_host_now = n.op_type == "Shape" or (all(i in now for i in ins) and n.op_type in HOST_OPS)
        on_host_ext = n.op_type == "Shape" or all(i in ext for i in ins)
        if on_host_now:
            now.update(outs)
        if on_host_ext:
            ext.update(outs)
        if on_host_now:
            continue
        if n.op_type not in DEVICE_OPS:
            d = host if on_host_ext else device
            key = n.op_type
            if key == "Cast" and not on_host_ext:
                to = next((a.i for a in n.attribute if a.name == "to"), 0)
                src = etype.get(n.input[0], 0)
                key = ("Cast (same-type no-op)" if src == to else
                       f"Cast ({onnx.helper.tensor_dtype_to_np_dtype(src).name if src else '?'} -> "
                       f"{onnx.helper.tensor_dtype_to_np_dtype(to).name})")
            d[key] = d.get(key, 0) + 1
            continue
        for idx in HOST_INPUTS.get(n.op_type, ()):
            if idx < len(n.input) and n.input[idx] and n.input[idx] not in now:
                d = cascade if n.input[idx] in ext else data_dep
                d[n.op_type] = d.get(n.op_type, 0) + 1
                break
        if n.op_type in ("Conv", "ConvTranspose", "MaxPool", "AveragePool"):
            k = [list(a.ints) for a in n.attribute if a.name == "kernel_shape"]
            rank = len(k[0]) if k else (len(wshape[n.input[1]]) - 2 if len(n.input) > 1 and n.input[1] in wshape else 2)
            if rank != 2:
                key = f"{n.op_type} {rank}-D"
                latent[key] = latent.get(key, 0) + 1
            if n.op_type == "Conv" and len(n.input) > 1 and n.input[1] not in weights:
                key = "Conv whose weight is computed in the graph (weight norm)"
                latent[key] = latent.get(key, 0) + 1
    return {"host": host, "device": device, "cascade": cascade, "data_dependent": data_dep, "latent": latent,
            "int64_inputs": [i["name"] for i in meta["inputs"] if i["dtype"] != "float32"]}


def cmd_analyze(out: str, names: list[str]) -> None:
    res = _load(out)
    for n in names or mc.list_models():
        res[n] = classify(n)
        print(n, json.dumps(res[n]), flush=True)
    _save(out, res)


# ------------------------------------------------------------------------------------------- table
def gap_items(rec: dict) -> list[str]:
    """The UnsupportedModel problems of one build, as normalized gap names (one per distinct gap)."""
    items = []
    for u in rec.get("unsupported", []):
        m = re.match(r"input '(.+)' has dtype (\w+)", u)
        if m:
            items.append(f"model input of dtype {m.group(2)}")
            continue
        m = re.match(r"(\S+) \(node '.*?': input '.*?' is computed on the GPU", u)
        if m:
            items.append(f"{m.group(1)} with a GPU-computed shape/axes/bounds input")
            continue
        m = re.match(r"(\S+) \(node '.*?': optional output", u)
        if m:
            items.append(f"{m.group(1)} optional 2nd output (mask/indices)")
            continue
        m = re.match(r"(\S+) \(node ", u)
        items.append(m.group(1) if m else u)
    if rec.get("status") == "unsupported" and not rec.get("unsupported"):
        msg = rec.get("message", "")
        m = re.match(r"(\S+) \(node '.*?'\) (.*?)(?: \(fix:|$)", msg)
        items.append(f"[plan] {m.group(1)}: {re.sub(r'node .*?:', '', m.group(2))[:120]}" if m else f"[plan] {msg[:140]}")
    return sorted(set(items))


NOTES = """## Notes from the gap analysis that started issue 12, before the backend work (hand-checked 2026-11-21; torch 2.13.0+cpu, torchvision 0.28, transformers 5.23, diffusers 0.42.1,
onnx 1.23.2, onnxscript 0.7.2, onnxruntime 1.31.1)

- Every torch export succeeded with both exporters, with named dynamic dims (batch; seq for BERT/GPT-2;
  samples for wav2vec2; height/width for segmentation and the UNets). Whisper's encoder insists on exactly
  3000 mel frames, so only its batch is dynamic. The zoo reconstructions are static batch 1, as the zoo ships them.
- The dynamo exporter writes opset 18 and down-converts to 17 on request. For 13 of its 21 exports the
  conversion fails and the file stays at opset 18: 12 times `axes_input_to_attribute: No initializer or
  constant input to node found` (the torchvision CNNs, DeepLabV3, wav2vec2), once `No Adapter To Version $17
  for Pad` (Swin-T). For GPT-2 and the diffusers UNet the conversion "succeeds" and leaves an invalid model:
  `Split` keeps the opset-18 `num_outputs` attribute, which onnxruntime and `onnx.checker` reject.
  `export_models.py` checks every dynamo export and re-exports at 18 when this happens (`exports.json`:
  `opset17_invalid`).
- Exporter patterns: both exporters fold eval BatchNorm into Conv where a Conv precedes it (only DenseNet's
  pre-activation BN survives). GroupNorm becomes Reshape -> InstanceNormalization -> Reshape -> Mul -> Add
  with both exporters. Attention becomes MatMul/Softmax followed by `IsNaN` + `Where` (a guard that zeroes the rows
  of fully masked queries): with both exporters where a mask is passed (BERT, GPT-2), and with the dynamo
  exporter also without any mask (HF ViT, wav2vec2). The dynamo exporter
  uses ReduceMean for adaptive average pooling, pre-transposed weights for MatMul, keeps wav2vec2's
  weight norm as an in-graph ReduceL2/Div/Mul computation (TorchScript folds it to a constant), builds
  BERT/GPT-2 masks with GatherND and Max, and names derived output dims with expressions
  (`8*(((height - 1)//8)) + 8`, `((((((((samples//80)) - 3)//2)) - 1)//2)) + 1`). The TorchScript exporter
  writes long Shape/Gather/Unsqueeze/Concat chains (Swin-T 6232 nodes vs 768, GPT-2 957 vs 237,
  ShuffleNet 902 vs 173), `Mod` in torchvision's MultiheadAttention shape code, same-type `Cast`s, and names
  a static dim after a Resize (`Resizeout_dim_1` for the 21 classes).
- Which values the backend wants host-known: its HOST_INPUTS (Reshape shape, Squeeze/Unsqueeze axes,
  Slice starts/ends/axes/steps, Split sizes, Clip min/max, ReduceMean axes, Expand shape). In this corpus
  the only violation is vit_b_16-ts, and it is a cascade of the missing host `Mod`. The parameter inputs of
  the missing device ops are all shape-derived or constant too: Resize `sizes` (segmentation; linear,
  half_pixel) or `scales` (UNets; nearest asymmetric/floor, and linear half_pixel), Pad `pads` (Swin,
  constant mode), GatherND indices (BERT/GPT-2 dynamo), ConvTranspose weight/bias initializers. No corpus
  model has a truly data-dependent shape.
- What-if probes (temporary graph rewrites / in-process monkeypatches, not in the repo): the four zoo models
  build once the Dropout mask outputs are dropped; both Whisper encoders build with Conv1d rewritten as
  Conv2d (1 x k); both MobileNetV3s build with HardSwish/HardSigmoid rewritten as Mul/Add/Clip; with numpy
  host evaluators for Mod/Equal/Not/And/GreaterOrEqual/LessOrEqual/Max/ScatterND/ReduceL2/Cast,
  vit_b_16-ts builds and both Swin-Ts are left with only `Pad`; BERT/GPT-2 are then left with device
  And/Cast(int64 -> bool)/IsNaN/Where (+ GatherND for dynamo) and the int64 inputs.
"""


def cmd_table(ort_json: str, nvrtc_json: str, analysis_json: str | None = None) -> None:
    ortr, nv = _load(ort_json), _load(nvrtc_json)
    an = _load(analysis_json) if analysis_json else {}
    exports = _load(mc.MODELS_DIR / "exports.json")
    rows = []
    gap_models: dict[str, list[str]] = {}
    for n in mc.list_models():
        meta = mc.info(n)
        b = nv.get(n, {})
        o = ortr.get(n, {})
        gaps = gap_items(b)
        for g in gaps:
            gap_models.setdefault(g, []).append(n)
        rows.append({
            "model": n, "family": meta["family"], "exporter": meta["exporter"], "opset": meta["opset"],
            "nodes": meta["nodes"], "op_types": meta["op_types"],
            "inputs": [{k: i[k] for k in ("name", "dtype", "shape", "profile")} for i in meta["inputs"]],
            "structure_bytes": (mc.MODELS_DIR / f"{n}.onnx").stat().st_size,
            "stripped_initializers": len(meta["stripped"]),
            "ort": {k: (v if not isinstance(v, dict) else {kk: v[kk] for kk in ("status", "outputs", "max_abs") if kk in v})
                    for k, v in o.items() if k in ("status", "error", "batch1", "batch2")},
            "nvrtc": {k: b[k] for k in ("status", "message", "unsupported", "exception", "traceback", "seconds",
                                         "plan_bytes", "kernels", "profiles") if k in b},
            "gaps": gaps,
            "analysis": an.get(n, {}),
        })
    failed_exports = {k: v for k, v in exports.items() if v.get("status") != "ok"}
    total = sum(r["structure_bytes"] for r in rows)
    doc = {"generated": time.strftime("%Y-%m-%d"), "models": rows, "failed_exports": failed_exports,
           "gaps": {g: sorted(ms) for g, ms in sorted(gap_models.items(), key=lambda kv: (-len(kv[1]), kv[0]))},
           "folder_bytes": total}

    L = ["# Real-model corpus: exports, onnxruntime check, nvrtc build", "",
         "Generated by `scripts/export_models.py` (exports + structure-only copies) and `scripts/corpus_report.py` "
         "(this table). Each `tests/models/<model>.onnx` is the exporter's graph with float initializers over "
         f"{mc.STRIP_THRESHOLD} elements stripped; `tests/model_corpus.py` re-creates them from a fixed seed. "
         "`corpus.json` has the same data machine-readable (with tracebacks).", "",
         "nvrtc build: `NvrtcBackend().build(materialized, compute_capabilities=['9.0'], ptx=False, profiles=<suggested>)` "
         "on a machine without a GPU. ORT: onnxruntime CPU on typical inputs at batch 1 and 2 (outputs must be finite).", "",
         "| model | family | exporter | opset | nodes | ORT b1/b2 | nvrtc | unsupported (import stage) / planning error |",
         "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        o = r["ort"]
        ob = "/".join(("ok" if str(o.get(k, {}).get("status", "?")).startswith("ok") else
                       ("n/a" if str(o.get(k, {}).get("status", "")).startswith("n/a") else o.get(k, {}).get("status", "ERR")))
                      for k in ("batch1", "batch2")) if o.get("status") != "error" else "ERROR"
        nvs = r["nvrtc"].get("status", "?")
        if nvs == "crash":
            detail = f"**{r['nvrtc'].get('exception')}**: {r['nvrtc'].get('message', '')[:200]}"
        elif nvs == "ok":
            detail = f"plan {r['nvrtc'].get('plan_bytes', 0) / 1e6:.1f} MB, {r['nvrtc'].get('kernels')} kernels"
        else:
            detail = ", ".join(r["gaps"])
        exp = "dynamo" if "dynamo=True" in r["exporter"] else ("TorchScript" if "dynamo=False" in r["exporter"] else r["exporter"])
        L.append(f"| {r['model']} | {r['family']} | {exp} | {r['opset']} | {r['nodes']} | {ob} | {nvs} | "
                 f"{detail.replace('|', '/')} |")
    if doc["gaps"]:
        L += ["", "## Gaps, by how many corpus models need each", "", "| gap | models | which |", "|---|---|---|"]
        L += [f"| {g} | {len(ms)} | {', '.join(ms)} |" for g, ms in doc["gaps"].items()]
    else:
        L += ["", "## Gaps", "", f"None: every one of the {len(rows)} models builds."]
    if an and doc["gaps"]:
        split: dict[str, dict[str, list[str]]] = {"device": {}, "host": {}, "cascade": {}, "data_dependent": {},
                                                   "latent": {}}
        for r in rows:
            for k in split:
                for op in r["analysis"].get(k, {}):
                    split[k].setdefault(op, []).append(r["model"])
        doc["gaps_split"] = {k: {op: sorted(ms) for op, ms in sorted(v.items(), key=lambda kv: (-len(kv[1]), kv[0]))}
                             for k, v in split.items()}
        titles = {"device": "Device kernels missing (op on data-dependent values)",
                  "host": "Host evaluation missing (op whose inputs are all shape-derived / constant: numpy on the host "
                          "would do)",
                  "cascade": "Shape inputs reported as 'computed on the GPU' that only follow from a missing host op above",
                  "data_dependent": "Shape inputs that are really data-dependent",
                  "latent": "Planner limits hidden behind the import-stage errors (static scan)"}
        L += ["", "## The same gaps, split (static scan with the backend's own placement rules: "
              "`corpus_report.py analyze`)", ""]
        for k, title in titles.items():
            if not split[k]:
                continue
            L += [f"### {title}", "", "| op | models | which |", "|---|---|---|"]
            for op, ms in doc["gaps_split"][k].items():
                L.append(f"| {op} | {len(ms)} | {', '.join(sorted(ms))} |")
            L.append("")
    if failed_exports:
        L += ["", "## Exports that failed", "", "| export | error |", "|---|---|"]
        for k, v in sorted(failed_exports.items()):
            L.append(f"| {k} | {str(v.get('error', ''))[:300].replace('|', '/').replace(chr(10), ' ')} |")
    L += ["", "## Dynamic dimensions (as the exporters wrote them)", "",
          "| model | inputs | outputs |", "|---|---|---|"]
    for r in rows:
        meta = mc.info(r["model"])
        fmt = lambda xs: "; ".join(f"{x['name']} {x['shape']}" for x in xs)  # noqa: E731
        L.append(f"| {r['model']} | {fmt(meta['inputs'])} | {fmt(meta['outputs'])} |".replace("|", "|"))
    L += ["", NOTES]
    L += ["", "## Op types per model", "", "| model | op types |", "|---|---|"]
    for r in rows:
        L.append(f"| {r['model']} | {' '.join(r['op_types'])} |")
    _save(mc.MODELS_DIR / "corpus.json", doc)
    L += ["", f"Folder size (the .onnx structure copies): {total / 1e6:.2f} MB in {len(rows)} files.", ""]
    (mc.MODELS_DIR / "CORPUS.md").write_text("\n".join(L))
    print(f"{len(rows)} models, {total / 1e6:.2f} MB; gaps: {len(doc['gaps'])}")


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    cmd, rest = argv[0], argv[1:]
    names = [a for a in rest if not a.endswith((".json",)) and not Path(a).is_dir() and "/" not in a]
    if cmd == "materialize":
        cmd_materialize(rest[0], names)
    elif cmd == "ort":
        cmd_ort(rest[0], rest[1], names)
    elif cmd == "nvrtc":
        cmd_nvrtc(rest[0], rest[1], names)
    elif cmd == "analyze":
        cmd_analyze(rest[0], names)
    elif cmd == "table":
        cmd_table(rest[0], rest[1], rest[2] if len(rest) > 2 else None)
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
