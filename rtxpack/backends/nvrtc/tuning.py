"""On-device autotuning of a plan's GEMM and convolution layers, and the choices kept in the runtime cache.

A layer with kernel candidates (``schedule.Tunable``: the tile shapes x split-K of the tensor-core
kernels in fp16 plans, of the fp32 GEMM / implicit-GEMM convolution in fp32 plans) is timed
once per candidate on the GPU, in the arena of a real run, on the first run of an input shape; the
fastest is kept. Layers of the same shape and attributes are timed once (ResNet's repeated blocks).
Tuning time is bounded (``tune_budget_s``, default 2 s per input shape); layers past the budget
keep the heuristic's kernel, and the report says so.

Choices are stored in the runtime cache under a key with the module digest (every kernel's
digest), the arch, the GPU's name and SM count and the driver: a cache made on another GPU, or
for another build of the plan, is never used to select a kernel, and a label that is not a
candidate of the layer (a cache edited by hand) falls back to the heuristic.
"""
from __future__ import annotations

import json
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ...core.errors import BackendError
from .cache import CacheKey, RuntimeCache
from .lowering import plan_node
from .schedule import ShapePlan, Tunable, as_planned

DEFAULT_BUDGET_S = 2.0
TIMER = Callable[[Tunable, str, list[Any], dict[str, Any]], float]


def tune_budget(options: Mapping[str, Any]) -> float:
    """The ``tune_budget_s`` load option in seconds (0 = no tuning, None = the default); BackendError
    for anything else."""
    v = options.get("tune_budget_s")
    if v is None:
        return DEFAULT_BUDGET_S
    budget = float(v) if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) \
        else float("nan")
    if not 0 <= budget < float("inf"):
        raise BackendError(f"load option tune_budget_s={v!r} is not a number of seconds",
                           fix="pass seconds >= 0, e.g. options={'tune_budget_s': 2} (0 turns tuning off)")
    return budget


def shape_key(shapes: Mapping[str, Sequence[int]], names: Sequence[str]) -> str:
    """``"x=1x3x224x224;mask=1x128"``: the input-shape combination a set of choices is for."""
    return ";".join(f"{n}={'x'.join(str(int(d)) for d in shapes[n])}" for n in names)


def cache_key(module: str, sm: int, gpu: str, driver: int) -> CacheKey:
    """Runtime-cache key of a plan's tuning record on one GPU model (name + SM count) and driver."""
    return CacheKey(module, f"sm_{sm}", "tuning", gpu, driver)


class TuningTable:
    """Per input shape: ``{layer name: candidate label}``; serialized as JSON into the runtime cache."""

    def __init__(self, key: CacheKey, cache: RuntimeCache) -> None:
        self.key = key
        self.shapes: dict[str, dict[str, str]] = {}
        blob = cache.get(key)
        if blob:
            try:
                data = json.loads(bytes(blob))
                self.shapes = {str(k): {str(a): str(b) for a, b in v.items()} for k, v in data["shapes"].items()}
            except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
                self.shapes = {}      # unreadable: tune again (and overwrite it)

    def store(self, cache: RuntimeCache) -> None:
        if self.shapes:
            cache.put(self.key, json.dumps({"shapes": self.shapes}, sort_keys=True).encode())


def _signature(t: Tunable) -> str:
    """Layers with equal signatures run the same launches on the same sizes: one timing serves all."""
    a = {k: v for k, v in t.node["attrs"].items() if k not in ("bn",)}
    return json.dumps([t.node["op"], a, [list(s) if s is not None else None for s in t.shapes],
                       [bool(i) for i in t.node["inputs"]], t.labels], sort_keys=True, default=str)


def tune(sp: ShapePlan, num_sms: int, timer: TIMER, budget_s: float = DEFAULT_BUDGET_S,
         known: Mapping[str, str] | None = None) -> tuple[dict[str, str], dict[str, Any]]:
    """Time every candidate of every tunable layer of ``sp`` not in ``known`` (choices an earlier, budget-cut
    tuning made, kept as they are); returns (choices, report).

    ``timer(layer, label, launches, scratch)`` gives the milliseconds of one run of a candidate's
    launches (``scratch``: the extra buffers those launches name, as ``plan_node`` returns them).
    """
    t0 = time.perf_counter()
    choices: dict[str, str] = dict(known or {})
    by_sig: dict[str, str] = {}
    timed = skipped = changed = 0
    for t in sp.tunable:
        if t.node["name"] in choices:
            continue
        sig = _signature(t)
        if sig in by_sig:
            choices[t.node["name"]] = by_sig[sig]
            continue
        if time.perf_counter() - t0 > budget_s:
            skipped += 1
            continue
        best, best_ms = t.chosen, float("inf")
        for label in t.labels:
            _, launches, extra = plan_node({**t.node, "choice": label}, t.shapes, sp.host.get, num_sms)
            extra.pop("#tune", None)
            launches = as_planned(launches, sp)
            ms = timer(t, label, launches, extra)
            if ms < best_ms:
                best, best_ms = label, ms
        timed += 1
        changed += best != t.chosen
        by_sig[sig] = choices[t.node["name"]] = best
    seconds = time.perf_counter() - t0
    report = {"layers": len(sp.tunable), "distinct": len(by_sig), "timed": timed, "changed": changed,
              "skipped_over_budget": skipped, "seconds": round(seconds, 3), "budget_s": budget_s}
    return choices, report
