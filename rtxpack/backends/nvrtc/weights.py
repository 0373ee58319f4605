"""Weights on the device: which tensors the kernels read, BatchNorm folding, and the device layout.

A full plan stores the device tensors ready to copy (DWGT section: one host-to-device copy at
load); a stripped plan and ``refit`` compute them from the ONNX's own initializers with the very
same functions here, so both paths give bit-identical device weights.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ...core.errors import BackendError
from .lowering import conv_weight_names, gemm_weight_names
from .onnx_import import HOST_INPUTS
from .schedule import device_bytes

ALIGN = 256


def device_weight_names(graph: Mapping[str, Any]) -> dict[str, str]:
    """``{device tensor name: how to make it}`` for weights the kernels read ("raw" or a fold recipe)."""
    weights = {w["name"] for w in graph["weights"]}
    out: dict[str, str] = {}
    for nd in graph["nodes"]:
        if nd["where"] != "device":
            continue
        skip = set(HOST_INPUTS.get(nd["op"], ()))
        half = nd["attrs"].get("tc_half", ())    # fp16 plans: tensor-core operands stored as fp16 ("#h")
        if nd["op"] == "Conv" and "bn" in nd["attrs"]:
            w, b = conv_weight_names(nd)
            out[b] = "conv_bn_b"
            if 1 in half:
                out[w + "#h"] = "half:conv_bn_w"    # only the fp16 copy is read
            else:
                out[w] = "conv_bn_w"
            skip |= {1, 2}
        scaled = nd["op"] in ("Gemm", "MatMul") and "colscale" in nd["attrs"]
        if scaled:                                   # a layer scale folded into B's columns and the bias
            w, b = gemm_weight_names(nd)
            if b:
                out[b] = "colscale_b"
            if 1 not in half:
                out[w] = "colscale_w"
            skip |= {1, 2}
        for i in half:
            src, base = nd["inputs"][i], "raw"
            if i == 1 and scaled:
                src, base = gemm_weight_names(nd)[0], "colscale_w"
            if i == 1 and nd["attrs"].get("tc_bt"):
                out[src + "#ht"] = "half_t:" + base  # transposed to [N, K]
            elif not (nd["op"] == "Conv" and "bn" in nd["attrs"]):
                out[src + "#h"] = "half:" + base
            skip.add(i)
        if nd["op"] == "BatchNormalization":
            out[nd["name"] + "#scale"], out[nd["name"] + "#shift"] = "bn_scale", "bn_shift"
            skip |= {1, 2, 3, 4}
        for i, t in enumerate(nd["inputs"]):
            if t in weights and i not in skip:
                out[t] = "raw"
    return out


def derive_weight(graph_node: Mapping[str, Any], recipe: str, w: Mapping[str, np.ndarray], device_name: str = ""
                  ) -> np.ndarray:
    """Fold BatchNormalization parameters (computed in float64, stored as float32); ``half:RECIPE`` is
    RECIPE rounded to float16 (the tensor-core operands of fp16 plans), ``half_t:`` also transposed."""
    if recipe.startswith(("half:", "half_t:")):
        kind, base = recipe.split(":", 1)
        src = w[device_name.rsplit("#", 1)[0]] if base == "raw" else derive_weight(graph_node, base, w)
        src = np.asarray(src, dtype=np.float32)
        return np.ascontiguousarray(src.T if kind == "half_t" else src).astype(np.float16)
    ins = graph_node["inputs"]
    if recipe.startswith("colscale"):     # a layer scale gamma folded into the columns of B and the bias
        a = graph_node["attrs"]
        gamma = np.asarray(a["colscale_value"] if "colscale_value" in a else w[a["colscale"]], np.float64).reshape(-1)
        if recipe == "colscale_b":
            return (w[ins[2]].astype(np.float64) * gamma).astype(np.float32)
        bw = w[ins[1]].astype(np.float64)
        gamma = gamma / a.get("colscale_alpha", 1.0)     # the epilogue's alpha carries the rest (_plan_gemm)
        if graph_node["op"] == "Gemm" and graph_node["attrs"].get("transB", 0):
            return (bw * gamma[:, None]).astype(np.float32)      # B stored [N, K]
        return (bw * gamma[None, :]).astype(np.float32)
    if recipe.startswith("conv_bn"):
        scale_n, bias_n, mean_n, var_n = graph_node["attrs"]["bn"]["params"]
        eps = graph_node["attrs"]["bn"]["epsilon"]
    else:
        scale_n, bias_n, mean_n, var_n = ins[1:5]
        eps = graph_node["attrs"].get("epsilon", 1e-5)
    s = w[scale_n].astype(np.float64) / np.sqrt(w[var_n].astype(np.float64) + eps)
    if recipe == "conv_bn_w":
        cw = w[ins[1]].astype(np.float64)
        return (cw * s.reshape(-1, *([1] * (cw.ndim - 1)))).astype(np.float32)
    if recipe == "conv_bn_b":
        cb = w[ins[2]].astype(np.float64) if len(ins) > 2 and ins[2] else 0.0
        return ((cb - w[mean_n]) * s + w[bias_n]).astype(np.float32)
    if recipe == "bn_scale":
        return s.astype(np.float32)
    if recipe == "bn_shift":
        return (w[bias_n] - w[mean_n] * s).astype(np.float32)
    raise BackendError(f"unknown weight recipe {recipe!r}", fix="rebuild the plan with this rtxpack version")


def host_weight_names(graph: Mapping[str, Any]) -> set[str]:
    """Initializers the host reads while planning shapes (shape data, host-evaluated nodes)."""
    weights = {w["name"] for w in graph["weights"]}
    out: set[str] = set()
    for nd in graph["nodes"]:
        pos = range(len(nd["inputs"])) if nd["where"] == "host" else HOST_INPUTS.get(nd["op"], ())
        out |= {nd["inputs"][i] for i in pos if i < len(nd["inputs"]) and nd["inputs"][i] in weights}
    return out | {o for o in graph["outputs"] if o in weights}   # an initializer returned as a model output


def device_tensors(graph: Mapping[str, Any], weights: Mapping[str, np.ndarray]) -> tuple[list[dict[str, Any]], bytes]:
    """Device layout of every tensor the kernels read: records (name, offset, nbytes) and the bytes."""

    nodes = {nd["name"]: nd for nd in graph["nodes"]}
    recs, parts, pos = [], [], 0
    for name, recipe in sorted(device_weight_names(graph).items()):
        arr = weights[name] if recipe == "raw" else derive_weight(nodes.get(name.split("#")[0], {}), recipe, weights,
                                                                 name)
        b = arr.astype("<f2").tobytes() if recipe.startswith("half") else device_bytes(arr)
        recs.append({"name": name, "offset": pos, "nbytes": len(b)})
        pad = (-len(b)) % ALIGN or (ALIGN if not b else 0)
        parts += [b, b"\0" * pad]
        pos += len(b) + pad
    return recs, b"".join(parts)
