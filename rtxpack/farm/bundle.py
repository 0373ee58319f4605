"""Writing offline bundles: one tar (plain or gzip) holding a manifest and the blobs it lists.

Layout inside the archive (no directory entries)::

    manifest.json                  only the selected artifacts (same schema as a repository)
    blobs/sha256/ab/abcdef...      each listed artifact, at its manifest ``path``

Installers read bundles defensively with :mod:`rtxpack.installer.bundle`.
"""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path
from typing import IO, Any, Sequence

from ..core.errors import BundleError, ChecksumMismatch
from ..core.fsutil import AtomicFile
from ..core.manifest import MANIFEST_NAME, Artifact, Manifest, utcnow_iso
from ..core.versions import format_cc, parse_cc


# ---- writing -----------------------------------------------------------------------------------
def _selected(m: Manifest, models: Sequence[str] | None, ccs: Sequence[str] | None, os_: str | None) -> list[Artifact]:
    want = {format_cc(parse_cc(c)) for c in ccs} if ccs else None

    def cc_ok(a: Artifact) -> bool:
        if want is None or not a.compute_capabilities:
            return True
        if want & set(a.compute_capabilities):
            return True
        # a PTX plan also runs on newer GPUs than it lists
        return a.ptx and any(parse_cc(w) > min(a.ccs) for w in want)

    base = [a for a in m if (not models or a.model in models) and (os_ is None or a.os in (None, os_)) and cc_ok(a)]
    engines = {a.sha256 for a in base if a.kind == "engine"}
    # caches belong to an engine: without their engine they are useless, so they are dropped
    return [a for a in base if a.kind not in ("runtime-cache", "timing-cache") or (a.engine in engines)]


class _HashingReader(io.RawIOBase):
    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.h, self.n = f, hashlib.sha256(), 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        self.h.update(data)
        self.n += len(data)
        return data


def create_bundle(repo: str | os.PathLike[str], output: str | os.PathLike[str], *, models: Sequence[str] | None = None,
                  compute_capabilities: Sequence[str] | None = None, os: str | None = None,
                  compress: bool | None = None) -> dict[str, Any]:
    """Write an offline bundle of the matching artifacts of the directory repository ``repo``.

    ``compress``: gzip (None: when ``output`` ends in .gz/.tgz). Every blob is verified against
    its sha256 while it is written; the bundle appears at ``output`` only when complete.
    """
    src = Path(repo)
    m = Manifest.load(src)
    if models:
        unknown = sorted(set(models) - set(m.models()))
        if unknown:
            raise BundleError(f"{src}: no model named {', '.join(unknown)} (models: {', '.join(m.models())})",
                              fix="pass --model with one of the repository's models", repo=str(src))
    chosen = _selected(m, models, compute_capabilities, os)
    if not chosen:
        raise BundleError(f"{src}: no artifact matches the selection (models={models}, cc={compute_capabilities}, os={os})",
                          fix="widen --model/--cc/--os", repo=str(src))
    out = Path(output)
    if compress is None:
        compress = out.name.endswith((".gz", ".tgz"))
    sub = Manifest(artifacts=tuple(sorted(chosen, key=lambda a: a.id)), name=f"{m.name} (bundle)", version=m.version,
                   created=utcnow_iso(), project=m.project)
    if m.signatures:
        # a signed repository's manifest goes in unchanged, so installers verify the publisher's
        # signature; the bundle holds a subset of its artifacts (see bundle_member_paths)
        raw = (src / MANIFEST_NAME).read_bytes()
    else:
        raw = sub.to_json().encode()
    out.parent.mkdir(parents=True, exist_ok=True)
    total = 0
    with AtomicFile(out, mode=0o644) as f:
        with tarfile.open(fileobj=f, mode="w:gz" if compress else "w", format=tarfile.PAX_FORMAT) as tar:
            _add(tar, MANIFEST_NAME, io.BytesIO(raw), len(raw))
            for a in sub:
                blob = src / a.path
                try:
                    size = blob.stat().st_size
                except FileNotFoundError as e:
                    raise BundleError(f"{src}: artifact {a.id} names {a.path}, which is missing",
                                      fix="rebuild or re-merge the repository", repo=str(src), member=a.path) from e
                if size != a.size:
                    raise ChecksumMismatch(f"{blob}: {size} bytes, the manifest says {a.size}",
                                           fix="rebuild the repository; the blob is corrupt", path=str(blob))
                with open(blob, "rb") as bf:
                    hr = _HashingReader(bf)
                    _add(tar, a.path, hr, size)
                if hr.h.hexdigest() != a.sha256:
                    raise ChecksumMismatch(f"{blob}: sha256 {hr.h.hexdigest()} but the manifest says {a.sha256}",
                                           fix="rebuild the repository; the blob is corrupt", path=str(blob))
                total += size
        f.commit()
    return {"path": str(out), "artifacts": len(sub), "bytes": total, "compressed": bool(compress),
            "models": sub.models(), "ids": [a.id for a in sub]}


def _add(tar: tarfile.TarFile, name: str, f: IO[bytes], size: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    info.uname = info.gname = ""
    tar.addfile(info, f)


