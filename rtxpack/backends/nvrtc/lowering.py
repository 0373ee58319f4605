"""Device nodes -> kernel launches: which specializations a node needs (at build), its output
shapes and its launches for concrete input shapes (once per shape, at load/run time).

Launch arguments name tensors by string (the runtime turns names into device addresses after
planning memory), so the same code validates a model at build time with no GPU at all.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ...core.errors import UnsupportedModel
from .host_ops import attr_or_input, flatten_shape, reshape_target, slice_params, squeeze_shape, unsqueeze_shape
from . import lowering_ops as ops
from .dtypes import ITEMSIZE
from .kernels import BINARY_OPS, GEMM_TILES, TILES, UNARY_OPS, KernelSpec
from .kernels_tc import ATTN_DPS, WG_TILES, tc_tiles
from .launch import Launch, Shape, blocks as _blocks, broadcast, bstrides as _bstrides, collapse as _collapse, i6 as _i6
from .launch import rowthreads as _rowthreads, strides_of as _strides

HV = Callable[[str], "np.ndarray | None"]   # host value of a tensor name, or None when device-only


def strided_copy(src: str, dst: str, shape: Sequence[int], sx: Sequence[int], sy: Sequence[int], ox: int, oy: int,
                 node: Mapping[str, Any]) -> Launch:
    """y[oy + sum c*sy] = x[ox + sum c*sx]: 4-byte elements by ``strided_copy``, others by ``strided_copy_b``."""
    dims, (cx, cy) = _collapse(shape, sx, sy)
    n = int(np.prod(shape))
    size = itemsize(node)
    spec = KernelSpec("strided_copy") if size == 4 else KernelSpec("strided_copy_b", (size,))
    return Launch(spec, _blocks(n), 256, [src, dst, n, len(dims), _i6(dims, node), _i6(cx, node), _i6(cy, node), ox, oy])


def itemsize(node: Mapping[str, Any], index: int = 0) -> int:
    """Bytes per element of the node's output ``index`` (float32 when planning did not say)."""
    dts = node.get("out_dtypes") or ()
    return ITEMSIZE[dts[index]] if index < len(dts) else 4


# ---------------------------------------------------------------- conv
def _conv_geometry(node, xs: Shape, ws: Sequence[int]):
    a = node["attrs"]
    if len(xs) != 4:
        raise UnsupportedModel(f"Conv (node {node['name']!r}) over {len(xs) - 2} spatial dimension(s); 1-D and 2-D "
                               "convolutions are supported", fix="use Conv1d or Conv2d")
    kh, kw = int(ws[2]), int(ws[3])
    sh, sw = a.get("strides", [1, 1])
    dh, dw = a.get("dilations", [1, 1])
    pads = _pads(a, xs[2:], (kh, kw), (sh, sw), (dh, dw))
    oh = (xs[2] + pads[0] + pads[2] - ((kh - 1) * dh + 1)) // sh + 1
    ow = (xs[3] + pads[1] + pads[3] - ((kw - 1) * dw + 1)) // sw + 1
    return kh, kw, sh, sw, dh, dw, pads, oh, ow


def _pads(a, spatial, k, s, d) -> list[int]:
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for n, kk, ss, dd in zip(spatial, k, s, d):
            total = max((math.ceil(n / ss) - 1) * ss + (kk - 1) * dd + 1 - n, 0)
            lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
            begins.append(lo)
            ends.append(total - lo)
        return begins + ends
    if auto == "VALID":
        return [0] * (2 * len(spatial))
    return list(a.get("pads", [0] * (2 * len(spatial))))


def conv2d_view(node: Mapping[str, Any], ws: Sequence[int]) -> tuple[Mapping[str, Any], list[int]]:
    """A 1-D convolution (weights [OC, C/g, K]) as the 2-D one over [N, C, 1, L] it is: (node, weight shape)."""
    if len(ws) != 3:
        return node, list(ws)
    a = dict(node["attrs"])
    for key, default in (("strides", 1), ("dilations", 1)):
        a[key] = [1] + list(a.get(key, [default]))
    if "kernel_shape" in a:
        a["kernel_shape"] = [1] + list(a["kernel_shape"])
    p = list(a.get("pads", [0, 0]))
    a["pads"] = [0, p[0], 0, p[1]]
    return {**node, "attrs": a}, [ws[0], ws[1], 1, ws[2]]


#: depthwise convolutions conv_dw runs: (kernel size, stride), and the outputs of a row a thread computes (its V)
DW_KERNELS = {(k, s) for k in (3, 5, 7) for s in (1, 2)}
DW_V = 4


def _depthwise(node, ws: Sequence[int]) -> tuple[int, int] | None:
    """(K, S) of a 2-D depthwise convolution conv_dw takes (a filter per channel, K x K taps, stride S both
    ways, no dilation), else None."""
    a = node["attrs"]
    st, dil = list(a.get("strides", [1, 1])), list(a.get("dilations", [1, 1]))
    if len(ws) != 4 or ws[0] != a.get("group", 1) or ws[1] != 1 or ws[2] != ws[3] or dil != [1, 1] \
            or len(st) != 2 or st[0] != st[1] or (int(ws[2]), int(st[0])) not in DW_KERNELS:
        return None
    return int(ws[2]), int(st[0])


def _conv_specs(node, ws: Sequence[int]) -> list[KernelSpec]:
    node, ws = conv2d_view(node, ws)
    a = node["attrs"]
    g = a.get("group", 1)
    if ws[0] // g < 8:
        return [KernelSpec("conv_dw", dw)] if (dw := _depthwise(node, ws)) else [KernelSpec("conv_direct")]
    k1 = (ws[2] == 1 and ws[3] == 1 and list(a.get("strides", [1, 1])) == [1, 1]
          and not any(a.get("pads", [0] * 4)) and a.get("auto_pad", "NOTSET") in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"))
    if a.get("tc"):
        suffix = (int(k1), int(a.get("relu", 0)))     # the activation is a template argument (kernels_tc)
        return [KernelSpec("conv_tc", t + suffix) for t in tc_tiles("conv_tc", suffix).values()] + \
            [KernelSpec("splitk_reduce")]
    return [KernelSpec("conv_igemm", TILES[t] + (int(k1),)) for t in ("large", "big", "small")] + \
        [KernelSpec("splitk_reduce")]


def _gemm_specs(node: Mapping[str, Any]) -> list[KernelSpec]:
    a = node["attrs"]
    if a.get("tc"):
        half = set(a.get("tc_half", ()))
        suffix = (int(0 in half), int(1 in half), int(a.get("relu", 0)))
        return [KernelSpec("gemm_tc", t + suffix) for t in tc_tiles("gemm_tc", suffix).values()] + \
            [KernelSpec("gemm_wg", t + suffix) for t in WG_TILES.values() if suffix[1]] + \
            [KernelSpec("gemm_splitk_reduce")]
    return [KernelSpec("gemm", t) for t in GEMM_TILES.values()] + [KernelSpec("gemm_splitk_reduce")]


def _split_k(blocks: int, K: int, bk: int, num_sms: int) -> int:
    """Split-K factor that fills two waves of ``num_sms`` with ``blocks`` tiles (each split >= 8 k-steps;
    no empty splits)."""
    splits = max(1, min(math.ceil(2 * num_sms / blocks), K // (8 * bk), 16)) if blocks < 2 * num_sms else 1
    if splits > 1:
        chunk = math.ceil(K / (splits * bk)) * bk
        splits = math.ceil(K / chunk)
    return splits


def _tile_candidates(rows: int, cols: int, K: int, copies: int, num_sms: int, splittable: bool,
                     tiles: Mapping[str, tuple[int, ...]]) -> tuple[list[tuple[str, int]], tuple[str, int]]:
    """(tile, split-K) candidates of a rows x cols x K product repeated ``copies`` times (groups,
    batch) among ``tiles`` (tensor-core or fp32 GEMM tiles, biggest first), and the heuristic's pick:
    the biggest tile that still gives half a wave of blocks, then split-K to fill the GPU."""
    cands: list[tuple[str, int]] = []
    pick = last = None
    for label, (bm, bn, bk, *rest) in tiles.items():
        blocks = math.ceil(cols / bn) * math.ceil(rows / bm) * copies
        s = _split_k(blocks, K, bk, num_sms) if splittable else 1
        cands += [(label, 1)] + ([(label, s)] if s > 1 else [])
        if len(rest) > 2 and rest[2] > 1:     # a k-slice tile (tensor cores, KS > 1): only the tuner picks it
            continue
        last = cands[-1]
        if pick is None and rows >= bm and blocks >= num_sms // 2:
            pick = (label, s)
    return cands, pick or last or cands[-1]


def _plan_tiles(node: Mapping[str, Any], family: str, table: Mapping[str, tuple[int, ...]],
                suffix: tuple[int, ...] = ()) -> tuple[Mapping[str, tuple[int, ...]], tuple[int, ...]]:
    """The tiles of ``family`` the layer can run, and the template arguments after the tile: ``table``
    (today's) when planning a build, those of them the loaded plan carries, else the tiles an earlier
    rtxpack compiled into it (biggest first), whose tensor-core kernels may predate the activation as a
    template argument (the suffix one shorter: the activation was read from the launch)."""
    have = node.get("kernels")
    if have is None:
        return table, suffix
    tc = family in ("conv_tc", "gemm_tc")
    suffixes = (suffix, suffix[:-1]) if tc else (suffix,)
    for suf in suffixes:
        carried = {k: t for k, t in table.items() if KernelSpec(family, t + suf) in have}
        if carried:
            return carried, suf
    # a tile is 5 long (fp32; tensor-core tiles before k slices) or 6 (tensor-core: BM, BN, BK, WM, WN, KS);
    # tensor-core kernels with the activation in their template arguments always have k slices
    n_today = len(next(iter(table.values())))
    for suf in suffixes:
        for n in (n_today,) if tc and suf is suffix else (n_today, 5):
            own = sorted({s.targs[:n] for s in have if s.family == family and s.targs[n:] == suf},
                         key=lambda t: (-t[0] * t[1], t))
            if own:
                return {"x".join(map(str, t)): t for t in own}, suf
    return table, suffix


def _wg_tiles(node: Mapping[str, Any], suffix: tuple[int, ...]) -> Mapping[str, tuple[int, ...]]:
    """The gemm_wg tiles a tensor-core GEMM can run: B must be fp16 (a weight); all of WG_TILES when
    planning a build, else those the loaded plan carries and the GPU can run (the runtime leaves
    gemm_wg out of ``kernels`` where wgmma is missing: not sm_90a)."""
    if len(suffix) != 3 or not suffix[1]:
        return {}
    have = node.get("kernels")
    return {k: t for k, t in WG_TILES.items() if have is None or KernelSpec("gemm_wg", t + suffix) in have}


def _choose(node: Mapping[str, Any], cands: list[tuple[str, int]], heuristic: tuple[str, int]
            ) -> tuple[tuple[str, int], dict[str, Any]]:
    """The candidate the node's tuned ``choice`` names (else the heuristic's), and the "#tune" record
    (every candidate's label, the one planned) the runtime's tuner reads."""
    labels = [f"{t}/s{s}" for t, s in cands]
    choice = node.get("choice")
    chosen = cands[labels.index(choice)] if choice in labels else heuristic
    return chosen, {"#tune": (labels, f"{chosen[0]}/s{chosen[1]}")}


def conv_weight_names(node) -> tuple[str, str]:
    if "bn" in node["attrs"]:
        return node["name"] + "#w", node["name"] + "#b"
    ins = node["inputs"]
    return ins[1], (ins[2] if len(ins) > 2 else "")


def gemm_weight_names(node) -> tuple[str, str]:
    """(B, bias) a Gemm / MatMul launch reads: a folded layer scale (``colscale``) gives the node its own
    scaled copies (weights.derive_weight), so that a weight the model shares elsewhere stays as it is."""
    ins = node["inputs"]
    bias = ins[2] if len(ins) > 2 else ""
    if "colscale" in node["attrs"]:
        return node["name"] + "#cw", (node["name"] + "#cb" if bias else "")
    return ins[1], bias


# ---------------------------------------------------------------- public API
def kernels_for(node: Mapping[str, Any], weight_shapes: Mapping[str, Sequence[int]]) -> list[KernelSpec]:
    """Every specialization a device node may launch (decided from static attributes only)."""
    op, a = node["op"], node["attrs"]
    if op == "Conv":
        return _conv_specs(node, weight_shapes[node["inputs"][1]]) if node["inputs"][1] in weight_shapes else \
            [KernelSpec("conv_direct")]
    if op in ("Gemm", "MatMul"):
        return _gemm_specs(node)
    if op == "Attention":
        fused = [KernelSpec(f, (dp,)) for dp in ATTN_DPS for f in ("attn_tc", "attn_tc_part", "attn_combine")] \
            if a.get("tc") else []
        return fused + [KernelSpec("gemm", GEMM_TILES[t]) for t in ATTN_GEMM_TILES] + \
            [KernelSpec("attn_softmax"), KernelSpec("strided_copy")]
    if op in BINARY_OPS:
        return [KernelSpec("binary", (BINARY_OPS[op],))]
    if op == "Sum":
        return [KernelSpec("binary", (BINARY_OPS["Add"],)), KernelSpec("strided_copy")]
    if op == "Gelu":
        return [KernelSpec("unary", (UNARY_OPS["GeluTanh" if a.get("approximate", "none") == "tanh" else "Gelu"],))]
    if op in UNARY_OPS:
        return [KernelSpec("unary", (UNARY_OPS[op],))]
    if op in ("Transpose", "Concat", "Split", "Slice", "Expand"):
        return [KernelSpec("strided_copy")]
    if op == "ReduceMean":
        return [KernelSpec("reduce_mean"), KernelSpec("strided_copy")]
    table = {"Softmax": "softmax", "LayerNormalization": "layernorm", "ReduceMean": "reduce_mean",
             "GlobalAveragePool": "reduce_mean", "BatchNormalization": "channel_affine", "LRN": "lrn",
             "Gather": "gather"}
    if op == "Gather":      # (a Gather by evenly spaced host-known indices runs as a copy)
        return [KernelSpec("gather"), KernelSpec("strided_copy")]
    if op in table:
        return [KernelSpec(table[op])]
    if op in ("MaxPool", "AveragePool"):
        return [KernelSpec("pool2d", (int(op == "MaxPool"),))]
    return []   # alias ops: no kernel


def plan_node(node: Mapping[str, Any], shapes: Sequence[Shape], hv: HV, num_sms: int = 132
              ) -> tuple[list[Shape], list[Launch], dict[str, Any]]:
    """Output shapes, launches and scratch (name -> bytes, or a per-shape table to upload) of a device node."""
    if node["op"] == "Conv":
        if len(shapes[0]) == 3:    # Conv1d: the 2-D convolution over [N, C, 1, L]
            n2, w2 = conv2d_view(node, shapes[1])
            x = shapes[0]
            rest = [(s[0], s[1], 1, s[2]) if s is not None and len(s) == 3 else s for s in shapes[2:]]
            out, ls, extra = _plan_conv(n2, [(x[0], x[1], 1, x[2]), tuple(w2)] + rest, num_sms)
            return [(out[0][0], out[0][1], out[0][3])], ls, extra
        return _plan_conv(node, shapes, num_sms)
    if node["op"] in ("Gemm", "MatMul"):
        return _plan_gemm(node, shapes, num_sms)
    if node["op"] == "Attention":
        return _plan_attention(node, shapes, num_sms, hv)
    if node["op"] == "Gather":
        copy = _gather_as_copy(node, shapes, hv)
        if copy is not None:
            return copy
    planned = ops.plan(node, shapes, hv, num_sms, _plan_gemm)
    if planned is not None:
        return planned
    out, launches = _plan_node(node, shapes, hv, num_sms)
    return out, launches, {}


def _gather_as_copy(node: Mapping[str, Any], shapes: Sequence[Shape], hv: HV
                    ) -> tuple[list[Shape], list[Launch], dict[str, Any]] | None:
    """A Gather whose indices the host knows and that are evenly spaced (one index: a slice, as exporters
    select q / k / v from a packed projection) is a strided copy: no index reads, and the copy can chain
    with its neighbours (schedule.elide_copies). None otherwise, or when a loaded plan lacks the kernel."""
    idx, x = hv(node["inputs"][1]), shapes[0]
    # float32 data by int64 indices only: both this copy and the gather kernel are in every plan
    # (kernels_for), so the choice may differ between the shapes a build checked and those it runs
    dts = list(node.get("in_dtypes") or ())
    if idx is None or not len(x) or dts[:2] != ["float32", "int64"]:
        return None
    axis = node["attrs"].get("axis", 0) % len(x)
    flat = np.asarray(idx).astype(np.int64).reshape(-1)
    flat = np.where(flat < 0, flat + x[axis], flat)
    if flat.size == 0 or flat.min() < 0 or flat.max() >= x[axis]:
        return None
    step = int(flat[1] - flat[0]) if flat.size > 1 else 0
    if np.any(flat != flat[0] + step * np.arange(flat.size)):
        return None
    if node.get("kernels") is not None and KernelSpec("strided_copy") not in node["kernels"]:
        return None
    inner, xs = int(np.prod(x[axis + 1:])), _strides(x)
    out = tuple(x[:axis]) + tuple(np.shape(idx)) + tuple(x[axis + 1:])
    sx = xs[:axis] + [s * step * inner for s in _strides(np.shape(idx))] + xs[axis + 1:]
    return [out], [strided_copy(node["inputs"][0], node["outputs"][0], out, sx, _strides(out), int(flat[0]) * inner,
                                0, node)], {}


def _plan_node(node: Mapping[str, Any], shapes: Sequence[Shape], hv: HV, num_sms: int
               ) -> tuple[list[Shape], list[Launch]]:
    op, a, ins, outs = node["op"], node["attrs"], node["inputs"], node["outputs"]
    vals = [hv(i) if i else None for i in ins]
    x = shapes[0] if shapes else ()
    y = outs[0]
    if op in ("Identity", "Dropout"):
        return [x], []
    if op == "Flatten":
        return [tuple(flatten_shape(x, a.get("axis", 1)))], []
    if op == "Reshape":
        return [tuple(reshape_target(x, vals[1], a.get("allowzero", 0)))], []
    if op == "Squeeze":
        return [tuple(squeeze_shape(x, attr_or_input(node, vals, "axes", 1)))], []
    if op == "Unsqueeze":
        return [tuple(unsqueeze_shape(x, attr_or_input(node, vals, "axes", 1)))], []
    if op in UNARY_OPS or op == "Gelu":
        n = int(np.prod(x))
        lo, hi = -3.4e38, 3.4e38
        if op == "Clip":
            lo = float(a.get("min", vals[1].item() if len(vals) > 1 and vals[1] is not None else lo))
            hi = float(a.get("max", vals[2].item() if len(vals) > 2 and vals[2] is not None else hi))
        alpha = float(a.get("alpha", 0.01)) if op == "LeakyRelu" else lo
        return [x], [Launch(kernels_for(node, {})[0], _blocks(n), 256, [ins[0], y, n, alpha, hi])]
    if op in BINARY_OPS:
        out = broadcast(shapes[0], shapes[1])
        dims, (sa, sb, _) = _collapse(out, _bstrides(shapes[0], out), _bstrides(shapes[1], out), _strides(out))
        n = int(np.prod(out))
        return [out], [Launch(KernelSpec("binary", (BINARY_OPS[op],)), _blocks(n), 256,
                              [ins[0], ins[1], y, n, len(dims), _i6(dims, node), _i6(sa, node), _i6(sb, node)])]
    if op == "Sum":
        out = broadcast(*shapes)
        ls = [strided_copy(ins[0], y, out, _bstrides(shapes[0], out), _strides(out), 0, 0, node)]
        for name, s in zip(ins[1:], shapes[1:]):
            dims, (sa, sb, _) = _collapse(out, _strides(out), _bstrides(s, out), _strides(out))
            n = int(np.prod(out))
            ls.append(Launch(KernelSpec("binary", (0,)), _blocks(n), 256,
                             [y, name, y, n, len(dims), _i6(dims, node), _i6(sa, node), _i6(sb, node)]))
        return [out], ls
    if op in ("Gemm", "MatMul"):
        return _plan_gemm(node, shapes, num_sms)
    if op == "Softmax":
        axis = a.get("axis", -1 if (node.get("opset", 13) >= 13) else 1) % len(x)
        outer = int(np.prod(x[:axis]))
        if node.get("opset", 13) >= 13:
            ln, inner = x[axis], int(np.prod(x[axis + 1:]))
        else:
            ln, inner = int(np.prod(x[axis:])), 1
        return [x], [Launch(KernelSpec("softmax"), (outer * inner, 1, 1), _rowthreads(ln), [ins[0], y, ln, inner])]
    if op == "LayerNormalization":
        axis = a.get("axis", -1) % len(x)
        ln = int(np.prod(x[axis:]))
        if int(np.prod(shapes[1])) != ln or (len(ins) > 2 and ins[2] and int(np.prod(shapes[2])) != ln):
            raise UnsupportedModel(f"LayerNormalization (node {node['name']!r}) with broadcast scale/bias",
                                   fix="give scale and bias the normalized shape")
        return [x], [Launch(KernelSpec("layernorm"), (int(np.prod(x[:axis])), 1, 1), _rowthreads(ln),
                            [ins[0], ins[1], ins[2] if len(ins) > 2 else "", y, ln, float(a.get("epsilon", 1e-5))])]
    if op in ("GlobalAveragePool", "ReduceMean"):
        if op == "GlobalAveragePool":
            axes, keep = list(range(2, len(x))), 1
        else:
            axes = attr_or_input(node, vals, "axes", 1)
            keep = a.get("keepdims", 1)
            if axes is None or len(axes) == 0:
                if a.get("noop_with_empty_axes", 0):
                    return [x], [strided_copy(ins[0], y, x, _strides(x), _strides(x), 0, 0, node)]
                axes = list(range(len(x)))
        axes = sorted(ax % len(x) for ax in axes)
        if axes != list(range(axes[0], axes[-1] + 1)):
            raise UnsupportedModel(f"ReduceMean (node {node['name']!r}) over non-adjacent axes {axes}",
                                   fix="reduce over adjacent axes")
        outer, ln = int(np.prod(x[:axes[0]])), int(np.prod(x[axes[0]:axes[-1] + 1]))
        inner = int(np.prod(x[axes[-1] + 1:]))
        out = tuple(1 if i in axes else s for i, s in enumerate(x)) if keep else \
            tuple(s for i, s in enumerate(x) if i not in axes)
        return [out], [Launch(KernelSpec("reduce_mean"), (outer * inner, 1, 1), _rowthreads(ln), [ins[0], y, ln, inner])]
    if op == "BatchNormalization":
        n = int(np.prod(x))
        return [x], [Launch(KernelSpec("channel_affine"), _blocks(n), 256,
                            [ins[0], node["name"] + "#scale", node["name"] + "#shift", y, n, x[1], int(np.prod(x[2:]))])]
    if op in ("MaxPool", "AveragePool"):
        return _plan_pool(node, x)
    if op == "LRN":
        n = int(np.prod(x))
        return [x], [Launch(KernelSpec("lrn"), _blocks(n), 256, [ins[0], y, n, x[1], int(np.prod(x[2:])),
                                                                  int(a["size"]), float(a.get("alpha", 1e-4)),
                                                                  float(a.get("beta", 0.75)), float(a.get("bias", 1.0))])]
    if op == "Transpose":
        perm = a.get("perm", list(range(len(x)))[::-1])
        out = tuple(x[p] for p in perm)
        st = _strides(x)
        return [out], [strided_copy(ins[0], y, out, [st[p] for p in perm], _strides(out), 0, 0, node)]
    if op == "Expand":
        out = broadcast(x, [int(v) for v in vals[1]])
        return [out], [strided_copy(ins[0], y, out, _bstrides(x, out), _strides(out), 0, 0, node)]
    if op == "Concat":
        axis = a["axis"] % len(x)
        total = sum(s[axis] for s in shapes)
        out = tuple(total if i == axis else d for i, d in enumerate(x))
        outer, inner, off, ls = int(np.prod(x[:axis])), int(np.prod(x[axis + 1:])), 0, []
        for name, s in zip(ins, shapes):
            ln = s[axis]
            if ln:
                ls.append(strided_copy(name, y, (outer, ln, inner), (ln * inner, inner, 1), (total * inner, inner, 1),
                                       0, off * inner, node))
            off += ln
        return [out], ls
    if op == "Split":
        axis = a.get("axis", 0) % len(x)
        sizes = attr_or_input(node, vals, "split", 1)
        if sizes is None:
            k = len(outs)
            step = math.ceil(x[axis] / k)
            sizes = [min(step, x[axis] - i * step) for i in range(k)]
        outer, inner, off, ls, oshapes = int(np.prod(x[:axis])), int(np.prod(x[axis + 1:])), 0, [], []
        for name, ln in zip(outs, sizes):
            oshapes.append(tuple(ln if i == axis else d for i, d in enumerate(x)))
            if ln and name:
                ls.append(strided_copy(ins[0], name, (outer, ln, inner), (x[axis] * inner, inner, 1),
                                       (ln * inner, inner, 1), off * inner, 0, node))
            off += ln
        return oshapes, ls
    if op == "Slice":
        starts, ends = attr_or_input(node, vals, "starts", 1), attr_or_input(node, vals, "ends", 2)
        st, ln, sp = slice_params(x, starts, ends, attr_or_input(node, vals, "axes", 3),
                                  attr_or_input(node, vals, "steps", 4))
        out, strides = tuple(ln), _strides(x)
        ox = sum(s * t for s, t in zip(st, strides))
        if int(np.prod(out)) == 0:
            return [out], []
        return [out], [strided_copy(ins[0], y, out, [t * p for t, p in zip(strides, sp)], _strides(out), ox, 0, node)]
    if op == "Gather":
        axis = a.get("axis", 0) % len(x)
        idx = shapes[1]
        out = tuple(x[:axis]) + tuple(idx) + tuple(x[axis + 1:])
        n = int(np.prod(out))
        return [out], [Launch(KernelSpec("gather"), _blocks(n), 256,
                              [ins[0], ins[1], y, n, x[axis], int(np.prod(idx)), int(np.prod(x[axis + 1:]))])]
    raise UnsupportedModel(f"{op} (node {node['name']!r}) is not supported on the device", fix="report this model")


def _plan_conv(node, shapes: Sequence[Shape], num_sms: int) -> tuple[list[Shape], list[Launch], dict[str, int]]:
    """Implicit GEMM (tile size and split-K picked for this shape to fill the GPU) or direct conv."""
    a, ins, x, ws = node["attrs"], node["inputs"], shapes[0], shapes[1]
    y = node["outputs"][0]
    kh, kw, sh, sw, dh, dw, pads, oh, ow = _conv_geometry(node, x, ws)
    g = a.get("group", 1)
    oc = int(ws[0])
    out = (x[0], oc, oh, ow)
    wname, bname = conv_weight_names(node)
    res = ins[3] if len(ins) > 3 else ""
    if res and tuple(shapes[3]) != out:
        raise UnsupportedModel(f"fused residual of node {node['name']!r} has shape {shapes[3]}, expected {out}",
                               fix="report this model to rtxpack")
    relu = int(a.get("relu", 0))
    args = [ins[0], wname, bname, res, y, x[0], x[1], x[2], x[3], oc, oh, ow, kh, kw, sh, sw, pads[0], pads[1], dh,
            dw, g, relu]
    specs = kernels_for(node, {ins[1]: ws})
    if specs[0].family == "conv_dw" and (node.get("kernels") is None or specs[0] in node["kernels"]):
        return [out], [Launch(specs[0], _blocks(x[0] * oc * oh * math.ceil(ow / DW_V)), 256, args)], {}
    if specs[0].family in ("conv_direct", "conv_dw"):     # (a plan from before conv_dw: conv_direct)
        return [out], [Launch(KernelSpec("conv_direct"), _blocks(int(np.prod(out))), 256, args)], {}
    P, M, K = x[0] * oh * ow, oc // g, int(ws[1]) * kh * kw
    # (tile, split-K) candidates for the tuner; the heuristic: the biggest tile that still gives half
    # a wave of blocks, split-K then fills the GPU
    family = "conv_tc" if a.get("tc") else "conv_igemm"
    k1 = specs[0].targs[-2] if a.get("tc") else specs[0].targs[-1]
    suffix = (k1, relu) if a.get("tc") else (k1,)
    tiles, suffix = _plan_tiles(node, family, tc_tiles(family, suffix) if a.get("tc") else TILES, suffix)
    cands, heur = _tile_candidates(M, P, K, g, num_sms, g == 1, tiles)
    (label, splits), extra = _choose(node, cands, heur)
    spec = KernelSpec(family, tiles[label] + suffix)
    if a.get("tc"):
        args[1] = wname + "#h"
    bm, bn = spec.targs[0], spec.targs[1]
    ktab = ""
    if not k1:   # im2col offsets per k for this input size: the kernel does no divisions
        ktab = f"{y}#ktab"
        c, r = np.divmod(np.arange(K), kh * kw)
        dkh, dkw = (r // kw) * dh, (r % kw) * dw
        extra[ktab] = np.stack([c * x[2] * x[3] + dkh * x[3] + dkw, dkh, dkw, np.zeros_like(c)], 1).astype(np.int32)
    grid = (math.ceil(P / bn), math.ceil(M / bm), g * splits)
    if splits == 1:
        return [out], [Launch(spec, grid, spec.block_threads, args + [1, "", ktab])], extra
    scratch = f"{y}#splitk"
    conv = Launch(spec, grid, spec.block_threads, args + [splits, scratch, ktab])
    total = int(np.prod(out))
    red = Launch(KernelSpec("splitk_reduce"), _blocks(total), 256, [scratch, bname, res, y, x[0], oc, oh * ow, splits, relu])
    extra[scratch] = splits * total * 4
    return [out], [conv, red], extra


def _plan_pool(node, x: Shape) -> tuple[list[Shape], list[Launch]]:
    a = node["attrs"]
    if len(x) != 4:
        raise UnsupportedModel(f"{node['op']} (node {node['name']!r}) on a {len(x)}-D input; only 2-D pooling is "
                               "supported", fix="use 2-D pooling")
    kh, kw = a["kernel_shape"]
    sh, sw = a.get("strides", [1, 1])
    dh, dw = a.get("dilations", [1, 1])
    pads = _pads(a, x[2:], (kh, kw), (sh, sw), (dh, dw))
    outs = []
    for i, (n, k, s, d) in enumerate(zip(x[2:], (kh, kw), (sh, sw), (dh, dw))):
        span = n + pads[i] + pads[i + 2] - ((k - 1) * d + 1)
        o = (-(-span // s) if a.get("ceil_mode", 0) else span // s) + 1
        if a.get("ceil_mode", 0) and (o - 1) * s >= n + pads[i]:
            o -= 1
        outs.append(o)
    oh, ow = outs
    out = (x[0], x[1], oh, ow)
    n = int(np.prod(out))
    return [out], [Launch(KernelSpec("pool2d", (int(node["op"] == "MaxPool"),)), _blocks(n), 256,
                          [node["inputs"][0], node["outputs"][0], x[0] * x[1], x[2], x[3], oh, ow, kh, kw, sh, sw,
                           pads[0], pads[1], pads[2], pads[3], dh, dw, int(a.get("count_include_pad", 0))])]


def _plan_gemm(node, shapes: Sequence[Shape], num_sms: int) -> tuple[list[Shape], list[Launch], dict[str, Any]]:
    a, ins = node["attrs"], node["inputs"]
    sa, sb = list(shapes[0]), list(shapes[1])
    bias = ins[2] if len(ins) > 2 else ""
    res = ins[3] if len(ins) > 3 else ""
    alpha, beta = 1.0, 1.0
    if node["op"] == "Gemm":
        ta, tb = a.get("transA", 0), a.get("transB", 0)
        alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
        M, K = (sa[1], sa[0]) if ta else (sa[0], sa[1])
        N = sb[0] if tb else sb[1]
        sAm, sAk = (1, sa[1]) if ta else (sa[1], 1)
        sBk, sBn = (1, sb[1]) if tb else (sb[1], 1)
        out: Shape = (M, N)
        batch, bstr = [1], [[0], [0]]
    else:
        a1, b1 = len(sa) == 1, len(sb) == 1
        if a1:
            sa = [1] + sa
        if b1:
            sb = sb + [1]
        M, K, N = sa[-2], sa[-1], sb[-1]
        bshape = broadcast(sa[:-2], sb[:-2])
        sAm, sAk, sBk, sBn = K, 1, N, 1
        # batch strides in elements (whole matrices; 0 where an operand is broadcast)
        as_ = [s * M * K for s in _bstrides(sa[:-2], bshape)]
        bs_ = [s * K * N for s in _bstrides(sb[:-2], bshape)]
        batch, bstr = _collapse(bshape, as_, bs_) if bshape else ([1], [[0], [0]])
        if len(batch) > 2:
            raise UnsupportedModel(f"MatMul (node {node['name']!r}) with batch broadcasting over {len(batch)} "
                                   "non-collapsible dimensions", fix="reshape to at most 2 batch dimensions")
        out = tuple(bshape) + ((M,) if not a1 else ()) + ((N,) if not b1 else ())
        if len(batch) == 1 and batch[0] > 1 and bstr[1][0] == 0 and bstr[0][0] == M * K:
            # a weight shared by every batch, A's matrices back to back ([B, L, K] x [K, N], the
            # Linear of a transformer or a channels-last MLP): one GEMM of B*L rows, not B GEMVs
            M, batch, bstr = batch[0] * M, [1], [[0], [0]]
    alpha *= float(a.get("colscale_alpha", 1.0))      # a folded layer scale's magnitude (weights.derive_weight)
    if len(batch) == 1:
        nb1, sA0, sA1, sB0, sB1 = batch[0], 0, bstr[0][0], 0, bstr[1][0]
    else:
        nb1, sA0, sA1, sB0, sB1 = batch[1], bstr[0][0], bstr[0][1], bstr[1][0], bstr[1][1]
    nbatch = int(np.prod(batch))
    sbm = sbn = 0
    if bias:
        bsh = list(shapes[2])
        if node["op"] == "MatMul" or len(bsh) == 1:
            sbm, sbn = 0, (1 if bsh and bsh[-1] != 1 else 0)
        elif len(bsh) == 2:
            sbm, sbn = (bsh[1] if bsh[0] != 1 else 0), (1 if bsh[1] != 1 else 0)
    if res and tuple(shapes[3]) != tuple(out):
        raise UnsupportedModel(f"fused residual of node {node['name']!r} has shape {shapes[3]}, expected {out}",
                               fix="report this model to rtxpack")
    y = node["outputs"][0]
    wname, bname = gemm_weight_names(node)
    args = [ins[0], wname, bname, res, y, M, N, K, sAm, sAk, sBk, sBn, nb1, sA0, sA1, sB0, sB1,
            sbm, sbn, alpha, beta, int(a.get("relu", 0))]
    half = set(a.get("tc_half", ()))
    family, suffix = (("gemm_tc", (int(0 in half), int(1 in half), int(a.get("relu", 0)))) if a.get("tc")
                      else ("gemm", ()))
    tiles, suffix = _plan_tiles(node, family, tc_tiles(family, suffix) if a.get("tc") else GEMM_TILES, suffix)
    cands, heur = _tile_candidates(M, N, K, nbatch, num_sms, nbatch == 1, tiles)
    wg = _wg_tiles(node, suffix) if a.get("tc") else {}
    if wg:         # Hopper: the warpgroup-MMA tiles are candidates too, and the heuristic takes one of them
        wcands, heur = _tile_candidates(M, N, K, nbatch, num_sms, nbatch == 1, wg)
        cands += wcands
    (label, splits), extra = _choose(node, cands, heur)
    spec = KernelSpec("gemm_wg", wg[label] + suffix) if label in wg else KernelSpec(family, tiles[label] + suffix)
    if a.get("tc"):
        args[0], args[1] = [args[i] + "#h" if i in half else args[i] for i in (0, 1)]
        if a.get("tc_bt"):            # B's fp16 copy is stored [N, K] (see use_tensor_cores)
            args[1], args[10], args[11] = wname + "#ht", 1, K
    bm, bn = spec.targs[0], spec.targs[1]
    if splits == 1:
        return [out], [Launch(spec, (math.ceil(N / bn), math.ceil(M / bm), nbatch), spec.block_threads,
                              args + [1, ""])], extra
    scratch = f"{y}#splitk"
    extra[scratch] = splits * M * N * 4
    return [out], [Launch(spec, (math.ceil(N / bn), math.ceil(M / bm), splits), spec.block_threads,
                          args + [splits, scratch]),
                   Launch(KernelSpec("gemm_splitk_reduce"), _blocks(M * N), 256,
                          [scratch, bname, res, y, M, N, splits, sbm, sbn, alpha, beta, int(a.get("relu", 0))])], extra


#: fp32 GEMM tiles of unfused attention (fp32 plans, heads over 128)
ATTN_GEMM_TILES = ("f64x64", "f32x32")
#: launch arguments are 32-bit: a batch stride this big takes another route
INT32_LIMIT = 2 ** 31


def _view(shape: Sequence[int], perm: Sequence[int] | None) -> tuple[list[int], list[int]]:
    """(shape, element strides) of a contiguous tensor of ``shape`` seen through Transpose(perm)."""
    st = _strides(shape)
    if not perm:
        return list(shape), st
    return [int(shape[p]) for p in perm], [st[p] for p in perm]


def _plan_attention(node, shapes: Sequence[Shape], num_sms: int, hv: HV | None = None
                    ) -> tuple[list[Shape], list[Launch], dict[str, Any]]:
    """softmax(scale * Q Kt + mask) V (onnx_import.fuse_attention; ``perm_*``: a Transpose folded into an
    operand or the output, read or written in place): one flash-attention launch on tensor cores (fp16
    plans, heads up to 128), else scores = scale * Q Kt (GEMM), attn_softmax in place (mask, NaN guard),
    then P V (GEMM) through a scratch score matrix (and a copy when the output is transposed)."""
    a, ins, y = node["attrs"], node["inputs"], node["outputs"][0]
    if min(len(s) for s in shapes[:3]) < 2:
        raise UnsupportedModel(f"Attention (node {node['name']!r}) on operands of rank < 2", fix="report this model")
    (q, qst), (kt, kst), (v, vst) = (_view(shapes[i], a.get(f"perm_{t}")) for i, t in enumerate(("q", "kt", "v")))
    mask = ins[3] if len(ins) > 3 and ins[3] else ""
    Sq, D, Skv, DV = q[-2], q[-1], kt[-1], v[-1]
    if kt[-2] != D or v[-2] != Skv:
        raise UnsupportedModel(f"Attention (node {node['name']!r}): Q {q}, Kt {kt}, V {v} do not multiply",
                               fix="check the model's input shapes")
    full = list(broadcast(q[:-2], kt[:-2], v[:-2])) + [Sq, Skv]
    if mask:    # a mask may broadcast the scores: more batches, or a query / key dim of 1 repeated
        full = list(broadcast(full, shapes[3]))
        if full[-2] != Sq:
            Sq, qst = full[-2], qst[:-2] + [0, qst[-1]]
        if full[-1] != Skv:
            Skv, kst = full[-1], kst[:-1] + [0]
            if v[-2] != Skv:
                raise UnsupportedModel(f"Attention (node {node['name']!r}): the mask {list(shapes[3])} widens the "
                                       f"scores past V's {v[-2]} rows", fix="check the model's input shapes")
    bshape = full[:-2]
    ms = _bstrides(shapes[3], full) if mask else [0] * len(full)
    logical = tuple(bshape) + (Sq, DV)
    perm_o = a.get("perm_o")
    out = tuple(logical[p] for p in perm_o) if perm_o else logical
    ost = _strides(out)
    os_ = [0] * len(logical)
    for i, p in enumerate(perm_o or range(len(logical))):
        os_[p] = ost[i]
    def levels(*strides: Sequence[int]) -> tuple[int, list[list[int]]]:
        """The batch as b = b0 * nb1 + b1 (row-major over bshape) for operands of these batch strides:
        nb1 and each operand's (b0, b1) strides."""
        dims, sts = _collapse(bshape, *strides) if bshape else ([1], [[0] for _ in strides])
        if len(dims) > 2:
            raise UnsupportedModel(f"Attention (node {node['name']!r}) with batch broadcasting over {len(dims)} "
                                   "non-collapsible dimensions", fix="reshape to at most 2 batch dimensions")
        return (dims[-1], sts) if len(dims) == 2 else (dims[0], [[0] + st for st in sts])

    qbs, kbs, vbs = (_bstrides(t[:-2], bshape, st[:-2]) for t, st in ((q, qst), (kt, kst), (v, vst)))
    nb = int(np.prod(bshape))
    scale, guard = float(a.get("scale", 1.0)), int(a.get("guard", 0))
    for name, power in a.get("scale_by", ()):      # factors the host computed for these shapes
        val = hv(name) if hv is not None else None
        if val is None or np.size(val) != 1:
            raise UnsupportedModel(f"Attention (node {node['name']!r}): its scale {name!r} is not one value",
                                   fix="report this model")
        scale *= float(np.reshape(val, -1)[0]) ** power
    dp = next((d for d in ATTN_DPS if max(D, DV) <= d), 0)
    if a.get("tc") and dp:
        nb1, (qb, kb, vb, mb, ob) = levels(qbs, kbs, vbs, ms[:-2], os_[:-2])
        args = [ins[0], ins[1], ins[2], mask, y, Sq, Skv, D, DV, nb1, qb[0], qb[1], qst[-2], qst[-1], kb[0], kb[1],
                kst[-2], kst[-1], vb[0], vb[1], vst[-2], vst[-1], mb[0], mb[1], ms[-2], ms[-1], ob[0], ob[1], os_[-2],
                os_[-1], scale, guard]
        grid = (math.ceil(Sq / 64), nb, 1)
        # split the keys when the query tiles alone leave SMs idle (a tuning candidate, as tiles are)
        have = node.get("kernels")
        splits = [1]
        if have is None or KernelSpec("attn_tc_part", (dp,)) in have:
            blocks, most = grid[0] * nb, math.ceil(Skv / 128)
            s = min(math.ceil(2 * num_sms / blocks), most, 16)
            splits += sorted({k for k in (s, 2 * s) if 1 < k <= min(most, 16)})
        cands = [("kv", k) for k in splits]
        (_, ns), tune = _choose(node, cands, cands[min(1, len(cands) - 1)])
        tune = tune if len(cands) > 1 else {}
        if ns == 1:
            return [out], [Launch(KernelSpec("attn_tc", (dp,)), grid, 128, args)], tune
        ws = f"{y}#attn_parts"
        comb = KernelSpec("attn_combine", (dp,))
        return [out], [Launch(KernelSpec("attn_tc_part", (dp,)), (grid[0], nb, ns), 128, args + [ns, ws]),
                       Launch(comb, _blocks(nb * Sq * DV, comb.block_threads), comb.block_threads,
                              [ws, y, Sq, DV, nb, nb1, ns, ob[0], ob[1], os_[-2], os_[-1], guard])], \
            {ws: nb * ns * Sq * (dp + 2) * 4, **tune}
    # unfused: each launch splits the batch for its own operands (the scores are contiguous)
    scores, pv = f"{y}#scores", (f"{y}#pv" if perm_o else y)
    extra: dict[str, Any] = {scores: nb * Sq * Skv * 4}
    launches = []

    def gemm(A, B, C, M, N, K, nb1, sa, sb, sAm, sAk, sBk, sBn, alpha) -> Launch:
        _, (label, _) = _tile_candidates(M, N, K, nb, num_sms, False, {t: GEMM_TILES[t] for t in ATTN_GEMM_TILES})
        spec = KernelSpec("gemm", GEMM_TILES[label])
        return Launch(spec, (math.ceil(N / spec.targs[1]), math.ceil(M / spec.targs[0]), nb), spec.block_threads,
                      [A, B, "", "", C, M, N, K, sAm, sAk, sBk, sBn, nb1, sa[0], sa[1], sb[0], sb[1], 0, 0, alpha,
                       1.0, 0, 1, ""])

    nb1, (qb, kb) = levels(qbs, kbs)
    launches.append(gemm(ins[0], ins[1], scores, Sq, Skv, D, nb1, qb, kb, qst[-2], qst[-1], kst[-2], kst[-1], scale))
    nb1, (mb,) = levels(ms[:-2])
    launches.append(Launch(KernelSpec("attn_softmax"), (nb * Sq, 1, 1), _rowthreads(Skv),
                           [scores, mask, scores, Skv, Sq, nb1, mb[0], mb[1], ms[-2], ms[-1], guard]))
    pbs = [t * Sq * Skv for t in _strides(bshape)]
    nb1, (pb, vb) = levels(pbs, vbs)
    vname = ins[2]
    if max(map(abs, pb + vb)) >= INT32_LIMIT:
        # a batch stride of the probabilities past 32 bits (V strided over two batch levels, huge
        # scores): V copied contiguous first, so that one batch level serves both
        vname, shape = f"{y}#v", bshape + [Skv, DV]
        launches.append(strided_copy(ins[2], vname, shape, vbs + vst[-2:], _strides(shape), 0, 0, node))
        extra[vname] = nb * Skv * DV * 4
        vst = [DV, 1]
        nb1, (pb, vb) = levels(pbs, [t * Skv * DV for t in _strides(bshape)])
    launches.append(gemm(scores, vname, pv, Sq, DV, Skv, nb1, pb, vb, Skv, 1, vst[-2], vst[-1], 1.0))
    if perm_o:
        launches.append(strided_copy(pv, y, logical, _strides(logical), os_, 0, 0, node))
        extra[pv] = nb * Sq * DV * 4
    return [out], launches, extra
