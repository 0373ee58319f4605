"""Offline bundles: selection (models, CCs, OS, caches follow their engine) and safe reading."""
from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from rtxpack.farm.bundle import create_bundle
from rtxpack.installer.bundle import bundle_source, extract_bundle, install_from_bundle, open_bundle
from rtxpack.core.errors import BundleError, ChecksumMismatch
from rtxpack.core.manifest import Artifact, Manifest, artifact_id, blob_relpath
from rtxpack.installer.store import Store

D = "d" * 64


def art(repo: Path, data: bytes, *, model: str = "m", kind: str = "engine", ccs=("8.9",), os_=None, engine=None,
        **kw) -> Artifact:  # type: ignore[no-untyped-def]
    sha = hashlib.sha256(data).hexdigest()
    p = repo / blob_relpath(sha)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    extra = {"gpu_name": "RTX 4090", "engine": engine} if kind == "runtime-cache" else {}
    return Artifact(id=artifact_id(kind, model, sha), kind=kind, model=model, model_digest=D, weights_digest=D,
                    backend="tensorrt-rtx", backend_version="1.7.1.116", compute_capabilities=tuple(ccs), size=len(data),
                    sha256=sha, path=blob_relpath(sha), os=os_, **extra, **kw)


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, dict[str, Artifact]]:
    r = tmp_path / "repo"
    e1 = art(r, b"vtrt-portable" * 100, ccs=("8.6", "8.9", "12.0"))
    e2 = art(r, b"vtrt-turing" * 50, ccs=("7.5",))
    e3 = art(r, b"vtrt-win" * 70, ccs=("12.0",), os_="windows")
    e4 = art(r, b"other-model" * 30, model="n")
    c1 = art(r, b"cache-for-portable", kind="runtime-cache", ccs=("8.9",), engine=e1.sha256)
    c2 = art(r, b"cache-for-turing", kind="runtime-cache", ccs=("8.9",), engine=e2.sha256)
    arts = {"portable": e1, "turing": e2, "win": e3, "n": e4, "c1": c1, "c2": c2}
    Manifest(artifacts=tuple(arts.values())).save(r)
    return r, arts


def test_selection_and_round_trip(repo, tmp_path: Path) -> None:
    r, a = repo
    res = create_bundle(r, tmp_path / "b.tar", models=["m"], compute_capabilities=["8.9"], os="linux")
    assert sorted(res["ids"]) == sorted([a["portable"].id, a["c1"].id])  # c2's engine is not selected: dropped
    m, reader = open_bundle(tmp_path / "b.tar")
    with reader:
        assert {x.id for x in m} == set(res["ids"])
    out = extract_bundle(tmp_path / "b.tar", tmp_path / "x")
    assert Manifest.load(tmp_path / "x") == out
    assert (tmp_path / "x" / a["portable"].path).read_bytes() == (r / a["portable"].path).read_bytes()
    # windows selection keeps the windows-only engine and the any-OS ones
    res = create_bundle(r, tmp_path / "w.tar.gz", compute_capabilities=["12.0"], os="windows")
    assert res["compressed"] and a["win"].id in res["ids"] and a["portable"].id in res["ids"]
    with pytest.raises(BundleError, match="no model named"):
        create_bundle(r, tmp_path / "z.tar", models=["zzz"])
    with pytest.raises(BundleError, match="no artifact matches"):
        create_bundle(r, tmp_path / "z.tar", compute_capabilities=["9.0"])


def test_install_from_bundle_into_store_and_bundle_source(repo, tmp_path: Path) -> None:
    r, a = repo
    create_bundle(r, tmp_path / "b.tar.gz", models=["m"])
    store = Store(tmp_path / "store")
    p = install_from_bundle(tmp_path / "b.tar.gz", a["turing"], store=store)
    assert p.read_bytes() == (r / a["turing"].path).read_bytes() and store.has(a["turing"].sha256)
    d = bundle_source(tmp_path / "b.tar.gz", store=store)
    assert Manifest.load(d).by_id(a["portable"].id).sha256 == a["portable"].sha256
    assert bundle_source(tmp_path / "b.tar.gz", store=store) == d  # reused


def test_corrupt_blob_is_refused_when_creating(repo, tmp_path: Path) -> None:
    r, a = repo
    blob = r / a["portable"].path
    blob.write_bytes(b"X" * a["portable"].size)
    with pytest.raises(ChecksumMismatch):
        create_bundle(r, tmp_path / "b.tar", models=["m"])
    assert not (tmp_path / "b.tar").exists()


# ---- hostile bundles ---------------------------------------------------------------------------
def _manifest_for(*entries: tuple[str, bytes], declared: dict[str, int] | None = None) -> bytes:
    arts = []
    for path_data in entries:
        name, data = path_data
        sha = hashlib.sha256(data).hexdigest()
        size = (declared or {}).get(name, len(data))
        arts.append(Artifact(id=f"m/engine/{sha[:16]}", kind="engine", model="m", model_digest=D, weights_digest=D,
                             backend="tensorrt-rtx", backend_version="1.7.1.116", compute_capabilities=("8.9",),
                             size=size, sha256=sha, path=blob_relpath(sha)))
    return Manifest(artifacts=tuple(arts)).to_json().encode()


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w") as t:
        for ti, data in members:
            t.addfile(ti, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    return ti, data


GOOD = b"vtrt" + b"\0" * 200


def _hostile(tmp_path: Path, kind: str) -> Path:
    good_path = blob_relpath(hashlib.sha256(GOOD).hexdigest())
    manifest = _manifest_for((good_path, GOOD))
    members = [_file("manifest.json", manifest)]
    if kind == "absolute":
        members.append(_file("/etc/evil", b"x"))
    elif kind == "dotdot":
        members.append(_file("blobs/../../evil", b"x"))
    elif kind in ("symlink", "hardlink"):
        ti = tarfile.TarInfo(good_path)
        ti.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
        ti.linkname = "/etc/passwd"
        members.append((ti, None))
    elif kind in ("device", "fifo"):
        ti = tarfile.TarInfo(good_path)
        ti.type = tarfile.CHRTYPE if kind == "device" else tarfile.FIFOTYPE
        members.append((ti, None))
    elif kind == "unlisted":
        members += [_file(good_path, GOOD), _file("blobs/sha256/ab/" + "ab" * 32, b"surprise")]
    elif kind == "larger":
        members = [_file("manifest.json", _manifest_for((good_path, GOOD), declared={good_path: 10})),
                   _file(good_path, GOOD)]
    elif kind == "duplicate":
        members += [_file(good_path, GOOD), _file(good_path, GOOD)]
    elif kind == "no-manifest":
        members = [_file(good_path, GOOD)]
    return _tar(tmp_path / f"{kind}.tar", members)


@pytest.mark.parametrize("kind,words", [
    ("absolute", "absolute path"), ("dotdot", "'..'"), ("symlink", "symbolic link"), ("hardlink", "hard link"),
    ("device", "device file"), ("fifo", "fifo"), ("unlisted", "not listed"), ("larger", "larger than"),
    ("duplicate", "twice"), ("no-manifest", "no manifest.json"),
])
def test_hostile_bundles_are_refused_before_writing(tmp_path: Path, kind: str, words: str) -> None:
    path = _hostile(tmp_path, kind)
    dest = tmp_path / "dest"
    with pytest.raises(BundleError) as ei:
        extract_bundle(path, dest)
    assert words in str(ei.value) and str(path) in str(ei.value)
    assert not dest.exists()
    with pytest.raises(BundleError):
        open_bundle(path)


def test_member_with_wrong_bytes_is_refused(tmp_path: Path) -> None:
    good_path = blob_relpath(hashlib.sha256(GOOD).hexdigest())
    bad = b"vtrt" + b"\1" * 200
    path = _tar(tmp_path / "t.tar", [_file("manifest.json", _manifest_for((good_path, GOOD))), _file(good_path, bad)])
    with pytest.raises(ChecksumMismatch):
        extract_bundle(path, tmp_path / "dest")
    assert not (tmp_path / "dest" / good_path).exists()
