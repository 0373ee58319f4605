"""The build farm: rtxpack.toml -> plan (cells) -> build (workers, toolchain venvs) -> repository.

Modules: ``config`` (parse rtxpack.toml), ``toolchains`` (venv per TensorRT-RTX version),
``plan`` (cells, stable ids, skips), ``build`` (parallel workers), ``repo`` (publish, merge),
``ci`` (GitHub Actions matrix), ``cli`` (subcommands registered into ``rtxpack.cli``).
"""
from __future__ import annotations

from .build import BuildReport, CellResult, build
from .config import FarmConfig, ModelSpec, TargetSpec, ToolchainSpec, load_config
from .plan import Cell, Plan, make_plan
from .repo import Repository, merge_repositories

__all__ = ["BuildReport", "Cell", "CellResult", "FarmConfig", "ModelSpec", "Plan", "Repository", "TargetSpec",
           "ToolchainSpec", "build", "load_config", "make_plan", "merge_repositories"]
