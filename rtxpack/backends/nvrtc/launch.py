"""Launch descriptions and the index arithmetic every planner shares (strides, broadcasting, dims).

Launch arguments name tensors by string (the runtime turns names into device addresses after
planning memory), so the same planning code validates a model at build time with no GPU at all.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ...core.errors import UnsupportedModel
from .kernels import KernelSpec

Shape = tuple[int, ...]


class At(str):
    """A tensor name that a kernel reads from an element ``offset`` on: a copy's source read in place
    (the key third of a packed QKV projection). Equal to, and hashed as, the plain name, so lifetimes and
    aliases treat it as the tensor it points into."""

    offset: int

    def __new__(cls, name: str, offset: int = 0) -> "At":
        s = super().__new__(cls, name)
        s.offset = int(offset)
        return s

    def __reduce__(self):      # pickles (a shape plan sent to a worker) keep the offset
        return At, (str(self), self.offset)


@dataclass
class Launch:
    spec: KernelSpec
    grid: tuple[int, int, int]
    block: int
    args: list[Any]          # str = tensor name (pointer; "" = null; an At: from an offset on), int/float, or list[int] for I6


def strides_of(shape: Sequence[int]) -> list[int]:
    out, acc = [], 1
    for s in reversed(shape):
        out.append(acc)
        acc *= int(s)
    return out[::-1]


def blocks(n: int, threads: int = 256) -> tuple[int, int, int]:
    return (max(1, min(math.ceil(n / threads), 16384)), 1, 1)


def collapse(shape: Sequence[int], *strides: Sequence[int]) -> tuple[list[int], list[list[int]]]:
    """Merge adjacent dims that are contiguous for every operand; drop size-1 dims."""
    dims = [(int(s), [int(st[i]) for st in strides]) for i, s in enumerate(shape) if s != 1]
    if not dims:
        return [1], [[0] for _ in strides]
    out = [dims[0]]
    for s, sts in dims[1:]:
        ps, psts = out[-1]
        if all(pst == st * s for pst, st in zip(psts, sts)):
            out[-1] = (ps * s, sts)
        else:
            out.append((s, sts))
    return [d[0] for d in out], [[d[1][k] for d in out] for k in range(len(strides))]


def i6(v: Sequence[int], node: Mapping[str, Any]) -> list[int]:
    if len(v) > 6:
        raise UnsupportedModel(f"{node['op']} (node {node['name']!r}) needs more than 6 non-collapsible dimensions",
                               fix="reshape the model to at most 6 dimensions")
    return list(v) + [1] * (6 - len(v))


def broadcast(*shapes: Sequence[int]) -> Shape:
    try:
        return tuple(int(s) for s in np.broadcast_shapes(*[tuple(s) for s in shapes]))
    except ValueError as e:
        raise UnsupportedModel(f"shapes {shapes} do not broadcast", fix="check the model's input shapes") from e


def bstrides(shape: Sequence[int], out: Sequence[int], strides: Sequence[int] | None = None) -> list[int]:
    """Element strides of ``shape`` broadcast to ``out`` (0 where a dim of 1 is repeated); ``strides``:
    the tensor's own (a strided view), else contiguous."""
    st = strides_of(shape) if strides is None else strides
    pad = len(out) - len(shape)
    return [0] * pad + [0 if shape[i] == 1 and out[pad + i] != 1 else st[i] for i in range(len(shape))]


def rowthreads(n: int) -> int:
    return max(32, min(256, 1 << max(5, math.ceil(math.log2(max(n, 1))))))


