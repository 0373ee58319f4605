"""Per-input-shape planning: host evaluation, shapes, launches and one liveness-based memory arena.

Done once per distinct set of input shapes (then cached by the runtime): every activation gets
an offset in a single device allocation, reused across layers when lifetimes do not overlap, so
nothing is allocated per layer or per run. Pure Python + numpy: runs at build time (no GPU) to
validate a model end to end, and at run time to drive the GPU.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Collection, Mapping, Sequence

import numpy as np

from ...core.errors import BackendError, UnsupportedModel
from .dtypes import ITEMSIZE, as_device_array, device_dtype, host_dtype_name, output_dtypes
from .host_ops import eval_host
from .kernels import KernelSpec
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
    return ShapePlan(shapes, host, launches, root, offsets, total, uploads, dtypes, tunable)


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

