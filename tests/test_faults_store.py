"""The fault suite, part 2: the cache folder itself is hostile, read-only or full.

1. Nothing outside the store: real symbolic links, hard links, fifos, directories and stray files
   are planted in a real cache folder (at temp and partial-download files, metadata, locks, blob
   fan-out folders, state folders); a canary folder outside the cache must come out untouched,
   and ``rtxpack cache verify`` / ``prune`` must report and heal what does not belong.
2. Read-only and full: a real tmpfs remounted read-only, another user's folder (``setpriv`` to
   nobody), and a real 2 MiB tmpfs that fills up (blob, metadata, trust state, runtime cache,
   digest cache).

Each test carries ``@fault(name, expected, category)`` for docs/RELIABILITY.md
(``python scripts/fault_report.py``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from fault_helpers import H100, ROOT, child_env, cli, device, fault, one_engine
from rtxpack.core.errors import StoreError
from rtxpack.core.fsutil import AtomicFile
from rtxpack.farm.sign import keygen, sign_repository
from rtxpack.installer.fetch import fetch_artifact
from rtxpack.installer.pipeline import install
from rtxpack.installer.store import Store

DEVICE = "8.9"
C1 = "1. nothing outside the store"
C2 = "2. read-only and full"




def cache_dir() -> Path:
    return Path(os.environ["RTXPACK_CACHE_DIR"])


def ok_blob(store: Store, art) -> Path:
    p = store.blob_path(art.sha256)
    assert p.is_file() and not p.is_symlink(), p
    assert hashlib.sha256(p.read_bytes()).hexdigest() == art.sha256
    return p


def no_temp_left(store: Store) -> None:
    tmp = store.root / "tmp"
    assert not tmp.exists() or [p.name for p in tmp.iterdir() if not p.name.endswith(".partial")] == []


def plant(kind: str, at: Path, canary) -> None:
    """Put a hostile thing at ``at``: a link to the canary file or folder, a hard link, a fifo, a directory."""
    at.parent.mkdir(parents=True, exist_ok=True)
    if kind == "symlink":
        at.symlink_to(canary.file)
    elif kind == "dir-symlink":
        at.symlink_to(canary.dir, target_is_directory=True)
    elif kind == "hardlink":
        os.link(canary.file, at)
    elif kind == "fifo":
        os.mkfifo(at)
    elif kind == "directory":
        at.mkdir()
        (at / "inside").write_text("x")
    else:
        raise AssertionError(kind)


@pytest.fixture
def signed_key(tmp_path: Path):
    return keygen(tmp_path / "keys")


# ================================================================================================
# 1. nothing outside the store
# ================================================================================================
@fault("planted thing at the resumable download's name (tmp/<sha256>.partial)",
       "never followed, truncated or appended to: removed, the download starts over and is verified; "
       "the canary outside the cache is untouched", C1)
@pytest.mark.parametrize("kind", ["symlink", "hardlink", "fifo", "directory"])
def test_planted_partial(faultserver, tmp_path: Path, canary, kind: str) -> None:
    store, e = _fetch_with_planted(faultserver, tmp_path, canary, kind, lambda st, e: st.partial_path(e.sha256))
    assert not store.partial_path(e.sha256).exists()


def _fetch_with_planted(faultserver, tmp_path: Path, canary, kind: str, where) -> tuple[Store, object]:
    """Plant ``kind`` at ``where(store, artifact)``, fetch over HTTP: verified, canary untouched."""
    e, data = one_engine(tmp_path / "repo", 300_000, seed=1)
    faultserver.files["/" + e.path] = data
    store = Store()
    plant(kind, where(store, e), canary)
    assert fetch_artifact(e, repo=faultserver.url, store=store, progress=False) == ok_blob(store, e)
    canary.assert_untouched()
    return store, e


@fault("planted link at the partial download's info file (tmp/<sha256>.partial.json), with a partial to resume",
       "the info file is read without following links (a fifo never blocks) and replaced, never written through; "
       "canary untouched", C1)
@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_planted_partial_info(faultserver, tmp_path: Path, canary, kind: str) -> None:
    e, data = one_engine(tmp_path / "repo", 300_000, seed=2)
    faultserver.files["/" + e.path] = data
    store = Store()
    partial = store.partial_path(e.sha256)
    partial.write_bytes(data[:1000])
    plant(kind, partial.with_name(partial.name + ".json"), canary)
    fetch_artifact(e, repo=faultserver.url, store=store, progress=False)
    ok_blob(store, e)
    canary.assert_untouched()
    assert faultserver.hits("/" + e.path)[0].range == "bytes=1000-"     # the partial was resumed


@fault("planted thing at a blob's lock file (locks/<sha256>.lock)",
       "the lock is opened O_NOFOLLOW without O_TRUNC; a link, fifo or directory there is removed and a lock file "
       "made; install succeeds; canary untouched", C1)
@pytest.mark.parametrize("kind", ["symlink", "hardlink", "fifo", "directory"])
def test_planted_lock(faultserver, tmp_path: Path, canary, kind: str) -> None:
    _fetch_with_planted(faultserver, tmp_path, canary, kind, lambda st, e: st.root / "locks" / f"{e.sha256}.lock")


@fault("planted link at a state file's lock, the rollback state's folder, the digest cache and a runtime cache",
       "nothing is written through any of them: load() with a signed repository and the app's ONNX runs; canary "
       "untouched", C1)
def test_planted_state_links(tmp_path: Path, canary, reference_backend, monkeypatch, signed_key) -> None:
    import refbackend
    import rtxpack
    from rtxpack.demo import models as examples

    monkeypatch.setenv("RTXPACK_DEVICE", json.dumps(H100))
    onnx = examples.mlp(tmp_path / "app" / "mlp.onnx")
    art = refbackend.publish(tmp_path / "repo", "mlp", onnx)
    sign_repository(tmp_path / "repo", signed_key[0])
    state = cache_dir() / "state"
    plant("symlink", state / "digests.json", canary)
    plant("symlink", state / "digests.json.lock", canary)
    plant("dir-symlink", state / "trust", canary)
    x = np.ones((2, 64), np.float32)
    with pytest.raises(StoreError, match="not a directory"):           # the rollback state cannot be kept
        rtxpack.load("mlp", repo=tmp_path / "repo", onnx=onnx, trusted_keys=[signed_key[1]])
    canary.assert_untouched()
    assert Store().heal()                                              # `cache verify` removes the links
    with rtxpack.load("mlp", repo=tmp_path / "repo", onnx=onnx, trusted_keys=[signed_key[1]]) as s:
        s.run({"x": x})
    # now plant a link at the persisted runtime cache and its lock: the next close replaces, never writes through
    rc = next((Store().root / "state" / "runtime-caches").glob("*.rtcache"))
    for p in (rc, rc.with_name(rc.name + ".lock")):
        p.unlink()
        plant("symlink", p, canary)
    with rtxpack.load("mlp", repo=tmp_path / "repo", onnx=onnx, trusted_keys=[signed_key[1]]) as s:
        assert "symbolic link" in s.provenance.runtime_cache
        s.run({"x": x})
    assert not rc.is_symlink() and rc.read_bytes().startswith(b"RTXPRC01")
    assert Store().has(art.sha256)
    canary.assert_untouched()


@fault("store folder replaced by a link to a folder outside the cache (tmp/, locks/, blobs/sha256/ab/, meta/.../ab/, "
       "state/manifests/)",
       "nothing is written into the outside folder; a write there is one clear StoreError naming the link (exit 1); "
       "`cache verify` removes the link and the next install works", C1)
@pytest.mark.parametrize("where", ["tmp", "locks", "fanout", "meta-fanout", "state/manifests"])
def test_linked_store_folder(nginx, canary, where: str) -> None:
    e, data = one_engine(nginx.root, 80_000, seed=4)
    store = Store()
    target = {"tmp": store.root / "tmp", "locks": store.root / "locks",
              "fanout": store.root / "blobs" / "sha256" / e.sha256[:2],
              "meta-fanout": store.root / "meta" / "sha256" / e.sha256[:2],
              "state/manifests": store.root / "state" / "manifests"}[where]
    if where == "fanout":       # the outside folder even holds the right bytes: still never an entry
        (canary.dir / e.sha256).write_bytes(data)
        canary._before = canary.snapshot()
    plant("dir-symlink", target, canary)
    assert store.entries() == [] and not store.has(e.sha256)
    assert store.remove(e.sha256) is False and store.read_blob(e.sha256, e.size) is None   # nothing removed there
    r = cli("install", "--repo", nginx.url, "--model", "mlp", RTXPACK_DEVICE=DEVICE)
    canary.assert_untouched()
    if where == "state/manifests":       # an optional copy: skipped with a warning, the install goes on
        assert r.returncode == 0, r.stderr
    else:
        assert r.returncode == 1 and "rtxpack: error:" in r.stderr and "not a directory" in r.stderr, r.stderr
        assert "cache verify" in r.stderr and "Traceback" not in r.stderr
    v = cli("cache", "verify", "--json")
    healed = json.loads(v.stdout)["healed"]
    assert [h["path"] for h in healed] == [str(target)] and healed[0]["action"] == "removed"
    assert not target.is_symlink()
    r = cli("install", "--repo", nginx.url, "--model", "mlp", RTXPACK_DEVICE=DEVICE)
    assert r.returncode == 0, r.stderr
    ok_blob(store, e)
    canary.assert_untouched()


@fault("planted link at a blob's metadata file (meta/sha256/ab/<sha256>.json)",
       "replaced atomically, never written through; `cache list` ignores what it points at; canary untouched", C1)
def test_planted_meta_link(nginx, canary) -> None:
    e, _ = one_engine(nginx.root, 20_000, seed=5)
    store = Store()
    plant("symlink", store.root / "meta" / "sha256" / e.sha256[:2] / f"{e.sha256}.json", canary)
    install(nginx.url, "mlp", device=device(), progress=False)
    ok_blob(store, e)
    assert store.meta(e.sha256)["id"] == e.id
    canary.assert_untouched()


@fault("a blob entry that is a link to a file outside the store with the right bytes",
       "never an entry (not listed, not served, never reported as installed); install fetches real bytes; "
       "`cache verify` removes the link", C1)
def test_linked_blob_is_not_an_entry(nginx, canary) -> None:
    e, data = one_engine(nginx.root, 20_000, seed=6)
    (canary.dir / "blob").write_bytes(data)
    canary._before = canary.snapshot()
    store = Store()
    link = store.blob_path(e.sha256)
    link.parent.mkdir(parents=True)
    link.symlink_to(canary.dir / "blob")
    assert store.entries() == [] and store.get(e.sha256) is None
    res = install(nginx.url, "mlp", device=device(), progress=False)
    assert res.files[0][1] == link and not link.is_symlink()
    ok_blob(store, e)
    assert len(nginx.hits("/" + e.path, at_least=1)) == 1
    canary.assert_untouched()


@fault("temp names cannot be predicted or pre-planted",
       "AtomicFile uses 64 random bits and O_CREAT|O_EXCL|O_NOFOLLOW: a link planted at the very name it draws "
       "first is skipped, never followed", C1)
def test_temp_name_is_never_followed(tmp_path: Path, canary, monkeypatch) -> None:
    import secrets

    names = iter(["feedfacefeedface", "0123456789abcdef"])
    monkeypatch.setattr(secrets, "token_hex", lambda n: next(names))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / ".x.feedfacefeedface.tmp").symlink_to(canary.file)
    with AtomicFile(tmp_path / "d" / "x") as f:
        f.write(b"new")
        f.commit()
    assert (tmp_path / "d" / "x").read_bytes() == b"new"
    canary.assert_untouched()
    monkeypatch.undo()
    a, b = AtomicFile(tmp_path / "d" / "y"), AtomicFile(tmp_path / "d" / "y")
    assert a.tmp != b.tmp and len(a.tmp.name) >= len(".y.0123456789abcdef.tmp")
    a.abort(), b.abort()


@fault("directories where files belong, stray files and garbage metadata in the store",
       "`cache list` does not crash; `cache verify` lists each (path, problem) and removes it; "
       "installs work around them", C1)
def test_strays_are_reported_and_healed(nginx, canary) -> None:
    e, _ = one_engine(nginx.root, 20_000, seed=7)
    install(nginx.url, "mlp", device=device(), progress=False)
    store = Store()
    other = "ab" * 32
    strays = {
        store.root / "blobs" / "sha256" / other[:2] / other: "directory",        # a directory at a blob's name
        store.root / "blobs" / "sha256" / e.sha256[:2] / "not-a-digest": "file",
        store.root / "blobs" / "sha256" / "zz": "file",
        store.root / "blobs" / "README": "file",
        store.root / "tmp" / "some.fifo": "fifo",
        store.root / "locks" / "d.lock": "directory",
        store.root / "state" / "trust" / "x.json": "symlink",
    }
    for p, kind in strays.items():
        if kind == "file":
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text("x")
        else:
            plant(kind, p, canary)
    meta = store.root / "meta" / "sha256" / e.sha256[:2] / f"{e.sha256}.json"
    meta.write_bytes(b"[1, 2, 3]")                                               # not an object
    orphan = store.root / "meta" / "sha256" / "cd" / f"{'cd' * 32}.json"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"\xff\xfe garbage")
    r = cli("cache", "list")
    assert r.returncode == 0 and "Traceback" not in r.stderr and e.sha256[:16] in r.stdout
    r = cli("cache", "verify", "--json")
    out = json.loads(r.stdout)
    found = {h["path"] for h in out["healed"]}
    assert found == {str(p) for p in strays} | {str(meta), str(orphan)}, found
    assert all(h["action"] == "removed" for h in out["healed"]) and r.returncode == 0
    assert out["corrupt"] == [] and out["checked"] == 1
    assert all(not os.path.lexists(p) for p in strays)
    assert json.loads(cli("cache", "verify", "--json").stdout)["healed"] == []    # healed: nothing left to find
    plant("dir-symlink", store.root / "tmp" / "planted", canary)                  # `prune` heals as well
    r = cli("cache", "prune", "--max-size", "1GiB", "--json")
    assert r.returncode == 0 and [h["path"] for h in json.loads(r.stdout)["healed"]] == [str(store.root / "tmp" / "planted")]
    canary.assert_untouched()


@fault("the locks/ folder is a file, or the lock is held by a process that never lets go",
       "one clear error naming the lock (exit 1, no traceback), bounded by RTXPACK_DOWNLOAD_DEADLINE", C1)
def test_lock_that_cannot_be_taken(nginx) -> None:
    e, _ = one_engine(nginx.root, 20_000, seed=8)
    store = Store()
    store.root.mkdir(parents=True)
    (store.root / "locks").write_text("not a folder")
    r = cli("install", "--repo", nginx.url, "--model", "mlp", RTXPACK_DEVICE=DEVICE)
    assert r.returncode == 1 and "locks is a regular file, not a directory" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    (store.root / "locks").unlink()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from rtxpack.installer.store import Store\n"
        f"l = Store().lock({e.sha256!r}); l.acquire(); print('held', flush=True); time.sleep(60)")],
        env=child_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        r = cli("install", "--repo", nginx.url, "--model", "mlp", RTXPACK_DEVICE=DEVICE,
                RTXPACK_DOWNLOAD_DEADLINE="1.5")
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode == 1 and "held by another process" in r.stderr and "RTXPACK_DOWNLOAD_DEADLINE" in r.stderr
    assert "Traceback" not in r.stderr


# ================================================================================================
# 2. read-only and full
# ================================================================================================
def _use_store(monkeypatch, path: Path) -> Store:
    monkeypatch.setenv("RTXPACK_CACHE_DIR", str(path))
    return Store(path)


@fault("read-only store (a tmpfs remounted read-only) holding a signed install",
       "install, resolve, offline resolve, `cache list` and `cache verify` succeed reporting verified bytes, without "
       "a lock or a write; a new artifact is one error naming the read-only folder (exit 1)", C2)
def test_read_only_store_serves(nginx, small_fs, monkeypatch, signed_key, tmp_path: Path) -> None:
    fs = small_fs(4 << 20)
    store = _use_store(monkeypatch, fs.path / "cache")
    e, _ = one_engine(nginx.root, 100_000, seed=10)
    sign_repository(nginx.root, signed_key[0])
    args = ("--repo", nginx.url, "--model", "mlp", "--trusted-key", str(signed_key[1]))
    assert cli("install", *args, RTXPACK_DEVICE=DEVICE).returncode == 0
    shutil.rmtree(store.root / "locks")
    fs.ro()
    try:
        r = cli("install", *args, "--json", RTXPACK_DEVICE=DEVICE)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["artifacts"][0]["verified"] is True and "Traceback" not in r.stderr
        assert cli("resolve", *args, RTXPACK_DEVICE=DEVICE).returncode == 0
        assert cli("resolve", *args, RTXPACK_DEVICE=DEVICE, RTXPACK_OFFLINE="1").returncode == 0
        assert cli("cache", "list").returncode == 0
        v = cli("cache", "verify", "--json")
        assert v.returncode == 0 and json.loads(v.stdout)["checked"] == 1, v.stdout + v.stderr
        assert not (store.root / "locks").exists()          # checks that only read took no lock
        e2, _ = one_engine(tmp_path / "other", 5000, seed=11)
        r = cli("install", "--repo", str(tmp_path / "other"), "--model", "mlp", RTXPACK_DEVICE=DEVICE)
        assert r.returncode == 1 and "read-only" in r.stderr and str(store.root) in r.stderr, r.stderr
        assert r.stderr.count("rtxpack: error:") == 1 and "Traceback" not in r.stderr
    finally:
        fs.rw()


@fault("read-only store: load() of an installed plan, and a corrupt blob found by `cache verify`",
       "load() runs (runtime cache not saved, quietly); verify reports the corrupt blob as corrupt and not removable "
       "(exit 1), never a crash", C2)
def test_read_only_store_load_and_verify(tmp_path: Path, small_fs, monkeypatch) -> None:
    fs = small_fs(8 << 20)
    store = _use_store(monkeypatch, fs.path / "cache")
    prelude = "import json, sys, pathlib, numpy as np; sys.path.insert(0, 'tests'); import refbackend; " \
              "refbackend.install(); import rtxpack; from rtxpack.demo import models as examples\n"
    setup = prelude + (f"onnx = examples.mlp({str(tmp_path / 'mlp.onnx')!r})\n"
                       f"refbackend.publish(pathlib.Path({str(tmp_path / 'repo')!r}), 'mlp', onnx)\n")
    code = prelude + (f"with rtxpack.load('mlp', repo={str(tmp_path / 'repo')!r}) as s:\n"
                      "    s.run({'x': np.ones((2, 64), np.float32)})\n"
                      "    print(json.dumps(s.provenance.to_dict(), default=str))\n")
    env = child_env(RTXPACK_DEVICE=json.dumps(H100), RTXPACK_CACHE_DIR=str(store.root))
    assert subprocess.run([sys.executable, "-c", setup], env=env, cwd=ROOT).returncode == 0
    first = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    (entry,) = store.entries()
    data = bytearray(entry.path.read_bytes())
    fs.ro()
    try:
        again = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True)
        assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr
        prov = json.loads(again.stdout.splitlines()[-1])
        assert prov["path"] == "repository" and "persisted on this machine" in prov["runtime_cache"]
    finally:
        fs.rw()
    data[-1] ^= 1
    entry.path.write_bytes(bytes(data))
    fs.ro()
    try:
        v = cli("cache", "verify", "--json")
        out = json.loads(v.stdout)
        assert v.returncode == 1 and "could not remove" in out["corrupt"][0]["reason"] and "Traceback" not in v.stderr
    finally:
        fs.rw()


def _as_nobody(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """The CLI as user nobody, able to read (CAP_DAC_READ_SEARCH) but not write root's folders."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run as another user")
    cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=+dac_read_search",
           "--ambient-caps=+dac_read_search", sys.executable, "-m", "rtxpack.cli", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)


@fault("another user's store (root's folder, used by user nobody)",
       "install of what it holds, `cache list` and `cache verify` succeed without writing; a new artifact is one "
       "error naming the folder (exit 1)", C2)
def test_another_users_store(nginx, tmp_path: Path) -> None:
    e, _ = one_engine(nginx.root, 30_000, seed=12)
    install(nginx.url, "mlp", device=device(), progress=False)
    store = Store()
    for p in [store.root, *store.root.rglob("*")]:
        if p.is_dir():
            p.chmod(0o755)
    env = child_env(RTXPACK_DEVICE=DEVICE, HOME=str(tmp_path))
    r = _as_nobody("install", "--repo", nginx.url, "--model", "mlp", "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert _as_nobody("cache", "verify", env=env).returncode == 0
    one_engine(tmp_path / "other", 4000, seed=13)
    r = _as_nobody("install", "--repo", str(tmp_path / "other"), "--model", "mlp", env=env)
    assert r.returncode == 1 and "read-only" in r.stderr and "Traceback" not in r.stderr, r.stderr


@fault("no space for the blob (2 MiB tmpfs, 3 MiB artifact)",
       "StoreError naming the store and the bytes needed before any byte is requested; nothing half-written", C2)
def test_full_disk_blob_precheck(nginx, small_fs, monkeypatch) -> None:
    fs = small_fs(2 << 20)
    store = _use_store(monkeypatch, fs.path / "cache")
    e, _ = one_engine(nginx.root, 3 << 20, seed=14)
    r = cli("install", "--repo", nginx.url, "--model", "mlp", RTXPACK_DEVICE=DEVICE)
    assert r.returncode == 1 and "not enough disk space" in r.stderr and str(3 << 20) in r.stderr, r.stderr
    assert nginx.hits("/" + e.path) == [] and store.entries() == []
    no_temp_left(store)


@fault("the disk fills up during a download (a real 2 MiB tmpfs filled by another writer mid-body)",
       "StoreError naming the partial file and the bytes needed; the partial is removed (frees the space); no entry; "
       "a rerun after freeing space succeeds", C2)
def test_full_disk_mid_download(faultserver, small_fs, monkeypatch, tmp_path: Path) -> None:
    fs = small_fs(2 << 20)
    store = _use_store(monkeypatch, fs.path / "cache")
    e, data = one_engine(tmp_path / "repo", 1 << 20, seed=15)
    faultserver.files["/" + e.path] = data
    faultserver.script("/" + e.path, ["gate:600000"])      # two full 256 KiB reads reach the disk first
    partial = store.partial_path(e.sha256)
    filler: list[Path] = []

    def fill_when_started() -> None:
        for _ in range(1000):
            if partial.exists() and partial.stat().st_size >= 512 << 10:
                break
            threading.Event().wait(0.01)
        filler.append(fs.fill())
        faultserver.gate.set()

    t = threading.Thread(target=fill_when_started)
    t.start()
    with pytest.raises(StoreError) as ei:
        fetch_artifact(e, repo=faultserver.url, store=store, progress=False)
    t.join()
    msg = str(ei.value)
    assert "no space" in msg and str(partial) in msg and f"{e.size} bytes needed" in msg, msg
    assert not partial.exists() and store.entries() == []
    no_temp_left(store)
    filler[0].unlink()
    faultserver.gate.clear()
    fetch_artifact(e, repo=faultserver.url, store=store, progress=False)
    ok_blob(store, e)


@fault("no space for the metadata sidecar (the blob fits, one page short for its .json)",
       "StoreError naming the metadata file and the bytes needed; no temp file left; the blob itself is complete and "
       "verified", C2)
def test_full_disk_metadata(tmp_path: Path, small_fs, monkeypatch) -> None:
    fs = small_fs(2 << 20)
    store = _use_store(monkeypatch, fs.path / "cache")
    e, _ = one_engine(tmp_path / "repo", 300_000, seed=16)
    for folder in ("tmp", "locks", f"blobs/sha256/{e.sha256[:2]}", f"meta/sha256/{e.sha256[:2]}"):
        (store.root / folder).mkdir(parents=True, exist_ok=True)
    fs.fill(leave=-(-e.size // 4096) * 4096)          # the blob's pages, no more (a directory copy writes nothing else)
    with pytest.raises(StoreError) as ei:
        install(str(tmp_path / "repo"), "mlp", device=device(), progress=False)
    msg = str(ei.value)
    assert "no space" in msg and "metadata" in msg and f"{e.sha256}.json" in msg and "bytes needed" in msg, msg
    no_temp_left(store)
    ok_blob(store, e)
    assert not (store.root / "meta" / "sha256" / e.sha256[:2] / f"{e.sha256}.json").exists()


@fault("no space for the rollback state of a newer signed manifest",
       "StoreError naming the trust state file and the bytes needed; the previous state is intact; no temp file", C2)
def test_full_disk_trust_state(nginx, small_fs, monkeypatch, signed_key) -> None:
    fs = small_fs(2 << 20)
    store = _use_store(monkeypatch, fs.path / "cache")
    one_engine(nginx.root, 10_000, seed=17)
    sign_repository(nginx.root, signed_key[0])
    install(nginx.url, "mlp", device=device(), progress=False, trusted_keys=[signed_key[1]])
    (state,) = (store.root / "state" / "trust").glob("*.json")
    before = state.read_bytes()
    sign_repository(nginx.root, signed_key[0])             # version 3
    filler = fs.fill()
    with pytest.raises(StoreError) as ei:
        install(nginx.url, "mlp", device=device(), progress=False, trusted_keys=[signed_key[1]])
    msg = str(ei.value)
    assert "no space" in msg and "rollback state" in msg and state.name in msg and "bytes needed" in msg, msg
    assert state.read_bytes() == before
    assert [p.name for p in state.parent.iterdir() if not p.name.endswith((".json", ".lock"))] == []
    filler.unlink()
    install(nginx.url, "mlp", device=device(), progress=False, trusted_keys=[signed_key[1]])
    assert json.loads(state.read_bytes())["version"] == 3


@fault("no space for the runtime cache and the digest cache while an app runs (load() on a full store)",
       "the model runs; each optional cache that cannot be saved is one warning naming it; nothing half-written", C2)
def test_full_disk_optional_caches(tmp_path: Path, small_fs, monkeypatch, reference_backend, caplog) -> None:
    import refbackend
    import rtxpack
    from rtxpack.demo import models as examples

    fs = small_fs(4 << 20)
    store = _use_store(monkeypatch, fs.path / "cache")
    monkeypatch.setenv("RTXPACK_DEVICE", json.dumps(H100))
    onnx = examples.mlp(tmp_path / "app" / "mlp.onnx")
    refbackend.publish(tmp_path / "repo", "mlp", onnx)
    with rtxpack.load("mlp", repo=tmp_path / "repo") as s:     # installs the plan (no onnx: no digest yet)
        s.run({"x": np.ones((1, 64), np.float32)})
    for p in (store.root / "state" / "runtime-caches").glob("*.rtcache"):
        p.unlink()
    fs.fill()
    caplog.set_level(logging.INFO)
    with rtxpack.load("mlp", repo=tmp_path / "repo", onnx=onnx) as s:
        out = s.run({"x": np.ones((1, 64), np.float32)})["y"]
    assert out.shape == (1, 10)
    text = caplog.text
    assert "the digest cache was not saved" in text and "no space" in text and "digests.json" in text
    assert "the runtime cache was not saved" in text and ".rtcache" in text and "bytes needed" in text
    assert list((store.root / "state" / "runtime-caches").glob("*.rtcache")) == []
    assert not (store.root / "state" / "digests.json").exists()
    leftovers = [p for p in (store.root / "state").rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
