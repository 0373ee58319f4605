"""The fault suite, part 3: stale identities, waits and reads without bound.

3. Nothing stale: ONNX files whose bytes changed while size and mtime were restored (``cp -p``
   in place, rsync's rename, tar's extraction, external data), the JIT plan cache key, and
   ``install`` re-verifying what it reports.
4. Every wait bounded: servers that trickle headers or body a byte at a time, Retry-After, held
   locks, against ``RTXPACK_DOWNLOAD_DEADLINE``.
5. Every read bounded: fifos, devices and oversized files where manifests, artifacts and runtime
   caches are expected; hostile, truncated and fuzzed bundles (hypothesis); one open per install.

Each test carries ``@fault(name, expected, category)`` for docs/RELIABILITY.md.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fault_helpers import H100, ROOT, child_env, cli, data_of, device, engine_for, fault, one_engine, write_repo
from rtxpack.core.digest import weights_digest
from rtxpack.core.errors import RtxpackError
from rtxpack.core.manifest import Manifest
from rtxpack.installer.context import InstallContext
from rtxpack.installer.fetch import FetchStats, fetch_artifact, retry_after
from rtxpack.installer.pipeline import install
from rtxpack.installer.repository import open_repository
from rtxpack.installer.store import Store

DEVICE = "8.9"
C3, C4, C5 = "3. nothing stale", "4. every wait bounded", "5. every read bounded"




# ================================================================================================
# 3. nothing stale
# ================================================================================================
def _restore(path: Path, new: Path, how: str) -> None:
    """Replace ``path``'s bytes by ``new``'s the way a copy/restore tool does, keeping size and mtime."""
    st = path.stat()
    assert new.stat().st_size == st.st_size
    if how == "cp -p (in place)":
        with open(path, "r+b") as f:
            f.write(new.read_bytes())
    elif how == "rsync (temp + rename)":
        tmp = path.with_name(".rsync.tmp")
        tmp.write_bytes(new.read_bytes())
        os.replace(tmp, path)
    elif how == "tar -x":
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as t:
            ti = t.gettarinfo(str(new), arcname=path.name)
            ti.mtime = st.st_mtime
            with open(new, "rb") as f:
                t.addfile(ti, f)
        buf.seek(0)
        path.unlink()
        with tarfile.open(fileobj=buf) as t:
            t.extractall(path.parent, filter="data")
    else:
        raise AssertionError(how)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


@fault("the app's ONNX replaced by other weights with the same size and mtime",
       "the next start's weights digest is the new one (a stripped plan for the old weights is no longer chosen)", C3)
@pytest.mark.parametrize("how", ["cp -p (in place)", "rsync (temp + rename)", "tar -x"])
def test_restored_onnx_is_not_stale(tmp_path: Path, how: str, reference_backend, monkeypatch) -> None:
    import refbackend
    from rtxpack.demo import models as examples
    from rtxpack.installer.pipeline import prepare

    monkeypatch.setenv("RTXPACK_DEVICE", json.dumps(H100))
    onnx = examples.mlp(tmp_path / "app" / "mlp.onnx", seed=1)
    other = examples.mlp(tmp_path / "other" / "mlp.onnx", seed=2)
    refbackend.publish(tmp_path / "repo", "mlp", onnx, stripped=True)
    first = prepare(InstallContext.create(), tmp_path / "repo", "mlp", onnx=onnx)
    assert first.resolution.best.artifact is not None and first.resolution.best.artifact.stripped
    _restore(onnx, other, how)
    again = prepare(InstallContext.create(), tmp_path / "repo", "mlp", onnx=onnx)   # a new process's view
    assert again.weights_digest == weights_digest(other) != first.weights_digest
    assert again.resolution.best.artifact is None                                    # JIT, not the stale plan


@fault("external-data weights file changed with the same size and mtime (the .onnx untouched)",
       "the weights digest changes", C3)
def test_external_data_change_is_seen(tmp_path: Path) -> None:
    import onnx
    from rtxpack.demo import models as examples

    def external(src: Path, dest: Path) -> Path:
        m = onnx.load(str(src))
        onnx.save_model(m, str(dest), save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin",
                        size_threshold=0)
        return dest

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = external(examples.mlp(tmp_path / "a0.onnx", seed=1), tmp_path / "a" / "m.onnx")
    b = external(examples.mlp(tmp_path / "b0.onnx", seed=2), tmp_path / "b" / "m.onnx")
    d1 = InstallContext.create().weights_digest(a)
    _restore(tmp_path / "a" / "w.bin", tmp_path / "b" / "w.bin", "cp -p (in place)")
    assert InstallContext.create().weights_digest(a) == weights_digest(b) != d1


@fault("identity forged equal (no change time: Windows, or a filesystem that keeps none)",
       "weak identity: the full bytes are hashed on every start, so a one-byte change anywhere is seen; strong "
       "identity: the sampled fingerprint sees a change in a sampled block", C3)
def test_forged_identity_is_caught_by_content(tmp_path: Path, monkeypatch) -> None:
    from rtxpack.core import digest_cache
    from rtxpack.demo import models as examples

    monkeypatch.setattr(digest_cache, "identity", lambda st: [0, 0, st.st_size, 0, 0])
    path = examples.mlp(tmp_path / "m.onnx", hidden=(512, 256), seed=1)    # ~660 KB: sampled, not hashed whole
    size = path.stat().st_size
    step = (size - digest_cache._SAMPLE) / (digest_cache._SAMPLES - 1)
    between = int(9.5 * step)                          # a weight byte between two sampled blocks
    sampled = int(10 * step) + 101                     # a weight byte inside the 11th sampled block
    monkeypatch.setattr(digest_cache, "STRONG_IDENTITY", False)
    d1 = InstallContext.create().weights_digest(path)
    data = bytearray(path.read_bytes())
    data[between] ^= 0x01
    path.write_bytes(bytes(data))
    assert InstallContext.create().weights_digest(path) == weights_digest(path) != d1
    monkeypatch.setattr(digest_cache, "STRONG_IDENTITY", True)
    d2 = InstallContext.create().weights_digest(path)
    data[sampled] ^= 0x01
    path.write_bytes(bytes(data))
    assert InstallContext.create().weights_digest(path) == weights_digest(path) != d2


@fault("JIT plan cached for an ONNX that is then replaced (same size and mtime)",
       "the JIT plan cache misses: a new plan is built from the new bytes and runs them", C3)
def test_jit_cache_key_follows_the_bytes(tmp_path: Path, reference_backend, monkeypatch) -> None:
    import rtxpack
    from rtxpack.demo import models as examples

    monkeypatch.setenv("RTXPACK_DEVICE", json.dumps(H100))
    onnx = examples.mlp(tmp_path / "app" / "mlp.onnx", seed=1)
    other = examples.mlp(tmp_path / "other" / "mlp.onnx", seed=2)
    x = np.ones((2, 64), np.float32)
    with rtxpack.load("mlp", onnx=onnx) as s:
        assert s.provenance.path == "jit-build"
    with rtxpack.load("mlp", onnx=onnx) as s:
        assert s.provenance.path == "jit-cached"
    _restore(onnx, other, "cp -p (in place)")
    with rtxpack.load("mlp", onnx=onnx) as s:
        assert s.provenance.path == "jit-build"
        np.testing.assert_allclose(s.run({"x": x})["y"], examples.reference_run(other, {"x": x})["y"], rtol=1e-5)


@fault("a store entry damaged since it was installed (same size, one bit), then `rtxpack install` again",
       "install re-hashes the stored copy, fetches it again and reports it verified in this run", C3)
@pytest.mark.parametrize("source", ["http", "bundle"])
def test_install_reverifies_stored_copy(nginx, tmp_path: Path, source: str) -> None:
    from rtxpack.farm.bundle import create_bundle

    e, _ = one_engine(nginx.root, 200_000, seed=30)
    repo = nginx.url
    if source == "bundle":
        create_bundle(nginx.root, tmp_path / "b.tar")
        repo = str(tmp_path / "b.tar")
    install(repo, "mlp", device=device(), progress=False)
    p = Store().blob_path(e.sha256)
    data = bytearray(p.read_bytes())
    data[1234] ^= 0x10
    p.write_bytes(bytes(data))
    r = cli("install", "--repo", repo, "--model", "mlp", "--json", RTXPACK_DEVICE=DEVICE)
    assert r.returncode == 0, r.stderr
    art = json.loads(r.stdout)["artifacts"][0]
    assert art["verified"] is True and art["path"] == str(p)
    assert hashlib.sha256(p.read_bytes()).hexdigest() == e.sha256
    if source == "http":
        assert len(nginx.hits("/" + e.path, at_least=2)) == 2


@fault("an extracted bundle (bundle_source) whose file is replaced by another with the same size and mtime",
       "extracted again (the key includes inode and change time), never the stale copy", C3)
def test_bundle_source_not_stale(tmp_path: Path) -> None:
    from rtxpack.farm.bundle import create_bundle
    from rtxpack.installer.bundle import bundle_source

    a, _ = one_engine(tmp_path / "ra", 3000, seed=31)
    b, _ = one_engine(tmp_path / "rb", 3000, seed=32)
    create_bundle(tmp_path / "ra", tmp_path / "a.tar")
    create_bundle(tmp_path / "rb", tmp_path / "b.tar")
    d1 = bundle_source(tmp_path / "a.tar")
    assert Manifest.load(d1).artifacts[0].sha256 == a.sha256
    _restore(tmp_path / "a.tar", tmp_path / "b.tar", "cp -p (in place)")
    d2 = bundle_source(tmp_path / "a.tar")
    assert Manifest.load(d2).artifacts[0].sha256 == b.sha256


# ================================================================================================
# 4. every wait bounded
# ================================================================================================
@fault("a server that trickles the status line and headers one byte per 0.2 s",
       "install ends by RTXPACK_DOWNLOAD_DEADLINE (2 s here; the read timeout never fires): exit 1 naming the "
       "deadline and its variable", C4)
@pytest.mark.parametrize("where", ["manifest", "artifact"])
def test_trickled_headers_end_by_the_deadline(faultserver, tmp_path: Path, where: str) -> None:
    e, data = one_engine(tmp_path / "repo", 50_000, seed=40)
    for p in (tmp_path / "repo").rglob("*"):
        if p.is_file():
            faultserver.files["/" + p.relative_to(tmp_path / "repo").as_posix()] = p.read_bytes()
    faultserver.script("/manifest.json" if where == "manifest" else "/" + e.path, ["trickle-headers:0.2"] * 10)
    t0 = time.monotonic()
    r = cli("install", "--repo", faultserver.url, "--model", "mlp", timeout=60, RTXPACK_DEVICE=DEVICE,
            RTXPACK_DOWNLOAD_DEADLINE="2", RTXPACK_READ_TIMEOUT="1", RTXPACK_RETRIES="5")
    elapsed = time.monotonic() - t0
    assert r.returncode == 1 and "RTXPACK_DOWNLOAD_DEADLINE" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert elapsed < 15, elapsed                    # unbounded, it would run for the server's whole life
    assert Store().entries() == []


@fault("a server that sends the body one byte per 0.2 s (artifact, and load() of it)",
       "install and load() end by RTXPACK_DOWNLOAD_DEADLINE with an error naming it; nothing installed", C4)
def test_trickled_body_ends_by_the_deadline(faultserver, tmp_path: Path, monkeypatch) -> None:
    import rtxpack

    e, data = one_engine(tmp_path / "repo", 50_000, seed=41)
    faultserver.files["/manifest.json"] = (tmp_path / "repo" / "manifest.json").read_bytes()
    faultserver.files["/" + e.path] = data
    faultserver.default = "trickle:0.2"
    faultserver.script("/manifest.json", ["ok"] * 10)
    t0 = time.monotonic()
    r = cli("install", "--repo", faultserver.url, "--model", "mlp", timeout=60, RTXPACK_DEVICE=DEVICE,
            RTXPACK_DOWNLOAD_DEADLINE="2", RTXPACK_READ_TIMEOUT="1")
    assert r.returncode == 1 and "RTXPACK_DOWNLOAD_DEADLINE" in r.stderr, r.stderr
    assert time.monotonic() - t0 < 15
    monkeypatch.setenv("RTXPACK_DOWNLOAD_DEADLINE", "1.5")
    monkeypatch.setenv("RTXPACK_DEVICE", DEVICE)
    t0 = time.monotonic()
    with pytest.raises(RtxpackError) as ei:
        rtxpack.load("mlp", repo=faultserver.url)
    assert "RTXPACK_DOWNLOAD_DEADLINE" in str(ei.value) and time.monotonic() - t0 < 10
    assert Store().entries() == []


@fault("an https server that trickles its TLS handshake (a record header, then one byte per 0.2 s)",
       "each handshake ends by the connect timeout (CPython bounds a whole handshake), the retries by "
       "RTXPACK_DOWNLOAD_DEADLINE: one error naming it", C4)
def test_trickled_tls_handshake(monkeypatch) -> None:
    import socket
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=trickle, args=(conn,), daemon=True).start()

    def trickle(conn: socket.socket) -> None:
        try:
            conn.recv(4096)                                    # the ClientHello
            conn.sendall(b"\x16\x03\x03\x3e\x80")              # a handshake record of 16000 bytes...
            while not stop.wait(0.2):
                conn.sendall(b"\x00")                          # ...that never ends
        except OSError:
            pass
        finally:
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    monkeypatch.setenv("RTXPACK_DOWNLOAD_DEADLINE", "2")
    monkeypatch.setenv("RTXPACK_READ_TIMEOUT", "1")
    monkeypatch.setenv("RTXPACK_CONNECT_TIMEOUT", "1")
    t0 = time.monotonic()
    try:
        with pytest.raises(RtxpackError, match="RTXPACK_DOWNLOAD_DEADLINE"):
            open_repository(f"https://127.0.0.1:{srv.getsockname()[1]}/repo")
    finally:
        stop.set()
        srv.close()
    assert time.monotonic() - t0 < 15


@fault("429/503 with Retry-After (seconds, or an HTTP date), within and beyond the deadline",
       "within: waited as asked, then fetched; beyond what is left of the deadline: one error at once naming "
       "Retry-After and RTXPACK_DOWNLOAD_DEADLINE, no sleep", C4)
def test_retry_after_is_honoured_up_to_the_deadline(faultserver, tmp_path: Path, monkeypatch) -> None:
    e, data = one_engine(tmp_path / "repo", 20_000, seed=42)
    faultserver.files["/" + e.path] = data
    when = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=3), usegmt=True)
    faultserver.script("/" + e.path, ["retry-after:503:1", f"retry-after:429:{when}"])
    stats = FetchStats()
    t0 = time.monotonic()
    fetch_artifact(e, repo=faultserver.url, stats=stats, progress=False)
    assert time.monotonic() - t0 >= 1.9 and stats.retries == 2       # RTXPACK_RETRY_BACKOFF is 0.01 s in tests
    Store().remove(e.sha256)
    monkeypatch.setenv("RTXPACK_DOWNLOAD_DEADLINE", "5")
    faultserver.script("/" + e.path, ["retry-after:503:3600"])
    t0 = time.monotonic()
    with pytest.raises(RtxpackError) as ei:
        fetch_artifact(e, repo=faultserver.url, progress=False)
    assert time.monotonic() - t0 < 3
    assert "retry after 3600 s" in str(ei.value) and "RTXPACK_DOWNLOAD_DEADLINE" in str(ei.value)
    assert retry_after("120") == 120 and retry_after("garbage") is None and retry_after(None) is None
    assert retry_after(format_datetime(datetime(2000, 1, 1, tzinfo=timezone.utc), usegmt=True)) == 0


# ================================================================================================
# 5. every read bounded
# ================================================================================================
@fault("a directory repository's manifest.json is a fifo, a link to /dev/zero, or a sparse 8 GiB file",
       "refused without reading it (never blocks, never reads past the 64 MiB limit): exit 1 naming the file", C5)
@pytest.mark.parametrize("kind", ["fifo", "device", "huge"])
def test_manifest_that_is_not_a_small_file(tmp_path: Path, kind: str) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    m = repo / "manifest.json"
    if kind == "fifo":
        os.mkfifo(m)
    elif kind == "device":
        m.symlink_to("/dev/zero")
    else:
        with open(m, "wb") as f:
            f.truncate(8 << 30)
    r = cli("resolve", "--repo", str(repo), "--model", "mlp", timeout=30, RTXPACK_DEVICE=DEVICE)
    assert r.returncode == 1 and "refused without reading it" in r.stderr and str(m) in r.stderr, r.stderr
    assert ("fifo" if kind == "fifo" else "character device" if kind == "device" else "limit") in r.stderr


@fault("an artifact of a directory repository that is a fifo, or a link to /dev/zero declared as 0 bytes",
       "refused without reading (a copy never reads past the declared size): exit 1, nothing installed", C5)
@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_local_artifact_that_is_not_a_file(tmp_path: Path, kind: str) -> None:
    data = b"" if kind == "device" else data_of(1000, 43)
    e = engine_for(data)
    write_repo(tmp_path / "repo", [(e, data)])
    blob = tmp_path / "repo" / e.path
    blob.unlink()
    os.mkfifo(blob) if kind == "fifo" else blob.symlink_to("/dev/zero")
    r = cli("install", "--repo", str(tmp_path / "repo"), "--model", "mlp", timeout=30, RTXPACK_DEVICE=DEVICE)
    assert r.returncode == 1 and ("fifo" in r.stderr or "character device" in r.stderr), r.stderr
    assert Store().entries() == []


@fault("a 6 GiB persisted runtime cache (sparse) while the app runs under a 3 GiB address-space limit",
       "ignored without being read (provenance says so); load() runs; replaced by a valid cache on close", C5)
def test_huge_runtime_cache_is_not_read(tmp_path: Path, reference_backend) -> None:
    import refbackend
    from rtxpack.demo import models as examples

    onnx = examples.mlp(tmp_path / "mlp.onnx")
    refbackend.publish(tmp_path / "repo", "mlp", onnx)
    code = ("import json, sys, resource, numpy as np; sys.path.insert(0, 'tests'); import refbackend; "
            "refbackend.install(); import rtxpack\n"
            "if len(sys.argv) > 1: resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
            f"with rtxpack.load('mlp', repo={str(tmp_path / 'repo')!r}) as s:\n"
            "    s.run({'x': np.ones((2, 64), np.float32)})\n"
            "    print(json.dumps(s.provenance.runtime_cache))\n")
    env = child_env(RTXPACK_DEVICE=json.dumps(H100))
    first = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    (rc,) = (Store().root / "state" / "runtime-caches").glob("*.rtcache")
    with open(rc, "r+b") as f:
        f.truncate(6 << 30)
    r = subprocess.run([sys.executable, "-c", code, "limit"], env=env, cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "MemoryError" not in r.stderr, r.stderr[-2000:]
    assert "ignored without reading it" in json.loads(r.stdout.splitlines()[-1])
    assert rc.stat().st_size < 1 << 20 and rc.read_bytes().startswith(b"RTXPRC01")


# ---- bundles ------------------------------------------------------------------------------------
def _tar_bytes(members: list[tuple[str, bytes]], gz: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w", format=tarfile.PAX_FORMAT) as t:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def _bundle_parts(n: int = 5000, seed: int = 50):
    data = data_of(n, seed)
    e = engine_for(data)
    return e, data, Manifest(artifacts=(e,)).to_json().encode()


@fault("a .tar.gz bundle whose member inflates far beyond what the manifest declares (gzip bomb: 256 MiB of zeros)",
       "refused from the member's header before its bytes are inflated: BundleError naming it, at once", C5)
def test_gzip_bomb_member(tmp_path: Path) -> None:
    e, data, raw = _bundle_parts()
    path = tmp_path / "bomb.tar.gz"
    with tarfile.open(path, "w:gz", compresslevel=1) as t:
        ti = tarfile.TarInfo("manifest.json")
        ti.size = len(raw)
        t.addfile(ti, io.BytesIO(raw))
        ti = tarfile.TarInfo(e.path)
        ti.size = 256 << 20
        t.addfile(ti, io.BytesIO(bytes(256 << 20)))
    t0 = time.process_time()
    with pytest.raises(RtxpackError, match="larger than the 5000 declared"):
        open_repository(path)
    assert time.process_time() - t0 < 0.5                 # inflating 256 MiB would take longer than this


@fault("a PAX header of 100 MiB (before or after the manifest) inside a .tar.gz bundle",
       "the archive stream is capped at the manifest + declared bytes + header slack: BundleError, the header is "
       "never buffered whole", C5)
@pytest.mark.parametrize("where", ["before the manifest", "after the manifest"])
def test_pax_header_bomb(tmp_path: Path, where: str) -> None:
    e, data, raw = _bundle_parts()
    huge = tarfile.TarInfo(e.path if where == "after the manifest" else "manifest.json")
    huge.pax_headers = {"comment": "x" * (100 << 20)}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        if where == "after the manifest":
            ti = tarfile.TarInfo("manifest.json")
            ti.size = len(raw)
            t.addfile(ti, io.BytesIO(raw))
            huge.size = len(data)
            t.addfile(huge, io.BytesIO(data))
        else:
            huge.size = len(raw)
            t.addfile(huge, io.BytesIO(raw))
    (tmp_path / "b.tar.gz").write_bytes(gzip.compress(buf.getvalue(), 1))
    with pytest.raises(RtxpackError, match="more bytes than its manifest declares|malformed"):
        open_repository(tmp_path / "b.tar.gz")


@fault("a plain .tar bundle whose member header claims more bytes than the file holds (lying size header)",
       "BundleError naming the member before anything is read or written", C5)
def test_lying_size_header(tmp_path: Path) -> None:
    e, data, raw = _bundle_parts()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name, body in (("manifest.json", raw), (e.path, data)):
            ti = tarfile.TarInfo(name)
            ti.size = len(body)
            t.addfile(ti, io.BytesIO(body))
    blob = bytearray(buf.getvalue())
    second = 512 + (len(raw) + 511) // 512 * 512
    assert blob[second:second + 20] == e.path.encode()[:20]
    blob[second + 124:second + 136] = b"%011o\0" % ((4 << 30) + 4999)     # the size field now claims 4 GiB more
    checksum = sum(blob[second:second + 148]) + 8 * 32 + sum(blob[second + 156:second + 512])
    blob[second + 148:second + 156] = b"%06o\0 " % checksum
    (tmp_path / "lie.tar").write_bytes(bytes(blob))
    with pytest.raises(RtxpackError, match="past the end of the file|larger than"):
        open_repository(tmp_path / "lie.tar")
    assert Store().entries() == []


@fault("a bundle with 20,000 members",
       "refused at the first member the manifest does not list; member count is bounded by the manifest", C5)
def test_many_members(tmp_path: Path) -> None:
    e, data, raw = _bundle_parts()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        ti = tarfile.TarInfo("manifest.json")
        ti.size = len(raw)
        t.addfile(ti, io.BytesIO(raw))
        for i in range(20_000):
            t.addfile(tarfile.TarInfo(f"blobs/x{i}"))
    (tmp_path / "many.tar").write_bytes(buf.getvalue())
    t0 = time.process_time()
    with pytest.raises(RtxpackError, match="not listed"):
        open_repository(tmp_path / "many.tar")
    assert time.process_time() - t0 < 0.5


def _valid_bundle(gz: bool) -> tuple[bytes, object]:
    e, data, raw = _bundle_parts(3000, seed=51)
    return _tar_bytes([("manifest.json", raw), (e.path, data)], gz=gz), e


@fault("truncated or bit-flipped bundles, .tar and .tar.gz (hypothesis, 300 cases each)",
       "every case is either installed with verified bytes or refused with one rtxpack error; never another "
       "exception, never wrong bytes in the store", C5)
@pytest.mark.parametrize("gz", [False, True], ids=["tar", "tar.gz"])
def test_fuzzed_bundles(tmp_path_factory, gz: bool) -> None:
    good, e = _valid_bundle(gz)

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(cut=st.integers(0, len(good)), flips=st.lists(st.tuples(st.integers(0, len(good) - 1),
                                                                    st.integers(1, 255)), max_size=4))
    def run(cut: int, flips: list[tuple[int, int]]) -> None:
        blob = bytearray(good)
        for at, x in flips:
            blob[at] ^= x
        blob = blob[:cut] if cut < len(good) else blob
        d = tmp_path_factory.mktemp("fz")
        (d / "b").write_bytes(bytes(blob))
        store = Store(d / "store")
        try:
            res = install(str(d / "b"), "mlp", device=device(), progress=False, store=store)
        except RtxpackError:
            assert store.entries() == []
            return
        (_, p), = res.files
        assert hashlib.sha256(p.read_bytes()).hexdigest() == e.sha256

    run()


@fault("one install from a bundle", "the bundle file is opened once (read by one reader for manifest and blobs)",
       C5)
def test_bundle_opened_once(tmp_path: Path) -> None:
    from rtxpack.farm.bundle import create_bundle

    one_engine(tmp_path / "repo", 4000, seed=52)
    create_bundle(tmp_path / "repo", tmp_path / "b.tar.gz")
    target = str(tmp_path / "b.tar.gz")
    opens: list[str] = []

    def hook(event: str, args: tuple) -> None:
        if event == "open" and args and str(args[0]) == target:
            opens.append(event)

    sys.addaudithook(hook)
    install(target, "mlp", device=device(), progress=False)
    assert len(opens) == 1, opens
    opens.clear()
    install(target, "mlp", device=device(), progress=False)     # from the store now: the bundle is still read once
    assert len(opens) == 1, opens
