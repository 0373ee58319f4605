#!/usr/bin/env python
"""rtxpack in one command: generate the example ONNX, plan, build, serve, install for a forced GPU.

    python scripts/demo.py                 # RTX 40-series (CC 8.9) by default
    python scripts/demo.py --gpu 7.5       # a Turing card: gets the Turing engine
    python scripts/demo.py --gpu 9.0       # Hopper: no TensorRT-RTX engine; the error names the fallback

Everything stays on this machine: the repository is served by Python's http.server on 127.0.0.1,
the local store is a temporary directory, and no GPU is needed (RTXPACK_DEVICE forces one).
"""
from __future__ import annotations

import argparse
import functools
import http.server
import os
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

CONFIG = ROOT / "examples" / "demo" / "rtxpack.toml"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def serve(directory: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def step(title: str) -> None:
    print(f"\n== {title}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", default="8.9", help="compute capability to pretend this PC has (RTXPACK_DEVICE)")
    p.add_argument("--model", default="mlp", choices=["mlp", "cnn"])
    p.add_argument("--repo", type=Path, default=ROOT / "examples" / "demo" / "repo", help="where to publish")
    p.add_argument("-j", "--jobs", type=int, default=2)
    args = p.parse_args(argv)

    from make_models import make_demo

    from rtxpack.core.errors import RtxpackError
    from rtxpack.farm import build, load_config, make_plan

    step("1. generate the example ONNX models (scripts/make_models.py)")
    for path in make_demo():
        print(f"  {path.relative_to(ROOT)}")

    step(f"2. plan {CONFIG.relative_to(ROOT)}: models x targets x toolchains")
    plan = make_plan(load_config(CONFIG))
    for c in plan.cells:
        state = f"skip ({c.skipped})" if c.skipped else "build"
        print(f"  {c.id[:12]}  {c.model:<4} x {c.target:<9} CC {','.join(c.compute_capabilities):<13} {c.toolchain}  {state}")

    step(f"3. build with the real TensorRT-RTX builder (no GPU needed), -j {args.jobs}")
    report = build(load_config(CONFIG), args.repo, jobs=args.jobs, plan=plan,
                   progress=lambda s: print("  " + s))
    d = report.to_dict()
    print(f"  {d['built']} built, {d['up_to_date']} already in the repository, {d['skipped']} skipped, "
          f"{d['failed']} failed -> {args.repo.relative_to(ROOT) if args.repo.is_relative_to(ROOT) else args.repo}")

    step("4. sign the manifest (ed25519; a throw-away key for the demo, `rtxpack keygen` / `rtxpack sign`)")
    from rtxpack.farm.sign import keygen, sign_repository

    key_dir = Path(tempfile.mkdtemp(prefix="rtxpack-demo-key-"))
    private, public, keyid = keygen(key_dir)
    signed = sign_repository(args.repo, private)
    print(f"  signed with key {keyid}; manifest version {getattr(signed, 'version', '?')}")

    step("5. serve the repository on loopback (static files: manifest.json + blobs/)")
    server, url = serve(args.repo)
    print(f"  {url}/manifest.json")

    step(f"6. install '{args.model}' on a PC with a GPU of compute capability {args.gpu} (RTXPACK_DEVICE={args.gpu})")
    os.environ["RTXPACK_DEVICE"] = args.gpu
    os.environ.setdefault("RTXPACK_CACHE_DIR", tempfile.mkdtemp(prefix="rtxpack-demo-store-"))
    from rtxpack.installer.pipeline import install
    from rtxpack.core.resolve import explain

    try:
        result = install(url, args.model, progress=False, trusted_keys=[public])  # the pinned key
        print(f"  manifest signature verified against the pinned key {keyid}")
    except RtxpackError as e:
        print(f"  no engine for this GPU: {e}")
        server.shutdown()
        return 0
    best = result.resolution.best
    print(f"  chosen: {best.id}\n  why:    {best.reason}")
    for a, path in result.files:
        print(f"  stored: {path} ({a.size} bytes, sha256 {a.sha256[:16]}... verified)")
    print("\n  the resolver's full explanation:")
    print("  " + explain(result.resolution).replace("\n", "\n  "))
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
