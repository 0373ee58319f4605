"""The fault suite: every way the network, the disk, the process or the input can fail, with its
outcome asserted. Real processes (the CLI in subprocesses, SIGKILL, RLIMIT_FSIZE) and real
servers on 127.0.0.1 only (nginx, tests/faultserver.py, raw sockets).

Each test carries ``@fault(name, expected)``; ``scripts/fault_report.py`` runs this file and
renders docs/RELIABILITY.md from those labels and the outcomes.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tarfile
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from fault_helpers import cache_for, child_env, cli, data_of, edit_first_artifact, engine_for, one_engine
from rtxpack.installer import trust
from rtxpack.core.signing import load_private_key, sign_manifest
from rtxpack.farm.sign import keygen, sign_repository
from rtxpack.core.device import parse_override
from rtxpack.core.errors import (BundleError, FetchError, ManifestError, SignatureError)
from rtxpack.installer.pipeline import install
from rtxpack.core.manifest import MAX_MANIFEST_BYTES, Manifest
from rtxpack.installer.repository import open_repository
from rtxpack.installer.store import Store

MiB = 1 << 20
DEVICE = "8.9"
pytestmark = pytest.mark.timeout(90) if hasattr(pytest.mark, "timeout") else []


#: the table section of the tests below it (set again at each section marker)
CATEGORY = "process and network"


def fault(name: str, expected: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Label a test for the published table (docs/RELIABILITY.md), in the section CATEGORY names."""
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.fault = (name, expected, CATEGORY)  # type: ignore[attr-defined]
        return fn
    return deco


def dev():
    return parse_override(DEVICE)


def blob_ok(art) -> Path:
    """The artifact is a store entry whose bytes hash to its sha256 (and nothing else is half there)."""
    store = Store()
    p = store.blob_path(art.sha256)
    assert p.is_file(), f"{art.id} not installed"
    assert p.stat().st_size == art.size and hashlib.sha256(p.read_bytes()).hexdigest() == art.sha256
    return p


def entry_shas() -> set[str]:
    return {e.sha256 for e in Store().entries()}


def serve(server, root: Path) -> None:
    """Put every file of a repository directory on the fault server."""
    for p in root.rglob("*"):
        if p.is_file():
            server.files["/" + p.relative_to(root).as_posix()] = p.read_bytes()


@pytest.fixture
def key(tmp_path: Path) -> dict[str, Any]:
    k, pub, kid = keygen(tmp_path / "keys")
    return {"key": k, "pub": pub, "id": kid}


# ================================================================================================
# process, network
# ================================================================================================
@fault("installer SIGKILLed mid-download, then rerun",
       "rerun resumes from the partial (Range request); final blob verified; no entry before that")
def test_sigkill_mid_download_then_rerun_resumes(slow_nginx) -> None:
    e, _ = one_engine(slow_nginx.root, 3 * MiB, seed=1)
    partial = Store().partial_path(e.sha256)
    cmd = [sys.executable, "-m", "rtxpack.cli", "install", "--repo", slow_nginx.url, "--model", "mlp", "--json"]
    p = subprocess.Popen(cmd, env=child_env(RTXPACK_DEVICE=DEVICE), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and p.poll() is None:
            if partial.exists() and partial.stat().st_size >= 256 << 10:
                break
            time.sleep(0.005)
        assert p.poll() is None, "the installer finished before it could be killed (server not throttled?)"
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(10)
    assert p.returncode == -signal.SIGKILL
    got = partial.stat().st_size
    assert 0 < got < e.size
    assert entry_shas() == set()                               # a partial is never an entry
    r = cli("install", "--repo", slow_nginx.url, "--model", "mlp", "--json", RTXPACK_DEVICE=DEVICE)
    assert r.returncode == 0, r.stderr
    blob_ok(e)
    assert not partial.exists()
    hits = slow_nginx.hits("/" + e.path, at_least=2)
    assert hits[-1].range == f"bytes={got}-" and hits[-1].status == 206
    assert hits[-1].sent == e.size - got                       # only the missing bytes came again


@fault("connection closed mid-body", "retried with Range from the bytes received; final blob verified")
def test_connection_cut_mid_body_resumes(faultserver, tmp_path: Path) -> None:
    e, _ = one_engine(tmp_path / "repo", 1 * MiB, seed=2)
    serve(faultserver, tmp_path / "repo")
    faultserver.script("/" + e.path, ["cut:300000", "ok"])
    res = install(faultserver.url, "mlp", device=dev(), progress=False)
    assert res.files[0][0].sha256 == e.sha256
    blob_ok(e)
    hits = faultserver.hits("/" + e.path)
    assert [(h.range, h.status) for h in hits] == [(None, 200), ("bytes=300000-", 206)]


@fault("server sends wrong bytes (right length)",
       "ChecksumMismatch for the artifact; install fails with FetchError; nothing stored, no partial left")
def test_wrong_bytes_are_never_installed(faultserver, tmp_path: Path) -> None:
    e, _ = one_engine(tmp_path / "repo", 200_000, seed=3)
    serve(faultserver, tmp_path / "repo")
    faultserver.default = "wrong"
    faultserver.script("/manifest.json", ["ok"] * 5)
    with pytest.raises(FetchError, match="failed verification") as ei:
        install(faultserver.url, "mlp", device=dev(), progress=False)
    assert "sha256 mismatch" in str(ei.value) or "wrong bytes" in str(ei.value)
    assert entry_shas() == set()
    assert not Store().partial_path(e.sha256).exists()


@fault("server sends more bytes than the manifest declares", "refused as soon as the body passes the declared "
       "length; nothing stored")
def test_longer_body_than_declared_is_refused(faultserver, tmp_path: Path) -> None:
    e, data = one_engine(tmp_path / "repo", 100_000, seed=4)
    serve(faultserver, tmp_path / "repo")
    faultserver.files["/" + e.path] = data + b"trailing"
    with pytest.raises(FetchError) as ei:
        install(faultserver.url, "mlp", device=dev(), progress=False)
    assert "more than the expected" in str(ei.value)
    assert entry_shas() == set()


@fault("server file shorter than the manifest declares (every attempt)",
       "each attempt resumes then ends short; FetchError after the retries; nothing stored")
def test_short_body_never_installed(faultserver, tmp_path: Path) -> None:
    e, data = one_engine(tmp_path / "repo", 100_000, seed=19)
    serve(faultserver, tmp_path / "repo")
    faultserver.files["/" + e.path] = data[:-10]
    with pytest.raises(FetchError) as ei:
        install(faultserver.url, "mlp", device=dev(), progress=False)
    assert "could not fetch" in str(ei.value) or "failed verification" in str(ei.value)
    assert entry_shas() == set()


@fault("200 answered to a Range request", "the partial is discarded, the full body is taken from 0; blob verified")
def test_200_to_range_restarts_cleanly(faultserver, tmp_path: Path) -> None:
    e, _ = one_engine(tmp_path / "repo", 1 * MiB, seed=5)
    serve(faultserver, tmp_path / "repo")
    faultserver.script("/" + e.path, ["cut:400000", "ignore-range"])
    install(faultserver.url, "mlp", device=dev(), progress=False)
    blob_ok(e)
    hits = faultserver.hits("/" + e.path)
    assert [(h.range, h.status) for h in hits] == [(None, 200), ("bytes=400000-", 200)]


def _no_limit() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


@fault("disk full during a download (RLIMIT_FSIZE in the installer process)",
       "exit 1 with a one-line error and a fix; store unchanged: no new entry, temp bytes never an entry; "
       "a rerun with space completes")
@pytest.mark.parametrize("source", ["http", "dir"])
def test_disk_full_during_download(nginx, source: str) -> None:
    e, _ = one_engine(nginx.root, 2 * MiB, seed=6)
    existing = Store().add_bytes(b"an artifact installed earlier")
    before = entry_shas()
    repo = nginx.url if source == "http" else str(nginx.root)

    def limit() -> None:  # in the child, before exec: files may not grow past 256 KiB (EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 10, 256 << 10))

    r = subprocess.run([sys.executable, "-m", "rtxpack.cli", "install", "--repo", repo, "--model", "mlp"],
                       env=child_env(RTXPACK_DEVICE=DEVICE, RTXPACK_RETRIES="1"), capture_output=True, text=True,
                       timeout=60, preexec_fn=limit)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "File too large" in r.stderr and "fix:" in r.stderr and "Traceback" not in r.stderr
    assert entry_shas() == before and existing.read_bytes() == b"an artifact installed earlier"
    assert not Store().blob_path(e.sha256).exists()
    r = cli("install", "--repo", repo, "--model", "mlp", RTXPACK_DEVICE=DEVICE)
    assert r.returncode == 0, r.stderr
    blob_ok(e)
    assert entry_shas() == before | {e.sha256}


@fault("8 installer processes at once (signed repository)",
       "all succeed; the blob is downloaded once (per-blob lock); one store entry; rollback state valid")
def test_eight_concurrent_installers(nginx, key) -> None:
    e, _ = one_engine(nginx.root, 2 * MiB, seed=8)
    sign_repository(nginx.root, key["key"])
    cmd = [sys.executable, "-m", "rtxpack.cli", "install", "--repo", nginx.url, "--model", "mlp",
           "--trusted-key", str(key["pub"]), "--json"]
    env = child_env(RTXPACK_DEVICE=DEVICE)
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(8)]
    outs = [p.communicate(timeout=80) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, [o[1][-500:] for o in outs]
    assert all(json.loads(o[0])["artifacts"][0]["sha256"] == e.sha256 for o in outs)
    blob_ok(e)
    assert entry_shas() == {e.sha256}
    assert sum(h.sent for h in nginx.hits("/" + e.path, at_least=1)) == e.size
    assert trust.accepted_version(key["id"]) == 2
    assert list(Store().root.joinpath("tmp").glob("*.tmp")) == []


@fault("server accepts the request and never answers",
       "FetchError naming the timeout within the configured read timeout x attempts; exit 1")
@pytest.mark.parametrize("where", ["manifest", "artifact"])
def test_hanging_server_times_out(faultserver, tmp_path: Path, where: str) -> None:
    e, _ = one_engine(tmp_path / "repo", 50_000, seed=9)
    serve(faultserver, tmp_path / "repo")
    faultserver.script("/manifest.json" if where == "manifest" else "/" + e.path, ["hang"] * 5)
    r = cli("install", "--repo", faultserver.url, "--model", "mlp", timeout=30, RTXPACK_DEVICE=DEVICE,
            RTXPACK_READ_TIMEOUT="0.5", RTXPACK_CONNECT_TIMEOUT="0.5", RTXPACK_RETRIES="1")
    assert r.returncode == 1, r.stderr
    assert "timed out" in r.stderr.lower() or "timeout" in r.stderr.lower(), r.stderr
    assert "fix:" in r.stderr and "Traceback" not in r.stderr
    assert entry_shas() == set()


@fault("a peer that completes TCP connect but never reads or answers (listen backlog)",
       "read timeout, FetchError, bounded time; exit 1")
def test_listening_socket_that_never_accepts() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)                      # the kernel completes handshakes; nobody ever accept()s
    try:
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        r = cli("install", "--repo", url, "--model", "mlp", timeout=30, RTXPACK_DEVICE=DEVICE,
                RTXPACK_READ_TIMEOUT="0.5", RTXPACK_CONNECT_TIMEOUT="0.5", RTXPACK_RETRIES="1")
    finally:
        s.close()
    assert r.returncode == 1 and ("timed out" in r.stderr.lower() or "timeout" in r.stderr.lower()), r.stderr


# ================================================================================================
# disk: the local store and runtime caches
# ================================================================================================
CATEGORY = "disk: the store and runtime caches"
@fault("plan in the store truncated or bit-flipped",
       "`rtxpack cache verify` reports it (exit 1) and removes it; the next install fetches it again, verified")
@pytest.mark.parametrize("damage", ["truncated", "bit-flipped"])
def test_corrupt_plan_in_store_found_and_refetched(nginx, damage: str) -> None:
    e, _ = one_engine(nginx.root, 300_000, seed=10)
    install(nginx.url, "mlp", device=dev(), progress=False)
    p = blob_ok(e)
    data = p.read_bytes()
    p.write_bytes(data[:1000] if damage == "truncated" else data[:-1] + bytes([data[-1] ^ 1]))
    r = cli("cache", "verify", "--json")
    assert r.returncode == 1, r.stdout
    assert [c["sha256"] for c in json.loads(r.stdout)["corrupt"]] == [e.sha256]
    assert not p.exists()
    r = cli("install", "--repo", nginx.url, "--model", "mlp", RTXPACK_DEVICE=DEVICE)
    assert r.returncode == 0, r.stderr
    blob_ok(e)
    assert len([h for h in nginx.hits("/" + e.path, at_least=2) if h.status == 200]) == 2
    assert cli("cache", "verify").returncode == 0


@fault("plan in the store truncated, no `cache verify` run", "the next install sees the wrong size and fetches "
       "it again")
def test_truncated_plan_refetched_by_next_install(nginx) -> None:
    e, _ = one_engine(nginx.root, 300_000, seed=11)
    install(nginx.url, "mlp", device=dev(), progress=False)
    p = blob_ok(e)
    p.write_bytes(p.read_bytes()[:5])
    install(nginx.url, "mlp", device=dev(), progress=False)
    blob_ok(e)


H100 = {"os": "linux", "gpus": [{"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
                                 "driver_version": "13.0", "memory_bytes": 80 << 30}],
        "backends": {"reference": "1.0.0", "nvrtc": None, "tensorrt-rtx": None}}


@pytest.fixture
def runtime_env(tmp_path: Path, monkeypatch, reference_backend):
    import refbackend
    from rtxpack.demo import models as examples

    monkeypatch.setenv("RTXPACK_DEVICE", json.dumps(H100))
    backend = reference_backend
    onnx = examples.mlp(tmp_path / "app" / "mlp.onnx")
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    ref = examples.reference_run(onnx, {"x": x})["y"]
    art = refbackend.publish(tmp_path / "repo", "mlp", onnx)
    return type("Env", (), {"repo": tmp_path / "repo", "onnx": onnx, "x": x, "ref": ref, "art": art,
                            "backend": backend})


@fault("garbage runtime-cache file persisted in the store",
       "rtxpack.load ignores it (provenance says corrupt), runs correctly, replaces it with a valid one on close")
def test_garbage_persisted_runtime_cache_ignored(runtime_env) -> None:
    import rtxpack

    with rtxpack.load("mlp", repo=runtime_env.repo) as s:
        s.run({"x": runtime_env.x})
    (f,) = Store().state_dir("runtime-caches").glob("*.rtcache")
    good = f.read_bytes()
    f.write_bytes(os.urandom(len(good)))
    with rtxpack.load("mlp", repo=runtime_env.repo) as s:
        assert "corrupt" in s.provenance.runtime_cache
        np.testing.assert_allclose(s.run({"x": runtime_env.x})["y"], runtime_env.ref, rtol=1e-5, atol=1e-6)
    assert f.read_bytes() == good


@fault("shipped runtime-cache blob replaced by garbage in the store (same size)",
       "the backend gets no usable cache (checksum), the model still runs correctly")
def test_garbage_shipped_runtime_cache_in_store_ignored(runtime_env) -> None:
    import rtxpack
    from rtxpack.farm.repo import RepositoryWriter as Repository

    garbage = b"RTXPRC01" + os.urandom(200)
    rc = cache_for(runtime_env.art, garbage, gpu_name="NVIDIA H100 80GB HBM3", cc="9.0", backend="reference",
                   backend_version=runtime_env.art.backend_version, os="linux", driver_version="13.0")
    (runtime_env.repo / rc.path).parent.mkdir(parents=True, exist_ok=True)
    (runtime_env.repo / rc.path).write_bytes(garbage)
    Repository(runtime_env.repo).add_artifacts([rc])
    with rtxpack.load("mlp", repo=runtime_env.repo) as s:
        assert s.provenance.runtime_cache.startswith(f"shipped {rc.id}")
        np.testing.assert_allclose(s.run({"x": runtime_env.x})["y"], runtime_env.ref, rtol=1e-5, atol=1e-6)
        assert s._loaded.kernel_sources["runtime-cache"] == 0


@fault("shipped runtime-cache blob on the server does not match its sha256",
       "the cache is skipped (fallback recorded), the plan still loads and runs")
def test_runtime_cache_with_wrong_bytes_skipped(runtime_env) -> None:
    import rtxpack
    from rtxpack.farm.repo import RepositoryWriter as Repository

    good = b"RTXPRC01" + os.urandom(100)
    rc = cache_for(runtime_env.art, good, gpu_name="NVIDIA H100 80GB HBM3", cc="9.0", backend="reference",
                   backend_version=runtime_env.art.backend_version, os="linux", driver_version="13.0")
    (runtime_env.repo / rc.path).parent.mkdir(parents=True, exist_ok=True)
    (runtime_env.repo / rc.path).write_bytes(os.urandom(len(good)))       # not what the manifest says
    Repository(runtime_env.repo).add_artifacts([rc])
    with rtxpack.load("mlp", repo=runtime_env.repo) as s:
        assert any(f["from"] == rc.id for f in s.provenance.fallbacks)
        np.testing.assert_allclose(s.run({"x": runtime_env.x})["y"], runtime_env.ref, rtol=1e-5, atol=1e-6)
    assert rc.sha256 not in entry_shas()


@fault("plan in the store bit-flipped, then rtxpack.load() without `cache verify`",
       "the damaged plan is detected before use (re-hash) and fetched again")
def test_bitflipped_plan_detected_at_load(runtime_env) -> None:
    import rtxpack

    with rtxpack.load("mlp", repo=runtime_env.repo) as s:
        s.run({"x": runtime_env.x})
    p = Store().blob_path(runtime_env.art.sha256)
    data = bytearray(p.read_bytes())
    import onnx
    from onnx import numpy_helper

    w = numpy_helper.to_array(onnx.load(str(runtime_env.onnx)).graph.initializer[0])
    at = bytes(data).index(np.ascontiguousarray(w).tobytes()[:64])
    data[at + 3] ^= 0x40                                # exponent byte of the first weight: a silent change
    p.write_bytes(bytes(data))
    with rtxpack.load("mlp", repo=runtime_env.repo) as s:
        out = s.run({"x": runtime_env.x})["y"]
    np.testing.assert_allclose(out, runtime_env.ref, rtol=1e-5, atol=1e-6)
    assert hashlib.sha256(p.read_bytes()).hexdigest() == runtime_env.art.sha256


# ================================================================================================
# input: manifests
# ================================================================================================
CATEGORY = "input: manifests"
@fault("tampered manifest on the server (artifact swapped, signature kept)",
       "SignatureError naming repo and keyid; exit 1; the foreign blob is never fetched; offline copy unchanged")
def test_tampered_manifest_over_http(nginx, key) -> None:
    e, _ = one_engine(nginx.root, 100_000, seed=12)
    sign_repository(nginx.root, key["key"])
    r = cli("install", "--repo", nginx.url, "--model", "mlp", "--trusted-key", str(key["pub"]), RTXPACK_DEVICE=DEVICE)
    assert r.returncode == 0, r.stderr
    evil = b"evil engine" * 1000
    ev = engine_for(evil)
    (nginx.root / ev.path).parent.mkdir(parents=True, exist_ok=True)
    (nginx.root / ev.path).write_bytes(evil)
    doc = json.loads((nginx.root / "manifest.json").read_text())
    doc["artifacts"][0].update(sha256=ev.sha256, size=ev.size, path=ev.path)
    (nginx.root / "manifest.json").write_text(json.dumps(doc))
    Store().remove(e.sha256)
    r = cli("install", "--repo", nginx.url, "--model", "mlp", "--trusted-key", str(key["pub"]), RTXPACK_DEVICE=DEVICE)
    assert r.returncode == 1 and "does not verify" in r.stderr and key["id"] in r.stderr and nginx.url in r.stderr
    assert ev.sha256 not in entry_shas() and nginx.hits("/" + ev.path) == []
    # the manifest kept for offline use is still the signed one
    r = cli("resolve", "--repo", nginx.url, "--model", "mlp", "--trusted-key", str(key["pub"]), "--json",
            RTXPACK_DEVICE=DEVICE, RTXPACK_OFFLINE="1")
    assert r.returncode == 0 and json.loads(r.stdout)["candidates"][0]["id"] == e.id


@fault("rtxpack.load() against a signed repository whose manifest was tampered with",
       "SignatureError (or, with the app's ONNX, a JIT build that records the refusal); nothing from the "
       "tampered repository is fetched or run")
def test_load_refuses_tampered_repository(runtime_env, key) -> None:
    import rtxpack

    sign_repository(runtime_env.repo, key["key"])
    with rtxpack.load("mlp", repo=runtime_env.repo, trusted_keys=[key["pub"]]) as s:
        assert s.provenance.path == "repository"
    Store().remove(runtime_env.art.sha256)
    doc = json.loads((runtime_env.repo / "manifest.json").read_text())
    doc["artifacts"][0]["compute_capabilities"] = ["9.0"]
    (runtime_env.repo / "manifest.json").write_text(json.dumps(doc))
    try:
        with rtxpack.load("mlp", repo=runtime_env.repo, trusted_keys=[key["pub"]], onnx=runtime_env.onnx) as s:
            assert s.provenance.path.startswith("jit")
            assert any("does not verify" in f["reason"] for f in s.provenance.fallbacks)
    except SignatureError as e:
        assert "does not verify" in str(e)
    assert runtime_env.art.sha256 not in entry_shas()


@fault("expired signed manifest", "SignatureError 'expired' with the re-sign fix; exit 1; nothing fetched")
def test_expired_manifest_refused(nginx, key) -> None:
    e, _ = one_engine(nginx.root, 10_000, seed=13)
    past = datetime.now(timezone.utc) - timedelta(days=10)
    m = sign_manifest(Manifest.load(nginx.root), load_private_key(key["key"]), expires_in_days=3, now=past)
    m.save(nginx.root)
    r = cli("install", "--repo", nginx.url, "--model", "mlp", "--trusted-key", str(key["pub"]), RTXPACK_DEVICE=DEVICE)
    assert r.returncode == 1 and "expired" in r.stderr and "rtxpack sign" in r.stderr
    assert entry_shas() == set() and nginx.hits("/" + e.path) == []


@fault("rollback: server serves an older, validly signed manifest",
       "SignatureError 'rollback' naming both versions; exit 1; accepted version unchanged")
def test_rollback_refused(nginx, key) -> None:
    one_engine(nginx.root, 10_000, seed=14)
    sign_repository(nginx.root, key["key"])                       # v2
    old = (nginx.root / "manifest.json").read_bytes()
    sign_repository(nginx.root, key["key"])                       # v3
    args = ("install", "--repo", nginx.url, "--model", "mlp", "--trusted-key", str(key["pub"]))
    assert cli(*args, RTXPACK_DEVICE=DEVICE).returncode == 0
    (nginx.root / "manifest.json").write_bytes(old)
    r = cli(*args, RTXPACK_DEVICE=DEVICE)
    assert r.returncode == 1 and "rollback" in r.stderr and "version 2" in r.stderr and "version 3" in r.stderr
    assert trust.accepted_version(key["id"]) == 3


@fault("unsigned repository with require_signed", "SignatureError telling how to pin a key; exit 1")
def test_unsigned_with_require_signed_refused(nginx) -> None:
    one_engine(nginx.root, 10_000, seed=15)
    r = cli("install", "--repo", nginx.url, "--model", "mlp", RTXPACK_DEVICE=DEVICE, RTXPACK_REQUIRE_SIGNED="1")
    assert r.returncode == 1 and "--trusted-key" in r.stderr and entry_shas() == set()


@fault("manifest declaring an absurd artifact size", "ManifestError naming the entry; nothing fetched")
@pytest.mark.parametrize("size", [1 << 60, -1, "12"])
def test_absurd_artifact_size_refused(tmp_path: Path, size) -> None:
    e, _ = one_engine(tmp_path / "repo", 1000, seed=16)
    edit_first_artifact(tmp_path / "repo", size=size)
    with pytest.raises(ManifestError) as ei:
        open_repository(tmp_path / "repo")
    assert e.id in str(ei.value) and "size" in str(ei.value)


@fault("plausible but huge artifact size (512 GiB) on a small disk",
       "StoreError 'not enough disk space' before any byte is requested; exit 1")
def test_huge_artifact_refused_before_download(nginx) -> None:
    e, data = one_engine(nginx.root, 1000, seed=17)
    big = replace(e, size=512 << 30)
    Manifest(artifacts=(big,)).save(nginx.root)
    r = cli("install", "--repo", nginx.url, "--model", "mlp", RTXPACK_DEVICE=DEVICE)
    assert r.returncode == 1 and "not enough disk space" in r.stderr, r.stderr
    assert nginx.hits("/" + e.path) == [] and entry_shas() == set()


@fault("manifest larger than the 64 MiB limit", "refused after reading at most limit+1 bytes; ManifestError/"
       "FetchError naming the limit")
def test_oversized_manifest_refused(faultserver) -> None:
    faultserver.files["/manifest.json"] = b" " * (MAX_MANIFEST_BYTES + 1)
    with pytest.raises((ManifestError, FetchError)) as ei:
        open_repository(faultserver.url)
    assert str(MAX_MANIFEST_BYTES) in str(ei.value) or "limit" in str(ei.value)


@fault("deeply nested JSON manifest", "ManifestError (depth limit or invalid JSON), no RecursionError escapes")
@pytest.mark.parametrize("depth", [40, 200_000])
def test_deeply_nested_manifest_refused(faultserver, depth: int) -> None:
    body = ('{"schema":"rtxpack-manifest","schema_version":1,"version":1,"artifacts":[],"project":{"a":'
            + "[" * depth + "]" * depth + "}}")
    faultserver.files["/manifest.json"] = body.encode()
    with pytest.raises(ManifestError) as ei:
        open_repository(faultserver.url)
    assert "nested deeper" in str(ei.value) or "not valid JSON" in str(ei.value)


# ================================================================================================
# input: hostile bundles
# ================================================================================================
CATEGORY = "input: bundles"
def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], gz: bool = False) -> Path:
    with tarfile.open(path, "w:gz" if gz else "w", format=tarfile.PAX_FORMAT) as t:
        for info, data in members:
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    return ti, data


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.linkname = linkname
    if kind == tarfile.CHRTYPE:
        ti.devmajor, ti.devminor = 1, 3
    return ti, None


def _pax_renamed(name: str, pax_path: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    """A member whose ustar name looks harmless but whose PAX 'path' record (which wins) escapes."""
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.pax_headers = {"path": pax_path}
    return ti, data


@pytest.fixture
def bundle_parts(tmp_path: Path):
    data = data_of(5000, seed=20)
    e = engine_for(data)
    raw = Manifest(artifacts=(e,)).to_json().encode()
    return e, data, raw


def _hostile(case: str, e, data: bytes, raw: bytes, tmp_path: Path) -> tuple[list, str]:
    """(members, the member name the error must name) for one hostile bundle."""
    m = _file("manifest.json", raw)
    evil = str(tmp_path / "evil")
    return {
        "absolute path": ([m, _file(evil, b"x")], evil),
        "'..' path": ([m, _file("blobs/../../evil", b"x")], "blobs/../../evil"),
        "symlink": ([m, _special(e.path, tarfile.SYMTYPE, "/etc/passwd")], e.path),
        "hard link": ([m, _special(e.path, tarfile.LNKTYPE, "manifest.json")], e.path),
        "device file": ([m, _special("blobs/dev", tarfile.CHRTYPE)], "blobs/dev"),
        "fifo": ([m, _special("blobs/fifo", tarfile.FIFOTYPE)], "blobs/fifo"),
        "directory": ([m, _special("blobs", tarfile.DIRTYPE)], "blobs"),
        "member larger than declared": ([m, _file(e.path, data + b"more")], e.path),
        "member not in the manifest": ([m, _file(e.path, data), _file("blobs/extra", b"x")], "blobs/extra"),
        "duplicate member": ([m, _file(e.path, data), _file(e.path, data)], e.path),
        "pax header renaming a member to '../..'": ([m, _pax_renamed(e.path, "../../evil", data)], "../../evil"),
        "manifest over the size limit": ([_file("manifest.json", b" " * (MAX_MANIFEST_BYTES + 1))], "manifest.json"),
    }[case]


HOSTILE = ["absolute path", "'..' path", "pax header renaming a member to '../..'", "symlink", "hard link", "device file", "fifo", "directory",
           "member larger than declared", "member not in the manifest", "duplicate member",
           "manifest over the size limit"]


@fault("hostile bundle entry", "BundleError naming the member; nothing written anywhere; store unchanged")
@pytest.mark.parametrize("case,gz", [(c, False) for c in HOSTILE]
                         + [(c, True) for c in ("'..' path", "symlink", "member larger than declared")],
                         ids=[c for c in HOSTILE] + [f"{c} (tar.gz)" for c in ("'..' path", "symlink",
                                                                                 "member larger than declared")])
def test_hostile_bundle_refused(tmp_path: Path, bundle_parts, case: str, gz: bool) -> None:
    e, data, raw = bundle_parts
    members, name = _hostile(case, e, data, raw, tmp_path)
    b = _tar(tmp_path / ("hostile.tar.gz" if gz else "hostile.tar"), members, gz=gz)
    from rtxpack.installer.bundle import bundle_source, extract_bundle

    for attempt in (lambda: open_repository(b), lambda: extract_bundle(b, tmp_path / "out"),
                    lambda: bundle_source(b)):
        with pytest.raises(BundleError) as ei:
            attempt()
        assert repr(name) in str(ei.value) or name in str(ei.value), str(ei.value)
    assert not (tmp_path / "evil").exists() and not Path("/etc/evil").exists()
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").rglob("*")) == []
    assert entry_shas() == set()
    r = cli("install", "--repo", str(b), "--model", "mlp", RTXPACK_DEVICE=DEVICE)
    assert r.returncode == 1 and "fix:" in r.stderr and "Traceback" not in r.stderr


@fault("bundle member with the declared size but other bytes",
       "ChecksumMismatch on install; nothing stored")
def test_bundle_member_wrong_bytes(tmp_path: Path, bundle_parts) -> None:
    e, data, raw = bundle_parts
    b = _tar(tmp_path / "b.tar", [_file("manifest.json", raw), _file(e.path, bytes(len(data)))])
    with pytest.raises(FetchError):
        install(str(b), "mlp", device=dev(), progress=False)
    assert entry_shas() == set()


@fault("bundle manifest goes through the signature verifier",
       "signed bundle with pinned key installs; tampered -> SignatureError; wrong key -> refused; "
       "unsigned + require_signed -> refused")
def test_bundle_manifest_is_verified(tmp_path: Path, bundle_parts, key) -> None:
    e, data, _ = bundle_parts
    signed = sign_manifest(Manifest(artifacts=(e,)), load_private_key(key["key"]))
    good = _tar(tmp_path / "good.tar", [_file("manifest.json", signed.to_json().encode()), _file(e.path, data)])
    res = install(str(good), "mlp", device=dev(), progress=False, trusted_keys=[key["pub"]])
    assert res.files and blob_ok(e)
    Store().remove(e.sha256)

    doc = json.loads(signed.to_json())
    doc["name"] = "tampered"
    bad = _tar(tmp_path / "bad.tar", [_file("manifest.json", json.dumps(doc).encode()), _file(e.path, data)])
    with pytest.raises(SignatureError, match="does not verify"):
        open_repository(bad, trusted_keys=[key["pub"]])
    other = keygen(tmp_path / "other")
    with pytest.raises(SignatureError, match="none of which is trusted"):
        open_repository(good, trusted_keys=[other[1]])
    unsigned = _tar(tmp_path / "unsigned.tar", [_file("manifest.json", Manifest(artifacts=(e,)).to_json().encode()),
                                                _file(e.path, data)])
    with pytest.raises(SignatureError, match="required"):
        open_repository(unsigned, require_signed=True)
    assert entry_shas() == set()


@fault("bundle made by `rtxpack bundle` from a signed repository, installed with the key pinned",
       "installs (the bundle carries a manifest the publisher's key verifies)")
def test_bundle_of_signed_repository_verifies(tmp_path: Path, key) -> None:
    from rtxpack.farm.bundle import create_bundle

    e, _ = one_engine(tmp_path / "repo", 5000, seed=21)
    sign_repository(tmp_path / "repo", key["key"])
    create_bundle(tmp_path / "repo", tmp_path / "b.tar")
    install(str(tmp_path / "b.tar"), "mlp", device=dev(), progress=False, trusted_keys=[key["pub"]])
    blob_ok(e)
