"""Per-input-shape planning: host evaluation, shapes, launches and one liveness-based memory arena.

Done once per distinct set of input shapes (then cached by the runtime): every activation gets
an offset in a single device allocation, reused across layers when lifetimes do not overlap, so
nothing is allocated per layer or per run. Pure Python + numpy: runs at build time (no GPU) to
validate a model end to end, and at run time to drive the GPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Collection, Mapping, Sequence

import numpy as np

from ...core.errors import BackendError, UnsupportedModel
from .dtypes import ITEMSIZE, as_device_array, device_dtype, host_dtype_name, output_dtypes
from .host_ops import eval_host
from .kernels import KernelSpec
from .launch import At, collapse, i6, strides_of
from .lowering import Launch, Shape, plan_node
from .arrays import decode_array
from .onnx_import import ALIAS_OPS, HOST_INPUTS

ALIGN = 256


@dataclass
class ShapePlan:
    shapes: dict[str, Shape]
    host: dict[str, np.ndarray]              # host-evaluated tensors (shape arithmetic, constants)
    launches: list[Launch]
    root: dict[str, str]                     # tensor -> tensor whose memory it shares (aliases)
    offsets: dict[str, int]                  # arena byte offset of every root activation / upload
    arena_bytes: int
    uploads: dict[str, np.ndarray] = field(default_factory=dict)   # host values the GPU reads
    dtypes: dict[str, str] = field(default_factory=dict)           # element type of every device tensor
    tunable: list["Tunable"] = field(default_factory=list)         # layers with kernel candidates (fp16)
    views: dict[str, tuple] = field(default_factory=dict)          # elided copies kernels read through
    residuals: dict[str, tuple] = field(default_factory=dict)      # adds folded into a GEMM / conv epilogue


@dataclass
class Tunable:
    """A layer whose kernel the tuner picks: its candidates (labels such as ``t64x64/s4``: tile and
    split-K), the one planned, its launches ``sp.launches[first:first + count]``, and what
    ``plan_node`` needs to plan any other candidate."""

    node: dict[str, Any]
    shapes: list[Any]
    labels: list[str]
    chosen: str
    first: int
    count: int


def plan_shapes(graph: Mapping[str, Any], input_shapes: Mapping[str, Shape], weights: Mapping[str, np.ndarray],
                device_resident: set[str], num_sms: int = 132, *,
                problems: dict[str, str] | None = None, choices: Mapping[str, str] | None = None,
                kernels: Collection[KernelSpec] | None = None) -> ShapePlan | None:
    """Evaluate host nodes, infer shapes, emit launches and assign arena offsets.

    ``weights`` holds the initializers the host needs (at least ``host_weight_names``); the
    shapes of all others come from the graph's weight records. With ``problems`` (a build checking a
    model), a node that cannot be planned is recorded there by name instead of raising, the nodes
    that depend on it are passed over, and None is returned when anything was recorded.
    ``choices`` (layer name -> candidate label, from the tuner) overrides the heuristic's kernel.
    ``kernels``: the specializations a loaded plan carries (tiles are picked among them; an earlier
    rtxpack's plan may have other tiles than today's), None when planning a build.
    """
    shapes: dict[str, Shape] = {w["name"]: tuple(int(d) for d in w["shape"]) for w in graph["weights"]}
    host: dict[str, np.ndarray] = {k: decode_array(v) for k, v in graph["constants"].items()}
    shapes.update({k: tuple(v.shape) for k, v in host.items()})
    shapes.update({k: tuple(v) for k, v in input_shapes.items()})

    def hv(name: str) -> np.ndarray | None:
        if name in host:
            return host[name]
        return weights.get(name)

    wdtypes = {w["name"]: w["dtype"] for w in graph["weights"]}
    dtypes: dict[str, str] = {i["name"]: i.get("dtype", "float32") for i in graph["inputs"]}

    def dtype_of(name: str) -> str | None:
        if not name:
            return None
        if name in dtypes:
            return dtypes[name]
        if name in host:
            return host_dtype_name(host[name])
        if name in wdtypes:
            return device_dtype(wdtypes[name], f"initializer {name!r}")
        return "float32"

    launches: list[Launch] = []
    root: dict[str, str] = {}
    born: dict[str, int] = {i["name"]: -1 for i in graph["inputs"]}
    last: dict[str, int] = {}
    uploads: dict[str, np.ndarray] = {}
    temp_bytes: dict[str, int] = {}
    tunable: list[Tunable] = []
    steps: list[int] = []                    # the node step of every launch
    step = 0
    unknown: set[str] = {i["name"] for i in graph["inputs"] if i.get("dtype", "float32") not in ITEMSIZE}
    for nd in graph["nodes"]:
        ins = nd["inputs"]
        if problems is not None and (nd["where"] == "unsupported" or any(i in unknown for i in ins)):
            unknown.update(o for o in nd["outputs"] if o)    # reported by the import, or follows from a node that is
            continue
        try:
            in_shapes = [shapes[i] if i else None for i in ins]
        except KeyError as e:
            raise UnsupportedModel(f"node {nd['name']!r} reads {e.args[0]!r}, which nothing produces",
                                   fix="check the model with onnx.checker") from e
        try:
            if nd["where"] == "host":
                outs = eval_host(nd, [hv(i) if i else None for i in ins], in_shapes, graph.get("opset", 17))
            else:
                in_dtypes = [dtype_of(i) for i in ins]
                out_dtypes = output_dtypes(nd, in_dtypes)
                full = {**nd, "opset": graph.get("opset", 17), "in_dtypes": in_dtypes, "out_dtypes": out_dtypes}
                if choices and nd["name"] in choices:
                    full["choice"] = choices[nd["name"]]
                if kernels is not None:
                    full["kernels"] = kernels
                oshapes, ls, temps = _plan_node(full, in_shapes, hv, num_sms)
                tune = temps.pop("#tune", None)
        except UnsupportedModel as e:
            if problems is None:
                raise
            problems.setdefault(nd["name"], _problem(e))
            unknown.update(o for o in nd["outputs"] if o)
            continue
        if nd["where"] == "host":
            for name, val in zip(nd["outputs"], outs):
                host[name], shapes[name] = val, tuple(val.shape)
            continue
        skip = set(HOST_INPUTS.get(nd["op"], ()))
        for i, t in enumerate(ins):
            if not t or i in skip:
                continue
            if t in host and t not in device_resident and t not in uploads:
                uploads[t] = np.asarray(host[t])      # converted to the device's storage by device_bytes
            r = root.get(t, t)
            last[r] = step
        for k, (name, s) in enumerate(zip(nd["outputs"], oshapes)):
            if not name:
                continue
            shapes[name] = tuple(int(d) for d in s)
            dtypes[name] = out_dtypes[k] if k < len(out_dtypes) else "float32"
            if nd["op"] in ALIAS_OPS and k == 0:
                root[name] = root.get(ins[0], ins[0])
            else:
                born[name], last[name] = step, step
        for name, v in temps.items():
            if isinstance(v, np.ndarray):    # per-shape tables (im2col offsets): written once, read every run
                uploads[name] = v
                dtypes[name] = host_dtype_name(v)
            else:                            # scratch (split-K partial sums): alive for this node only
                born[name], last[name], temp_bytes[name] = step, step, v
        if tune is not None:
            tunable.append(Tunable(full, in_shapes, tune[0], tune[1], len(launches), len(ls)))
        launches.extend(ls)
        steps.extend([step] * len(ls))
        step += 1
    if unknown and problems is not None:
        return None
    for o in graph["outputs"]:
        if o not in shapes:
            raise UnsupportedModel(f"output {o!r} is never produced", fix="check the model")
        if o in wdtypes and o not in host and o in weights:   # an initializer returned as is (a buffer)
            host[o] = np.asarray(weights[o])
        r = root.get(o, o)
        if r in born:
            last[r] = step
    keep = {root.get(o, o) for o in graph["outputs"]} | set(uploads) | {i["name"] for i in graph["inputs"]}
    views: dict[str, tuple] = {}
    residuals: dict[str, tuple] = {}
    complete = dict(born)      # the step after which a tensor is whole (copy elision moves births earlier)
    launches = elide_copies(launches, steps, root, born, last, keep, shapes, tunable, views,
                            lncs=kernels is None or KernelSpec("layernorm_cs") in kernels)
    launches = fold_residual_adds(launches, steps, root, born, last, keep, shapes, tunable, residuals, complete)
    # the model's inputs keep their slots for the whole run: no kernel ever writes over them, so a
    # run can be replayed (a CUDA graph, a benchmark) without copying the inputs in again
    for i in graph["inputs"]:
        if i["name"] in born:
            last[i["name"]] = step
    # a device op whose input is an upload reads an arena slot that lives for the whole run
    for name, val in uploads.items():
        born[name], last[name] = -1, step
    sizes = {}
    for name in born:
        if name in uploads:
            nbytes = len(device_bytes(uploads[name]))
        elif name in temp_bytes:
            nbytes = temp_bytes[name]
        else:
            nbytes = int(np.prod(shapes[name])) * ITEMSIZE[dtypes.get(name, "float32")]
        sizes[name] = nbytes
    offsets, total = _assign(born, {k: last.get(k, born[k]) for k in born}, sizes)
    for o in graph["outputs"]:
        if o in host:
            dtypes.setdefault(o, host_dtype_name(host[o]))
    return ShapePlan(shapes, host, launches, root, offsets, total, uploads, dtypes, tunable, views, residuals)


def _copy_view(ln: Launch) -> tuple[list[int], list[int], list[int], int, int]:
    """A strided copy's (dims, source strides, destination strides, source offset, destination offset)."""
    nd = ln.args[3]
    return list(ln.args[4][:nd]), list(ln.args[5][:nd]), list(ln.args[6][:nd]), ln.args[7], ln.args[8]


def _in_order(dims: Sequence[int], st: Sequence[int], other: Sequence[int]) -> tuple[list, list, list]:
    """A copy's dims ordered by ``st`` (largest first), with ``st`` and the other side's strides: a copy
    that writes (reads) a whole buffer in any axis order covers it in order after this."""
    order = sorted(range(len(dims)), key=lambda d: -st[d])
    return [dims[d] for d in order], [st[d] for d in order], [other[d] for d in order]


def _whole(dims: Sequence[int], st: Sequence[int], off: int, numel: int) -> bool:
    """Whether a view covers all of a ``numel``-element buffer, in order."""
    return off == 0 and int(np.prod(dims)) == numel and all(
        n == 1 or s == c for n, s, c in zip(dims, st, strides_of(dims)))


def read_through(dims: Sequence[int], sx: Sequence[int], sy: Sequence[int], ox: int,
                 dims_j: Sequence[int], sx_j: Sequence[int], ox_j: int) -> tuple[list, list, list, int] | None:
    """A copy reading (``dims``, ``sx``, ``ox``) of a buffer R that another copy wrote whole and in order from
    its source (R[t] = src[ox_j + unravel(t, dims_j) . sx_j]), re-expressed as a read of that source:
    ``(dims, sx, sy, ox)`` or None where no strided view says it. A dim of the read that walks several
    of R's dims is split along them; every coordinate of R must stay inside its dim (no carry), which
    makes the composed offsets exact."""
    if not dims_j or ox < 0 or ox >= int(np.prod(dims_j)):
        return None
    P = strides_of(dims_j)
    start = [int(c) for c in np.unravel_index(ox, tuple(dims_j))]
    used = [0] * len(dims_j)
    work, out = list(zip(dims, sx, sy)), []
    while work:
        e, s, t = work.pop(0)
        if e == 1:
            continue
        if s == 0:
            out.append((e, 0, t))
            continue
        if s < 0:
            return None
        k = next(k for k in range(len(P)) if s % P[k] == 0)
        m = s // P[k]
        if start[k] + used[k] + m * (e - 1) < dims_j[k]:
            used[k] += m * (e - 1)
            out.append((e, m * sx_j[k], t))
            continue
        f = dims_j[k] // m
        if k == 0 or dims_j[k] % m or f <= 1 or e % f or start[k] or used[k]:
            return None
        work[0:0] = [(e // f, s * f, t * f), (f, s, t)]    # the part inside dim k, and the rest above it
    if not out:
        out = [(1, 0, 0)]
    new_dims, (nx, ny) = collapse([o[0] for o in out], [o[1] for o in out], [o[2] for o in out])
    if len(new_dims) > 6:
        return None
    return new_dims, nx, ny, ox_j + sum(c * st for c, st in zip(start, sx_j))


#: fused attention kernels' strided operands: (argument of the tensor, of its first stride, of its row
#: count, of its column count, written or read); each is a (b0, b1, rows, cols) view with b0 * b1 batches
_ATTN_VIEWS = {f: ((0, 10, 5, 7, "r"), (1, 14, 7, 6, "r"), (2, 18, 6, 8, "r"), (4, 26, 5, 8, "w"))
               for f in ("attn_tc", "attn_tc_part")}
_ATTN_VIEWS["attn_combine"] = ((1, 7, 2, 3, "w"),)
_MARKS = (2, 3, 5, 7, 11, 13)   # destination strides no collapse can merge: which dim is which after it


def _attn_batches(ln: Launch) -> tuple[int, int]:
    """(b0, b1) batch dims of a fused attention launch."""
    if ln.spec.family == "attn_combine":
        return ln.args[4] // ln.args[5], ln.args[5]
    return ln.grid[1] // ln.args[9], ln.args[9]


def _compose(dims: Sequence[int], st: Sequence[int], view: tuple) -> tuple[list[int], int] | None:
    """A view (``dims``, element strides ``st``; up to 6 dims) of a buffer that a copy wrote whole and in
    order from ``view`` = (source, dims, source strides, source offset), as the same dims' view of the
    source: (strides, element offset), or None when a dim would need splitting."""
    marks = _MARKS[:len(dims)]
    got = read_through(dims, st, marks, 0, view[1], view[2], view[3])
    if got is None:
        return None
    new, found = [0] * len(dims), [False] * len(dims)
    for e, x, y in zip(*got[:3]):
        if e == 1:
            continue
        if y not in marks or found[marks.index(y)] or e != dims[marks.index(y)]:
            return None
        new[marks.index(y)], found[marks.index(y)] = x, True
    if any(d > 1 and not f for d, f in zip(dims, found)):
        return None
    return new, got[3]


def binary_through(ln: Launch, R: Any, read_view: Any) -> tuple[Launch, list[tuple[str, str]]]:
    """An element-wise binary launch reading an operand straight from the source of the copy that wrote it
    (a Transpose back to NCHW, a window merge, before a residual Add), through its strides and an ``At``."""
    if ln.spec.family != "binary":
        return ln, []
    args, moved = list(ln.args), []
    for ti, si in ((0, 6), (1, 7)):
        r = R(args[ti]) if args[ti] else ""
        view = read_view(r) if r else None
        if view is None:
            continue
        nd = args[4]
        got = _compose(args[5][:nd], args[si][:nd], view)
        if got is None and nd == 1 and args[6][0] == args[7][0] == 1 and int(np.prod(view[1])) == args[3]:
            # both operands whole and contiguous (collapsed to one dim): take the copy's dims instead
            args[4], args[5] = len(view[1]), i6(view[1], {})
            args[6 + (1 - ti)] = i6(strides_of(view[1]), {})
            got = list(view[2]), view[3]
        if got is None:
            continue
        args[ti], args[si] = At(R(view[0]), got[1]), i6(list(got[0]), {})
        moved.append((r, R(view[0])))
    return (Launch(ln.spec, ln.grid, ln.block, args) if moved else ln), moved


#: channels ``layernorm_cs`` holds in shared memory (its LNCS_CMAX)
LNCS_CMAX = 1024


def layernorm_through(ln: Launch, R: Any, read_view: Any) -> tuple[Launch, list[tuple[str, str]]]:
    """A LayerNorm over the last axis of a buffer a copy wrote from an [outer, C, P] source with C moved
    last (NCHW -> NHWC before a channels-last LayerNorm: ConvNeXt's, a Swin patch merge's) reads the
    source in place: ``layernorm_cs``. Returns the launch and the (buffer, now-read buffer) pair."""
    if ln.spec.family != "layernorm":
        return ln, []
    r = R(ln.args[0])
    view = read_view(r) if r else None
    C = ln.args[4]
    if view is None or not 2 <= C <= LNCS_CMAX:
        return ln, []
    src, dims, st, off = view
    parts = [(d, s) for d, s in zip(dims, st) if d != 1]
    if len(parts) < 2 or parts[-1][0] != C:
        return ln, []
    P = parts[-1][1]
    rows = parts[:-1]
    if rows[-1] != (P, 1) or len(rows) > 2 or (len(rows) == 2 and rows[0][1] != C * P):
        return ln, []
    outer = rows[0][0] if len(rows) == 2 else 1
    if outer > 65535:
        return ln, []
    args = [At(R(src), off), ln.args[1], ln.args[2], ln.args[3], C, P, ln.args[5]]
    return Launch(KernelSpec("layernorm_cs"), (math.ceil(P / 8), outer, 1), 256, args), [(r, R(src))]


def attention_through(ln: Launch, R: Any, read_view: Any, write_view: Any) -> tuple[Launch, list[tuple[str, str]]]:
    """A fused attention launch reading its Q, Kt or V straight from the source of the copy that wrote it
    (``read_view(buffer)``: that copy's view, else None), and writing its output straight into the
    destination of the copy that would move it (``write_view``), through strides and an ``At`` offset:
    the head split of a packed QKV projection and the head merge after attention cost no copy. Returns
    the launch and the (buffer, now-used buffer) pairs."""
    if ln.spec.family not in _ATTN_VIEWS:
        return ln, []
    args, moved = list(ln.args), []
    b0, b1 = _attn_batches(ln)
    for ti, si, ri, ci, rw in _ATTN_VIEWS[ln.spec.family]:
        r = R(args[ti]) if args[ti] else ""
        view = (read_view if rw == "r" else write_view)(r) if r else None
        if view is None:
            continue
        got = _compose([b0, b1, args[ri], args[ci]], args[si:si + 4], view)
        if got is None:
            continue
        args[ti], args[si:si + 4] = At(R(view[0]), got[1]), got[0]
        moved.append((r, R(view[0])))
    return (Launch(ln.spec, ln.grid, ln.block, args) if moved else ln), moved


def elide_copies(launches: list[Launch], steps: list[int], root: dict[str, str], born: dict[str, int],
                 last: dict[str, int], keep: set[str], shapes: Mapping[str, Shape], tunable: list["Tunable"],
                 views: dict[str, tuple] | None = None, lncs: bool = True) -> list[Launch]:
    """Drop the copies exporters chain (roll = Slice + Concat, select q/k/v = Transpose + Gather, a
    Transpose that only moves axes of size 1): a strided copy that reads a buffer another copy wrote
    whole reads that copy's source instead (``read_through``); copies that together wrote a buffer
    another copy then moves whole, in order, write to that copy's output instead; a copy that moves a
    buffer whole, in order, makes its output an alias of its input; a copy whose buffer nobody reads any
    more goes. Only buffers that copies alone write and no other kernel touches, never the model's
    inputs, outputs or uploads. A fused attention reads Q, Kt and V through the copy that wrote them and
    writes through the copy that moves its output (``attention_through``), an element-wise binary reads
    through the copy that wrote an operand (``binary_through``), a LayerNorm over the channels of an NCHW
    buffer reads it in place (``layernorm_through``; ``lncs``: the plan has that kernel); ``views`` records
    those copies for the tuner's candidates. Updates ``root`` and the lifetimes; returns the remaining launches (``tunable``
    re-indexed)."""
    def R(t: str) -> str:
        return root.get(t, t)

    def is_copy(ln: Launch) -> bool:
        return ln.spec.family in ("strided_copy", "strided_copy_b")

    touch = _touches(launches, R)

    def writer(r: str) -> int | None:
        """The one launch that writes ``r``, whole and in order, when it is a copy (else None)."""
        if r in keep or r not in born or r not in shapes:      # (a node's scratch has no shape: left alone)
            return None
        w = [i for i in touch.get(r, []) if steps[i] == born[r]]
        if len(w) != 1 or not is_copy(launches[w[0]]) or R(launches[w[0]].args[1]) != r:
            return None
        dims, sx, sy, _, oy = _copy_view(launches[w[0]])
        dims, sy, _ = _in_order(dims, sy, sx)
        return w[0] if _whole(dims, sy, oy, int(np.prod(shapes[r]))) else None

    def retarget(i: int, old: str, new: str) -> None:
        touch[old].remove(i)
        touch.setdefault(new, []).append(i)
        last[new] = max(last.get(new, steps[i]), steps[i])

    def write_through(i: int, ln: Launch, r: str, dims: list, sx: list, sy: list, ox: int, oy: int) -> bool:
        """Copy ``i`` moves all of ``r`` in order and only copies wrote ``r`` (a Concat of slices, a roll):
        those copies write straight into ``i``'s output instead, and ``i`` goes."""
        y = R(ln.args[1])
        dims, sx, sy = _in_order(dims, sx, sy)
        if r in keep or r not in born or r not in shapes or r == y or y not in born or not _whole(dims, sx, ox, int(np.prod(shapes[r]))):
            return False
        ws = [k for k in touch.get(r, []) if k != i]
        if not ws or any(steps[k] != born[r] or launches[k].spec != ln.spec or R(launches[k].args[1]) != r
                         or R(launches[k].args[0]) in (r, y) for k in ws):
            return False
        new = []
        for k in ws:
            dk, sxk, syk, oxk, oyk = _copy_view(launches[k])
            got = read_through(dk, syk, sxk, oyk, dims, sy, oy)    # where k's elements land in y
            if got is None:
                return False
            nd, ny, nx, noy = got
            new.append((k, Launch(ln.spec, launches[k].grid, launches[k].block,
                                  [launches[k].args[0], ln.args[1], launches[k].args[2], len(nd), i6(nd, {}),
                                   i6(nx, {}), i6(ny, {}), oxk, noy])))
        for k, nl in new:
            launches[k] = nl
            touch.setdefault(y, []).append(k)
        touch[y].remove(i)
        touch.pop(r)
        born[y] = min(born[y], born[r])
        born.pop(r)
        last.pop(r, None)
        dropped.add(i)
        return True

    dropped: set[int] = set()
    for i, ln in enumerate(launches):
        if not is_copy(ln):
            continue
        dims, sx, sy, ox, oy = _copy_view(ln)
        r = R(ln.args[0])
        j = writer(r) if r != R(ln.args[1]) else None
        if j is not None and launches[j].spec == ln.spec:
            dj, sxj, syj, oxj, _ = _copy_view(launches[j])
            dj, _, sxj = _in_order(dj, syj, sxj)
            got = read_through(dims, sx, sy, ox, dj, sxj, oxj)
            if got is not None:
                nd, nx, ny, nox = got
                src = launches[j].args[0]
                launches[i] = ln = Launch(ln.spec, ln.grid, ln.block,
                                          [src, ln.args[1], ln.args[2], len(nd), i6(nd, {}), i6(nx, {}),
                                           i6(ny, {}), nox, oy])
                retarget(i, r, R(src))
                dims, sx, sy, ox, oy = nd, nx, ny, nox, oy
        elif j is None and write_through(i, ln, r, dims, sx, sy, ox, oy):
            continue
        d = R(ln.args[1])
        n = int(np.prod(dims))
        if writer(d) == i and _whole(dims, sx, ox, n) and _whole(dims, sy, oy, n) and R(ln.args[0]) != d:
            s = R(ln.args[0])            # a copy in order: its output is its input
            for k, v in list(root.items()):
                if v == d:
                    root[k] = s
            root[d] = s
            for k in touch[d]:
                last[s] = max(last.get(s, steps[k]), steps[k])
            touch[s] = [k for k in touch.get(s, []) + touch.pop(d) if k != i]
            dropped.add(i)
            born.pop(d, None)
            last.pop(d, None)
    views = {} if views is None else views

    def copy_view(r: str) -> tuple | None:
        j = writer(r)
        if j is None or j in dropped:
            return None
        dj, sxj, syj, oxj, _ = _copy_view(launches[j])
        dj, _, sxj = _in_order(dj, syj, sxj)
        return launches[j].args[0], dj, sxj, oxj

    def moving_copy(r: str) -> tuple | None:
        """(destination, dims, its strides, offset) of the one copy that reads all of ``r``, which only an
        attention layer wrote (its launches at the step ``r`` is born), in order."""
        users = [k for k in touch.get(r, []) if k not in dropped]
        if r in keep or r not in born or r not in shapes:
            return None
        moves = [k for k in users if steps[k] != born[r]]
        if len(moves) != 1 or not is_copy(launches[moves[0]]) or R(launches[moves[0]].args[0]) != r or \
                any(launches[k].spec.family not in _ATTN_VIEWS for k in users if k != moves[0]):
            return None
        c = launches[moves[0]]
        dims, sx, sy, ox, oy = _copy_view(c)
        dims, sx, sy = _in_order(dims, sx, sy)
        y = R(c.args[1])
        if y == r or y not in born or not _whole(dims, sx, ox, int(np.prod(shapes[r]))):
            return None
        return c.args[1], dims, sy, oy, moves[0]

    through: set[int] = set()      # launches of an attention layer already writing through a copy
    # launches that read an operand through the copy that wrote it (attention also writes through one)
    readers = {"binary": binary_through, **({"layernorm": layernorm_through} if lncs else {})}
    for i, ln in enumerate(launches):
        if i in dropped or (ln.spec.family not in _ATTN_VIEWS and ln.spec.family not in readers):
            continue
        writes = {}
        for r in {R(ln.args[t]) for t, _, _, _, rw in _ATTN_VIEWS.get(ln.spec.family, ())
                  if rw == "w" and ln.args[t] and i not in through}:
            mv = moving_copy(r)
            layer = [k for k in touch.get(r, []) if k != (mv[4] if mv else -1)]
            ok = mv is not None and all(attention_through(launches[k], R, lambda _: None, lambda _: mv[:4])[1]
                                        for k in layer)
            if ok:
                writes[r] = mv
        if ln.spec.family in readers:
            launches[i], moved = readers[ln.spec.family](ln, R, copy_view)
        else:
            launches[i], moved = attention_through(ln, R, copy_view, lambda r: writes[r][:4] if r in writes else None)
        still = {R(a) for a in launches[i].args if isinstance(a, str) and a}
        for r, used in dict(moved).items():
            if r in writes:
                views[r] = writes[r][:4]
                k = writes[r][4]
                for w in [w for w in touch[r] if w != k and w != i]:   # the layer's other launches: rewritten alike
                    launches[w] = attention_through(launches[w], R, lambda _: None, lambda _: writes[r][:4])[0]
                    touch.setdefault(used, []).append(w)
                    through.add(w)
                touch[used] = [w for w in touch.get(used, []) if w != k] + [i]
                touch.pop(r)
                born[used] = min(born[used], born.pop(r))
                last.pop(r, None)
                dropped.add(k)
                continue
            views[r] = copy_view(r)
            if r in still:           # another operand reads the buffer itself
                touch.setdefault(used, []).append(i)
                last[used] = max(last.get(used, steps[i]), steps[i])
            else:
                retarget(i, r, used)
    for r, users in touch.items():       # copies whose output nobody reads any more
        if len(users) == 1 and writer(r) == users[0]:
            dropped.add(users[0])
            born.pop(r, None)
            last.pop(r, None)
    return _drop(launches, dropped, steps, tunable)


def _touches(launches: list[Launch], R: Any) -> dict[str, list[int]]:
    """The launches (indices, in order) naming each buffer, by its root ``R``."""
    touch: dict[str, list[int]] = {}
    for i, ln in enumerate(launches):
        for a in {R(a) for a in ln.args if isinstance(a, str) and a}:
            touch.setdefault(a, []).append(i)
    return touch


def _drop(launches: list[Launch], dropped: set[int], steps: list[int], tunable: list["Tunable"]) -> list[Launch]:
    """``launches`` without the ``dropped`` ones; ``steps`` (in place) and ``tunable`` re-indexed."""
    if not dropped:
        return launches
    index, kept = {}, []
    for i, ln in enumerate(launches):
        if i not in dropped:
            index[i] = len(kept)
            kept.append(ln)
    steps[:] = [st for i, st in enumerate(steps) if i not in dropped]
    for t in tunable:
        t.first = index[t.first]
    return kept


#: launches that can run a residual add in their epilogue: (argument of the residual, of the output, of
#: the activation); a split-K GEMM / conv writes its output in its reducer (the last launch of its layer)
_EPILOGUES = {**{f: (3, 4, 21) for f in ("gemm", "gemm_tc", "gemm_wg", "conv_igemm", "conv_tc")},
              "gemm_splitk_reduce": (2, 3, 11), "splitk_reduce": (2, 3, 8)}


def _is_add(ln: Launch) -> bool:
    """An element-wise fp32 Add of two whole, same-shaped, contiguous tensors."""
    a = ln.args
    return ln.spec == KernelSpec("binary", (0,)) and a[4] == 1 and a[5][0] == a[3] and a[6][0] == 1 and a[7][0] == 1


def fold_residual(launches: list[Launch], r: str, out: str, other: str, R: Any) -> list[Launch] | None:
    """One layer's launches writing ``r`` rewritten to write ``out`` = ``r`` + ``other`` (the residual in the
    epilogue of the launch that writes the output, before no activation); None when they cannot."""
    def names(ln: Launch) -> set[str]:
        return {R(a) for a in ln.args if isinstance(a, str) and a}

    users = [k for k, ln in enumerate(launches) if r in names(ln)]
    if not users or launches[users[-1]].spec.family not in _EPILOGUES:
        return None
    ri, oi, ai = _EPILOGUES[launches[users[-1]].spec.family]
    w = launches[users[-1]]
    if w.args[ri] or w.args[ai] or R(w.args[oi]) != r:
        return None
    new = list(launches)
    for k in users:
        ln = new[k]
        new[k] = Launch(ln.spec, ln.grid, ln.block, [out if isinstance(a, str) and a and R(a) == r else a
                                                     for a in ln.args])
    new[users[-1]].args[ri] = other
    return new


def as_planned(launches: list[Launch], sp: ShapePlan) -> list[Launch]:
    """A tuning candidate's launches (``plan_node``'s, naming the graph's tensors) rewritten as ``plan_shapes``
    rewrote the layer's: attention reading through elided copies, a residual Add folded into the epilogue."""
    def R(t: str) -> str:
        return sp.root.get(t, t)

    launches = [attention_through(ln, R, sp.views.get, sp.views.get)[0] for ln in launches]
    for r, (out, other) in sp.residuals.items():
        if any(isinstance(a, str) and a and R(a) == r for ln in launches for a in ln.args):
            launches = fold_residual(launches, r, out, other, R) or launches
    return launches


def fold_residual_adds(launches: list[Launch], steps: list[int], root: dict[str, str], born: dict[str, int],
                       last: dict[str, int], keep: set[str], shapes: Mapping[str, Shape], tunable: list["Tunable"],
                       residuals: dict[str, tuple], complete: Mapping[str, int]) -> list[Launch]:
    """An Add of a GEMM's / convolution's output (no activation, nothing else reads it) and a tensor alive
    before that layer ran goes into the layer's epilogue as its residual: the layer writes the sum, the
    Add goes (a transformer's residual after the Transpose / Reshape that hid it from the graph's fusion).
    ``residuals`` records it for the tuner's candidates; ``root``, lifetimes, ``steps`` and ``tunable``
    are updated. ``complete``: the step at which each tensor is whole (its node's), since copy elision
    moves the birth of a Concat's buffer to its first part's writer while later parts come after."""
    def R(t: str) -> str:
        return root.get(t, t)

    touch = _touches(launches, R)
    dropped: set[int] = set()
    for i, ln in enumerate(launches):
        if not _is_add(ln):
            continue
        out = R(ln.args[2])
        for r, other in ((R(ln.args[0]), ln.args[1]), (R(ln.args[1]), ln.args[0])):
            users = touch.get(r, [])
            if r in keep or r not in born or r == R(other) or out == r or users[-1:] != [i] or \
                    int(np.prod(shapes.get(r, (-1,)))) != ln.args[3]:
                continue
            layer = users[:-1]
            if not layer or any(steps[k] != born[r] for k in layer) or layer != list(range(layer[0], layer[-1] + 1)):
                continue
            o = R(other)
            if max(born.get(o, -1), complete.get(o, -1)) >= born[r] or out not in born:
                continue        # the residual is (partly) made after the layer ran, or the sum has no slot of its own
            got = fold_residual(launches[layer[0]:layer[-1] + 1], r, ln.args[2], other, R)
            if got is None:
                continue
            launches[layer[0]:layer[-1] + 1] = got
            residuals[r] = (ln.args[2], other)
            for k in layer:
                touch[out].append(k)
            touch[out] = sorted(set(touch[out]) - {i})
            touch[o] = sorted(set(touch[o] + layer) - {i})
            touch.pop(r)
            born[out] = born.pop(r)
            last.pop(r, None)
            dropped.add(i)
            break
    return _drop(launches, dropped, steps, tunable)


def _plan_node(nd: Mapping[str, Any], in_shapes: list, hv: Any, num_sms: int) -> Any:
    """plan_node, with a planner's slip on odd shapes said as the model's problem."""
    try:
        return plan_node(nd, in_shapes, hv, num_sms)
    except UnsupportedModel:
        raise
    except (ValueError, IndexError, TypeError, KeyError, ZeroDivisionError) as e:
        raise UnsupportedModel(f"{nd['op']} (node {nd['name']!r}) cannot be planned for input shapes "
                               f"{in_shapes}: {e}", fix="check the input shapes against the model") from e


def _problem(e: UnsupportedModel) -> str:
    """One node's refusal as a line of the model's error: what, and its own fix."""
    fix = getattr(e, "fix", None)
    return f"{e.message} ({fix})" if fix else e.message


def device_bytes(arr: np.ndarray) -> bytes:
    """A host value's bytes as the device stores it (little-endian; bool as one byte; float64 as float32)."""
    a = as_device_array(arr)
    return np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes()


def _assign(born: Mapping[str, int], last: Mapping[str, int], sizes: Mapping[str, int]) -> tuple[dict[str, int], int]:
    """Greedy best-fit offsets: biggest buffers first, never overlapping a buffer alive at the same time."""
    placed: list[tuple[int, int, int, int]] = []  # (offset, size, born, last)
    offsets: dict[str, int] = {}
    total = 0
    for name in sorted(born, key=lambda n: (-sizes[n], born[n], n)):
        size = max(ALIGN, -(-sizes[name] // ALIGN) * ALIGN)
        b, l = born[name], last[name]
        busy = sorted((o, s) for o, s, pb, pl in placed if not (pl < b or l < pb))
        off = 0
        for o, s in busy:
            if off + size <= o:
                break
            off = max(off, o + s)
        offsets[name] = off
        placed.append((off, size, b, l))
        total = max(total, off + size)
    return offsets, total


def concrete_input_shapes(graph: Mapping[str, Any], given: Mapping[str, Sequence[int]] | None = None,
                          default_dim: int = 1) -> dict[str, Shape]:
    """Input shapes with dynamic dims filled from ``given`` (e.g. a profile's opt) or ``default_dim``."""
    out = {}
    for inp in graph["inputs"]:
        if given and inp["name"] in given:
            out[inp["name"]] = tuple(int(d) for d in given[inp["name"]])
        else:
            out[inp["name"]] = tuple(d if isinstance(d, int) else default_dim for d in inp["shape"])
    return out


def check_profile(graph: Mapping[str, Any], profiles: Mapping[str, Any], shapes: Mapping[str, Shape]) -> None:
    """Raise a clear error when an input's shape breaks the static dims or its recorded profile."""
    for inp in graph["inputs"]:
        s = shapes[inp["name"]]
        dims = inp["shape"]
        bad = len(s) != len(dims) or any(isinstance(d, int) and d != v for d, v in zip(dims, s))
        prof = profiles.get(inp["name"]) if profiles else None
        if prof and not bad:
            bad = any(not (lo <= v <= hi) for lo, v, hi in zip(prof["min"], s, prof["max"]))
        if bad:
            allowed = f"between {prof['min']} and {prof['max']}" if prof else str(dims)
            raise BackendError(f"input {inp['name']!r} has shape {list(s)}; this plan accepts {allowed}",
                               fix="pass an input of an allowed shape (or rebuild with a wider profile)",
                               input=inp["name"], shape=list(s))

