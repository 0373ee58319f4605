"""Dask worker preload of the cluster tests (``dask worker ... --preload tests/cluster_preload.py``):
registers the reference backend's farm variant in the worker process, as a farm would register a
site-specific backend, so the worker can build its cells and warm its engines."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import refbackend  # noqa: E402

refbackend.install(farm=True)
