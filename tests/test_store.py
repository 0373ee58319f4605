"""The local store: atomic, verified writes; LRU prune; verify; locks; sizes."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections import namedtuple
from pathlib import Path

import pytest

from rtxpack.core.errors import ChecksumMismatch, ConfigError, StoreError
from rtxpack.installer.store import Store, parse_size


ROOT = Path(__file__).resolve().parent.parent


def child_env() -> dict[str, str]:
    """The test's environment for a child Python, with this checkout importable."""
    env = os.environ.copy()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_default_root_follows_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTXPACK_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert Store().root == tmp_path / "elsewhere"
    monkeypatch.delenv("RTXPACK_CACHE_DIR")
    assert Store().root.name == "rtxpack"  # platformdirs' user cache dir


def test_add_bytes_layout_has_get(tmp_path: Path) -> None:
    store = Store()
    data = b"engine bytes" * 1000
    path = store.add_bytes(data, meta={"kind": "plan", "model": "mlp"})
    s = sha(data)
    assert path == store.root / "blobs" / "sha256" / s[:2] / s
    assert path.read_bytes() == data
    assert store.has(s) and store.has(s, len(data)) and not store.has(s, len(data) + 1)
    assert store.get(s) == path
    assert store.get("0" * 64) is None and not store.has("0" * 64)
    (entry,) = store.entries()
    assert (entry.sha256, entry.size, entry.path) == (s, len(data), path)
    assert entry.meta == {"kind": "plan", "model": "mlp"}
    # adding the same bytes again is a no-op that returns the same path
    assert store.add_bytes(data) == path and len(store.entries()) == 1


def test_add_bytes_with_wrong_sha_installs_nothing() -> None:
    store = Store()
    with pytest.raises(ChecksumMismatch) as info:
        store.add_bytes(b"abc", sha256=sha(b"abd"))
    assert info.value.expected_sha256 == sha(b"abd") and info.value.actual_sha256 == sha(b"abc")
    assert store.entries() == [] and not store.has(sha(b"abd"))
    assert list((store.root / "tmp").iterdir()) == []


def test_add_file_copy_and_move(tmp_path: Path) -> None:
    store = Store()
    src = tmp_path / "model.plan"
    src.write_bytes(b"A" * 3000)
    p = store.add_file(src)
    assert src.exists() and p.read_bytes() == b"A" * 3000
    src2 = tmp_path / "other.plan"
    src2.write_bytes(b"B" * 3000)
    p2 = store.add_file(src2, sha256=sha(b"B" * 3000), move=True)
    assert not src2.exists() and p2.read_bytes() == b"B" * 3000
    src3 = tmp_path / "bad.plan"
    src3.write_bytes(b"C" * 10)
    with pytest.raises(ChecksumMismatch):
        store.add_file(src3, sha256=sha(b"D" * 10))
    assert src3.exists()  # a failed copy never consumes the source
    assert {e.sha256 for e in store.entries()} == {sha(b"A" * 3000), sha(b"B" * 3000)}


def test_commit_temp_checks_size_and_digest() -> None:
    store = Store()
    data = os.urandom(10_000)
    s = sha(data)
    tmp = store.tmp_dir / "t1"
    tmp.write_bytes(data[:-1])
    with pytest.raises(ChecksumMismatch) as info:
        store.commit_temp(tmp, s, len(data))
    assert info.value.expected_size == len(data) and info.value.actual_size == len(data) - 1
    assert not tmp.exists() and not store.has(s)

    tmp = store.tmp_dir / "t2"
    tmp.write_bytes(bytes([data[0] ^ 1]) + data[1:])
    with pytest.raises(ChecksumMismatch) as info:
        store.commit_temp(tmp, s, len(data))
    assert info.value.actual_sha256 != s and not tmp.exists() and not store.has(s)

    tmp = store.tmp_dir / "t3"
    tmp.write_bytes(data)
    assert store.commit_temp(tmp, s, len(data)).read_bytes() == data
    assert not tmp.exists()


def test_temp_files_are_unique_and_partial_path_is_stable() -> None:
    store = Store()
    s = "ab" * 32
    with store.new_blob(s) as a, store.new_blob(s) as b:
        assert a.tmp != b.tmp and a.tmp.parent == b.tmp.parent == store.root / "tmp"
    assert store.partial_path(s) == store.partial_path(s) == store.root / "tmp" / f"{s}.partial"


def test_half_written_temp_file_is_never_an_entry() -> None:
    """A writer killed mid-way leaves only a temp file: entries(), has(), get() never see it."""
    store = Store()
    data = os.urandom(50_000)
    s = sha(data)
    code = textwrap.dedent(f"""
        import os, sys
        from rtxpack.installer.store import Store
        store = Store()
        f = store.new_blob({s!r})
        f.write(bytes(20_000))
        with open(store.partial_path({s!r}), "wb") as p:
            p.write(bytes(1000))
        os._exit(9)   # killed before commit_blob
    """)
    proc = subprocess.run([sys.executable, "-c", code], env=child_env())
    assert proc.returncode == 9
    leftovers = list((store.root / "tmp").iterdir())
    assert len(leftovers) == 2
    assert store.entries() == [] and not store.has(s) and store.get(s) is None
    assert not (store.root / "blobs").exists() or not any((store.root / "blobs").rglob("*.*"))


def test_bad_sha_is_config_error() -> None:
    with pytest.raises(ConfigError, match="sha256"):
        Store().blob_path("../../etc/passwd")
    with pytest.raises(ConfigError):
        Store().state_dir("../x")


def test_state_dir() -> None:
    store = Store()
    d = store.state_dir("runtime-caches")
    assert d.is_dir() and d == store.root / "state" / "runtime-caches"
    (d / "k").write_bytes(b"x")
    assert store.entries() == []


def test_verify_detects_and_removes_corrupt_blob() -> None:
    store = Store()
    good = store.add_bytes(b"good" * 100)
    bad = store.add_bytes(b"bad!" * 100)
    with open(bad, "r+b") as f:
        f.write(b"X")
    results = store.verify()
    by_sha = {r.entry.sha256: r for r in results}
    assert by_sha[sha(b"good" * 100)].ok is True
    r = by_sha[sha(b"bad!" * 100)]
    entry, ok, reason = r
    assert ok is False and "sha256" in reason and entry.path == bad
    assert not bad.exists() and good.exists()
    assert [e.sha256 for e in store.entries()] == [sha(b"good" * 100)]
    assert all(r.ok for r in store.verify())


def test_prune_removes_least_recently_used_first() -> None:
    store = Store()
    blobs = {name: store.add_bytes(name.encode() * 1000) for name in ("a", "b", "c", "d")}
    now = time.time()
    # last use: d oldest, then b, a, c newest
    for age, name in ((400, "d"), (300, "b"), (200, "a"), (100, "c")):
        os.utime(blobs[name], (now - age, now - age))
    store.get(sha(b"d" * 1000))  # using d makes it the newest
    removed = store.prune(2000)
    assert [e.sha256 for e in removed] == [sha(b"b" * 1000), sha(b"a" * 1000)]
    assert {e.sha256 for e in store.entries()} == {sha(b"c" * 1000), sha(b"d" * 1000)}
    assert store.total_size() == 2000
    assert store.prune("1M") == []


def test_prune_never_removes_a_locked_blob() -> None:
    store = Store()
    old = store.add_bytes(b"old" * 1000)
    new = store.add_bytes(b"new" * 1000)
    os.utime(old, (1, 1))
    with store.lock(sha(b"old" * 1000)):
        removed = store.prune(0)
    assert [e.path for e in removed] == [new]
    assert old.exists()
    assert [e.path for e in store.prune(0)] == [old]


def test_lock_excludes_other_processes() -> None:
    store = Store()
    s = "cd" * 32
    code = f"from rtxpack.installer.store import Store; from rtxpack.core.lockfile import LockTimeout; import sys\n" \
           f"l = Store().lock({s!r})\n" \
           f"try:\n    l.acquire(timeout=0.2); sys.exit(0)\nexcept LockTimeout:\n    sys.exit(3)\n"
    with store.lock(s):
        assert subprocess.run([sys.executable, "-c", code], env=child_env()).returncode == 3
    assert subprocess.run([sys.executable, "-c", code], env=child_env()).returncode == 0


def test_free_space_is_checked_before_writing(monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store()
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 100, 100))
    with pytest.raises(StoreError) as info:
        store.add_bytes(b"x" * 1000)
    err = info.value
    assert err.needed_bytes == 1000 and err.free_bytes == 100
    assert "1000 bytes needed" in str(err) and "prune" in str(err) and "RTXPACK_CACHE_DIR" in str(err)
    assert store.entries() == []


@pytest.mark.parametrize(
    "text,expected",
    [("1024", 1024), ("0", 0), ("500M", 500 << 20), ("2GiB", 2 << 30), ("2gib", 2 << 30), ("10GB", 10 * 10**9),
     ("1.5G", 3 << 29), ("64 KiB", 65536), ("7B", 7), (4096, 4096)],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("junk", ["", "abc", "12XB", "-5", "1.2.3G", "G", "5 G B", -1])
def test_parse_size_rejects_junk(junk: object) -> None:
    with pytest.raises(ConfigError):
        parse_size(junk)  # type: ignore[arg-type]
