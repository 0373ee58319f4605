"""CI export: a GitHub Actions job matrix, one job per cell (or per toolchain)."""
from __future__ import annotations

from typing import Any

from ..core.errors import ConfigError
from .plan import Plan


def github_matrix(plan: Plan, *, per: str = "cell") -> dict[str, Any]:
    """``{"include": [...]}`` for ``strategy.matrix``; skipped cells are left out (listed by ``plan``).

    ``per="cell"``: one job per cell, each runs ``rtxpack build CONFIG --repo part --cell ID``.
    ``per="toolchain"``: one job per toolchain; ``cells`` is a space-separated list for ``--cell``.
    """
    cells = plan.buildable
    if per == "cell":
        return {"include": [{"cell": c.id, "model": c.model, "target": c.target, "toolchain": c.toolchain,
                             "name": f"{c.model}-{c.target}-{c.toolchain}"} for c in cells]}
    if per == "toolchain":
        groups: dict[str, list[str]] = {}
        for c in cells:
            groups.setdefault(c.toolchain, []).append(c.id)
        return {"include": [{"toolchain": t, "cells": " ".join(ids), "count": len(ids)} for t, ids in sorted(groups.items())]}
    raise ConfigError(f"--per {per!r} is not supported", fix="use --per cell or --per toolchain", value=per, option="--per")
