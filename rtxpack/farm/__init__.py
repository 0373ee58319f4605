"""The publisher side (the build farm): rtxpack.toml -> plan (cells) -> build -> repository -> publish.

Modules: ``config`` (parse rtxpack.toml), ``toolchains`` (venv per pinned backend version),
``plan`` (cells, stable ids, skips), ``build`` (what to build, publishing, the local executor),
``pool`` (long-lived builder processes), ``worker`` (in-interpreter builder), ``cluster`` (the
Dask executor: build and warm on a cluster, routing by resource; needs rtxpack[cluster]),
``cluster_worker`` (what runs on a Dask worker), ``repo`` (the repository directory: write,
merge), ``bundle`` (offline archives), ``sign`` (keygen, sign), ``warm`` (runtime caches on farm
GPUs), ``ci`` (GitHub Actions matrix).
"""
from __future__ import annotations

from .build import BuildReport, CellResult, build
from .config import FarmConfig, ModelSpec, TargetSpec, ToolchainSpec, load_config
from .plan import Cell, Plan, make_plan
from .repo import RepositoryWriter, merge_repositories

__all__ = ["BuildReport", "Cell", "CellResult", "FarmConfig", "ModelSpec", "Plan", "RepositoryWriter", "TargetSpec",
           "ToolchainSpec", "build", "load_config", "make_plan", "merge_repositories"]
