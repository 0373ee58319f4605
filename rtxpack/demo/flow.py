"""The farm-to-PC story in one command: ``rtxpack demo`` / ``python -m rtxpack.demo``.

Generate the example ONNX models, plan ``rtxpack.toml`` (shipped in this package), build real
TensorRT-RTX engines on the CPU, sign the manifest, serve the repository on loopback, install for a
forced GPU (``RTXPACK_DEVICE``) and print what was chosen and why. Everything stays on this
machine; no GPU is needed. It runs from an installed wheel: the config is package data and the
models are generated in code.

The signing key lives in a private temporary folder that is removed before the demo returns (only
the public key is kept, as ``rtxpack.pub`` beside the repository); the installer's store is a
temporary folder too unless ``RTXPACK_CACHE_DIR`` is set.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import os
import shutil
import sys
import tempfile
import threading
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ..core.errors import ConfigError, RtxpackError
from ..core.resolve import explain
from ..farm import build, load_config, make_plan
from ..farm.sign import keygen, sign_repository
from ..installer.pipeline import install
from . import models
from .options import add_arguments

CONFIG_NAME = "rtxpack.toml"
MARKER = ".rtxpack-demo"      # a work folder the demo made (safe to write into again)


def config_text() -> str:
    """The demo's rtxpack.toml, from the installed package."""
    return resources.files(__package__).joinpath(CONFIG_NAME).read_text(encoding="utf-8")


def demo_models(root: Path) -> list[Path]:
    """The models the demo config names, generated under ``root/models`` (fp16: Turing needs it)."""
    out = []
    for kind, gen in (("mlp", models.mlp), ("cnn", models.small_cnn)):
        dest = root / "models" / f"{kind}-fp16.onnx"
        tmp = dest.with_suffix(".fp32.onnx")
        gen(tmp)
        models.fp16_variant(tmp, dest)
        tmp.unlink()
        out.append(dest)
    return out


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[str]:
    """A static file server for ``directory`` on 127.0.0.1 (an ephemeral port); yields its URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _workdir(path: Path | None, force: bool) -> tuple[Path, bool]:
    """The folder to work in and whether it is temporary. A folder of the user's is used only when it
    is empty, was made by the demo before, or ``force`` says so."""
    if path is None:
        return Path(tempfile.mkdtemp(prefix="rtxpack-demo-")), True
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--dir {path}: is a file", fix="pass a folder for the demo (a new one is created)",
                          path=str(path))
    ours = {MARKER, CONFIG_NAME, "models", "repo", "rtxpack.pub", ".gitignore"}   # what a demo leaves (+ a checkout's)
    if path.is_dir() and not force and not {p.name for p in path.iterdir()} <= ours:
        raise ConfigError(f"--dir {path}: a non-empty folder the demo did not make; not writing into it",
                          fix="pass a new or empty folder, or --force", path=str(path))
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).write_text("made by `rtxpack demo`: models/, repo/, rtxpack.toml, rtxpack.pub\n")
    return path, False


def run_demo(*, workdir: Path | None = None, gpu: str = "8.9", model: str = "mlp", jobs: int = 2,
             force: bool = False, say: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Run the story; returns a summary (``say`` prints each step; None prints nothing)."""
    out = say or (lambda s: None)
    root, temporary = _workdir(workdir, force)
    summary: dict[str, Any] = {"workdir": str(root), "temporary": temporary, "gpu": gpu, "model": model}
    try:
        _run(root, gpu, model, jobs, out, summary)
    finally:
        if temporary:
            shutil.rmtree(root, ignore_errors=True)
    out(f"\n(the work folder {root} was temporary and is removed; `--dir DIR` keeps it)" if temporary
        else f"\nkept in {root}: rtxpack.toml, models/, repo/, rtxpack.pub")
    return summary


def _step(out: Callable[[str], None], title: str) -> None:
    out(f"\n== {title}")


def _run(root: Path, gpu: str, model: str, jobs: int, out: Callable[[str], None], summary: dict[str, Any]) -> None:
    config = root / CONFIG_NAME
    config.write_text(config_text(), encoding="utf-8")
    repo = root / "repo"

    _step(out, f"1. generate the example ONNX models into {root / 'models'}")
    for path in demo_models(root):
        out(f"  {path.name}")

    _step(out, f"2. plan {config}: models x targets x toolchains")
    cfg = load_config(config)
    plan = make_plan(cfg)
    for c in plan.cells:
        state = f"skip ({c.skipped})" if c.skipped else "build"
        out(f"  {c.id[:12]}  {c.model:<4} x {c.target:<9} CC {','.join(c.compute_capabilities):<13} {c.toolchain}  "
            f"{state}")

    _step(out, f"3. build with the real TensorRT-RTX builder (no GPU needed), -j {jobs}")
    report = build(cfg, repo, jobs=jobs, plan=plan, progress=lambda s: out("  " + s))
    d = report.to_dict()
    summary["build"] = {k: d[k] for k in ("built", "up_to_date", "skipped", "failed")}
    out(f"  {d['built']} built, {d['up_to_date']} already in the repository, {d['skipped']} skipped, "
        f"{d['failed']} failed -> {repo}")
    if not report.ok:
        raise RtxpackError(f"the demo build failed: {d['failed']} cell(s)", fix="see the FAILED lines above")

    _step(out, "4. sign the manifest (ed25519: `rtxpack keygen` / `rtxpack sign`)")
    with tempfile.TemporaryDirectory(prefix="rtxpack-demo-key-") as keys:   # 0700; removed right after
        private, public, keyid = keygen(keys)
        signed = sign_repository(repo, private)
        pinned = root / "rtxpack.pub"
        shutil.copyfile(public, pinned)
    summary["keyid"] = keyid
    out(f"  signed with a throw-away key {keyid} (its private half is already deleted); manifest version "
        f"{signed.version}; the public key the installer pins: {pinned}")

    _step(out, "5. serve the repository on loopback (static files: manifest.json + blobs/)")
    with serve(repo) as url:
        out(f"  {url}/manifest.json")
        _step(out, f"6. install '{model}' on a PC with a GPU of compute capability {gpu} (RTXPACK_DEVICE={gpu})")
        with contextlib.ExitStack() as stack:
            env = {"RTXPACK_DEVICE": gpu}
            if not os.environ.get("RTXPACK_CACHE_DIR"):     # the user's store stays untouched
                env["RTXPACK_CACHE_DIR"] = stack.enter_context(tempfile.TemporaryDirectory(
                    prefix="rtxpack-demo-store-"))
            stack.enter_context(_env(**env))
            try:
                result = install(url, model, progress=False, trusted_keys=[pinned])
            except RtxpackError as e:
                summary["chosen"] = None
                summary["error"] = e.to_dict()
                out(f"  no engine for this GPU: {e.message}\n  fix:  {e.fix}")
                return
            out(f"  manifest signature verified against the pinned key {keyid}")
            best = result.resolution.best
            summary["chosen"] = best.id if best else None
            summary["reason"] = best.reason if best else None
            summary["files"] = [{"id": a.id, "size": a.size, "sha256": a.sha256} for a, _ in result.files]
            out(f"  chosen: {best.id}\n  why:    {best.reason}" if best else "  nothing chosen")
            for a, path in result.files:
                out(f"  stored: {path.name} ({a.size} bytes, sha256 {a.sha256[:16]}... verified)")
            out("\n  the resolver's full explanation:")
            out("  " + explain(result.resolution).replace("\n", "\n  "))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rtxpack.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        run_demo(workdir=args.dir, gpu=args.gpu, model=args.model, jobs=args.jobs, force=args.force)
    except RtxpackError as e:
        print(f"rtxpack demo: error: {e.message}\n  fix: {e.fix}", file=sys.stderr)
        return 1
    return 0
