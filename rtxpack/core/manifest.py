"""Manifest v1: the JSON index of a repository's artifacts.

A repository is a static directory (or its copy on any HTTP server / CDN)::

    manifest.json                      this document (optionally signed, see ``trust``)
    blobs/sha256/ab/abcdef...          content-addressed artifacts

The JSON Schema lives in ``manifests/manifest-v1.schema.json`` (a copy ships inside the package).
``Manifest.from_json`` checks the schema *and* the rules a schema cannot say well (relative
paths without ``..``, unique ids, digests that look like digests), and every error names the
entry and the problem.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from . import registry
from .errors import ManifestError
from .fsutil import UnsafeFile, atomic_write, read_regular
from .location import relpath_problem
from .versions import parse_cc

SCHEMA_ID = "rtxpack-manifest"
SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
MAX_MANIFEST_BYTES = 64 << 20          # a manifest larger than this is refused before parsing
MAX_ARTIFACT_SIZE = 1 << 40            # 1 TiB: anything larger is an absurd size, refused
MAX_JSON_DEPTH = 32

KINDS = ("engine", "runtime-cache", "timing-cache", "weights", "onnx")
OS_FAMILIES = ("linux", "windows")
_SHA = re.compile(r"^[0-9a-f]{64}$")
_CC = re.compile(r"^\d{1,2}\.\d$")
_VERSION = re.compile(r"^\d+(\.\d+)*$")


@dataclass(frozen=True)
class Artifact:
    """One file in a repository and everything that decides where it may be used."""

    id: str
    kind: str
    model: str
    model_digest: str
    weights_digest: str
    backend: str
    backend_version: str
    compute_capabilities: tuple[str, ...]
    size: int
    sha256: str
    path: str
    ptx: bool = False                      # also runs on GPUs newer than the listed CCs (PTX JIT)
    os: str | None = None                  # "linux" | "windows" | None (any)
    min_driver_version: str | None = None  # CUDA driver API version, e.g. "13.0"
    gpu_name: str | None = None            # runtime caches: the exact GPU they were made on
    driver_version: str | None = None      # runtime caches: driver they were made with
    precision: str = "fp32"
    stripped: bool = False
    cuda: str | None = None                # CUDA major of the toolchain, e.g. "13"
    engine: str | None = None              # caches: sha256 of the engine they belong to
    cell: str | None = None                # farm cell digest that produced it
    profiles: Mapping[str, Any] | None = None
    mirrors: tuple[str, ...] = ()
    extra: Mapping[str, Any] | None = None

    # ---- derived -----------------------------------------------------------------------------
    @property
    def ccs(self) -> tuple[tuple[int, int], ...]:
        return tuple(parse_cc(c) for c in self.compute_capabilities)

    @property
    def portable(self) -> bool:
        return len(self.compute_capabilities) > 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["compute_capabilities"] = list(self.compute_capabilities)
        d["mirrors"] = list(self.mirrors)
        if self.profiles is not None:
            d["profiles"] = dict(self.profiles)
        # omit empty optional fields: a shorter manifest and a stable digest
        return {k: v for k, v in d.items() if v is not None and v != [] and not (k == "extra" and not v)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, where: str = "artifact") -> "Artifact":
        if not isinstance(d, Mapping):
            raise ManifestError(f"{where}: not a JSON object", fix="see manifests/manifest-v1.schema.json", artifact=where)
        unknown = set(d) - _ARTIFACT_FIELDS
        if unknown:
            raise ManifestError(f"{where}: unknown field(s) {sorted(unknown)}",
                                fix="remove them or upgrade rtxpack", artifact=where)
        kw = dict(d)
        kw["compute_capabilities"] = tuple(kw.get("compute_capabilities", ()))
        kw["mirrors"] = tuple(kw.get("mirrors", ()))
        try:
            art = cls(**kw)
        except TypeError as e:
            raise ManifestError(f"{where}: {e}", fix="see manifests/manifest-v1.schema.json", artifact=where) from e
        validate_artifact(art, where=where)
        return art


_ARTIFACT_FIELDS = frozenset(f.name for f in fields(Artifact))


def validate_relpath(path: str, *, where: str) -> None:
    """A repository path must be relative, POSIX, stay inside the repository and name the same file
    on every OS and server (see :func:`rtxpack.core.location.relpath_problem`)."""
    problem = relpath_problem(path)
    if problem is not None:
        raise ManifestError(f"{where}: path {path!r} {problem}",
                            fix="artifact paths are plain relative paths such as blobs/sha256/ab/abcd...",
                            artifact=where, path=str(path))


_STR, _OPT_STR = (str,), (str, type(None))
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "id": _STR, "kind": _STR, "model": _STR, "model_digest": _STR, "weights_digest": _STR, "backend": _STR,
    "backend_version": _STR, "compute_capabilities": (tuple,), "size": (int,), "sha256": _STR, "path": _STR,
    "ptx": (bool,), "os": _OPT_STR, "min_driver_version": _OPT_STR, "gpu_name": _OPT_STR, "driver_version": _OPT_STR,
    "precision": _STR, "stripped": (bool,), "cuda": _OPT_STR, "engine": _OPT_STR, "cell": _OPT_STR,
    "profiles": (dict, type(None)), "mirrors": (tuple,), "extra": (dict, type(None)),
}
PRECISIONS = ("fp32", "fp16", "bf16", "fp8", "fp4", "int8", "int4")


def validate_artifact(a: Artifact, *, where: str) -> None:
    """The schema's per-entry rules, in code (jsonschema costs ~200 us an entry; this ~5 us)."""
    def bad(problem: str, fix: str = "see manifests/manifest-v1.schema.json") -> ManifestError:
        return ManifestError(f"{where} ({a.id or '?'}): {problem}", fix=fix, artifact=a.id or where)

    for name, types in _FIELD_TYPES.items():
        value = getattr(a, name)
        if not isinstance(value, types) or (types == (int,) and isinstance(value, bool)):
            raise bad(f"{name} {value!r} has the wrong type (expected {' or '.join(t.__name__ for t in types)})")
    if not a.id or len(a.id) > 512 or not a.model or len(a.model) > 256:
        raise bad("id and model must be non-empty (id <= 512, model <= 256 characters)")
    if any(ord(c) < 0x20 or 0x7f <= ord(c) < 0xa0 for c in a.id + a.model):
        raise bad("id and model must not contain control characters")
    if not registry.known(a.backend):
        raise bad(f"backend {a.backend!r} is not one of {', '.join(registry.names())}")
    if a.precision not in PRECISIONS:
        raise bad(f"precision {a.precision!r} is not one of {', '.join(PRECISIONS)}")
    if len(a.mirrors) > 16 or len(a.compute_capabilities) > 32:
        raise bad("too many mirrors (16 at most) or compute capabilities (32 at most)")

    if a.kind not in KINDS:
        raise bad(f"kind {a.kind!r} is not one of {', '.join(KINDS)}")
    for name in ("sha256", "model_digest", "weights_digest"):
        v = getattr(a, name)
        if not isinstance(v, str) or not _SHA.match(v):
            raise bad(f"{name} {v!r} is not 64 lowercase hex digits")
    if a.engine is not None and not _SHA.match(a.engine):
        raise bad(f"engine {a.engine!r} is not a sha256")
    if not isinstance(a.size, int) or isinstance(a.size, bool) or a.size < 0 or a.size > MAX_ARTIFACT_SIZE:
        raise bad(f"size {a.size!r} is not a plausible byte count (0..{MAX_ARTIFACT_SIZE})")
    if not a.compute_capabilities and a.kind in ("engine", "runtime-cache", "timing-cache"):
        raise bad("compute_capabilities is empty")
    for cc in a.compute_capabilities:
        if not isinstance(cc, str) or not _CC.match(cc):
            raise bad(f"compute_capabilities: {cc!r} is not of the form '8.9'")
    if a.os is not None and a.os not in OS_FAMILIES:
        raise bad(f"os {a.os!r} is not one of {', '.join(OS_FAMILIES)}")
    if not a.backend_version or not _VERSION.match(a.backend_version):
        raise bad(f"backend_version {a.backend_version!r} is not an exact version such as '1.7.1.116'")
    if a.kind == "runtime-cache" and (not a.gpu_name or not a.engine):
        raise bad("a runtime-cache entry needs gpu_name and engine (the sha256 of its engine)")
    validate_relpath(a.path, where=f"{where} ({a.id})")
    for url in a.mirrors:
        if not isinstance(url, str) or not re.match(r"^https?://", url):
            raise bad(f"mirrors: {url!r} is not an http(s) URL")


def _check_depth(obj: Any, limit: int = MAX_JSON_DEPTH) -> None:
    stack = [(obj, 1)]
    while stack:
        o, depth = stack.pop()
        if depth > limit:
            raise ManifestError(f"manifest JSON is nested deeper than {limit} levels",
                                fix="this is not an rtxpack manifest; check the repository URL")
        if isinstance(o, dict):
            stack.extend((v, depth + 1) for v in o.values())
        elif isinstance(o, list):
            stack.extend((v, depth + 1) for v in o)


@dataclass(frozen=True)
class Manifest:
    """A repository index: artifacts plus the metadata signing needs (version, expiry)."""

    artifacts: tuple[Artifact, ...] = ()
    name: str = "rtxpack-repository"
    version: int = 1                     # monotonically increasing; rollback protection
    created: str | None = None           # ISO 8601 UTC
    expires: str | None = None           # ISO 8601 UTC; None = never
    project: Mapping[str, Any] | None = None
    signatures: tuple[Mapping[str, str], ...] = ()

    # ---- queries -----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Artifact]:
        return iter(self.artifacts)

    def __len__(self) -> int:
        return len(self.artifacts)

    def by_id(self, artifact_id: str) -> Artifact:
        for a in self.artifacts:
            if a.id == artifact_id:
                return a
        raise KeyError(artifact_id)

    def models(self) -> list[str]:
        return sorted({a.model for a in self.artifacts})

    def select(self, *, model: str | None = None, kind: str | None = None) -> list[Artifact]:
        return [a for a in self.artifacts if (model is None or a.model == model) and (kind is None or a.kind == kind)]

    # ---- (de)serialization ---------------------------------------------------------------------
    def to_dict(self, *, include_signatures: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {
            "schema": SCHEMA_ID,
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "version": self.version,
        }
        if self.created:
            d["created"] = self.created
        if self.expires:
            d["expires"] = self.expires
        if self.project:
            d["project"] = dict(self.project)
        d["artifacts"] = [a.to_dict() for a in sorted(self.artifacts, key=lambda a: a.id)]
        if include_signatures and self.signatures:
            d["signatures"] = [dict(s) for s in self.signatures]
        return d

    def canonical_bytes(self) -> bytes:
        """The bytes a signature covers: the manifest without its signatures, canonical JSON."""
        return json.dumps(self.to_dict(include_signatures=False), sort_keys=True, separators=(",", ":")).encode()

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, d: Any, *, source: str = "manifest") -> "Manifest":
        if not isinstance(d, dict):
            raise ManifestError(f"{source}: top level is not a JSON object", fix="check the repository URL", url=source)
        # the only places a manifest nests freely (entries are otherwise flat)
        _check_depth([d.get("project"), d.get("signatures")] + [
            [a.get("profiles"), a.get("extra")] for a in d.get("artifacts") or () if isinstance(a, dict)])
        if d.get("schema") != SCHEMA_ID:
            raise ManifestError(f"{source}: not an rtxpack manifest (schema={d.get('schema')!r})",
                                fix="point --repo at a directory or URL that contains an rtxpack manifest.json",
                                url=source)
        sv = d.get("schema_version")
        if sv != SCHEMA_VERSION:
            raise ManifestError(f"{source}: unknown schema_version {sv!r} (this rtxpack reads {SCHEMA_VERSION})",
                                fix="upgrade rtxpack (`pip install -U rtxpack`)", url=source, schema_version=sv)
        arts = d.get("artifacts", [])
        _validate_schema(d, source)
        artifacts = tuple(Artifact.from_dict(a, where=f"{source}: artifacts[{i}]") for i, a in enumerate(arts))
        ids: set[str] = set()
        for a in artifacts:
            if a.id in ids:
                raise ManifestError(f"{source}: duplicate artifact id {a.id!r}", fix="artifact ids must be unique",
                                    artifact=a.id, url=source)
            ids.add(a.id)
        return cls(
            artifacts=artifacts,
            name=d.get("name", "rtxpack-repository"),
            version=int(d.get("version", 1)),
            created=d.get("created"),
            expires=d.get("expires"),
            project=d.get("project"),
            signatures=tuple(d.get("signatures", ())),
        )

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "manifest") -> "Manifest":
        if len(text) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"{source}: {len(text)} bytes is larger than the {MAX_MANIFEST_BYTES}-byte limit",
                                fix="split the repository or check the URL", url=source)
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise ManifestError(f"{source}: not valid JSON ({e})", fix="re-publish the repository", url=source) from e
        return cls.from_dict(data, source=source)

    @classmethod
    def load(cls, path: str | Path) -> "Manifest":
        p = Path(path)
        if p.is_dir():
            p = p / MANIFEST_NAME
        try:
            text = read_regular(p, MAX_MANIFEST_BYTES, follow_links=True)
        except FileNotFoundError as e:
            raise ManifestError(f"no manifest at {p}", fix="build or publish the repository first (`rtxpack build`)",
                                path=str(p)) from e
        except UnsafeFile as e:
            raise ManifestError(f"{e}; refused without reading it", fix="check the repository", path=str(p)) from e
        return cls.from_json(text, source=str(p))

    def save(self, path: str | Path) -> Path:
        """Write atomically (temp file + fsync + os.replace)."""
        p = Path(path)
        if p.is_dir():
            p = p / MANIFEST_NAME
        return atomic_write(p, self.to_json().encode(), mode=0o644)

    # ---- editing -------------------------------------------------------------------------------
    def with_artifacts(self, artifacts: Iterable[Artifact], **changes: Any) -> "Manifest":
        return replace(self, artifacts=tuple(sorted(artifacts, key=lambda a: a.id)), signatures=(), **changes)

    def merge(self, other: "Manifest") -> "Manifest":
        """Union of two manifests; the same id with different content is a conflict (ManifestError)."""
        merged = {a.id: a for a in self.artifacts}
        for a in other.artifacts:
            mine = merged.get(a.id)
            if mine is not None and mine != a:
                diff = sorted(k for k in mine.to_dict().keys() | a.to_dict().keys()
                              if mine.to_dict().get(k) != a.to_dict().get(k))
                raise ManifestError(f"conflicting entries for artifact {a.id!r}: they differ in {', '.join(diff)}",
                                    fix="rebuild one side, or remove the stale repository part before merging",
                                    artifact=a.id, differing_fields=diff)
            merged[a.id] = a
        return self.with_artifacts(merged.values(), version=max(self.version, other.version))


def utcnow_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def parse_time(value: str) -> datetime:
    v = value.replace("Z", "+00:00")
    dt = datetime.fromisoformat(v)
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def artifact_id(kind: str, model: str, sha256: str) -> str:
    """Stable, readable id: ``<model>/<kind>/<sha256[:16]>``."""
    return f"{model}/{kind}/{sha256[:16]}"


def blob_relpath(sha256: str) -> str:
    return f"blobs/sha256/{sha256[:2]}/{sha256}"


_SCHEMA_CACHE: dict[str, Any] = {}


def schema() -> dict[str, Any]:
    if "v1" not in _SCHEMA_CACHE:
        here = Path(__file__).resolve().parent.parent / "schemas" / "manifest-v1.schema.json"
        _SCHEMA_CACHE["v1"] = json.loads(here.read_text())
    return _SCHEMA_CACHE["v1"]


def _top_level_validator() -> Any:
    """The published schema, used for the document's top level; entries are checked in code."""
    if "validator" not in _SCHEMA_CACHE:
        import jsonschema

        cls = jsonschema.validators.validator_for(schema())
        _SCHEMA_CACHE["validator"] = cls(schema())
    return _SCHEMA_CACHE["validator"]


def _validate_schema(d: Mapping[str, Any], source: str) -> None:
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - jsonschema is a dependency; rules below still run
        return
    validator = _top_level_validator()
    top = {k: v for k, v in d.items() if k != "artifacts"}
    top["artifacts"] = [] if isinstance(d.get("artifacts"), list) else d.get("artifacts")
    error = jsonschema.exceptions.best_match(validator.iter_errors(top))
    if error is not None:
        loc = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        entry = None
        path = list(error.absolute_path)
        if len(path) >= 2 and path[0] == "artifacts" and isinstance(path[1], int):
            arts = d.get("artifacts") or []
            if path[1] < len(arts) and isinstance(arts[path[1]], dict):
                entry = arts[path[1]].get("id")
        where = f"{source}: {loc}" + (f" (artifact {entry})" if entry else "")
        raise ManifestError(f"{where}: {error.message}", fix="see manifests/manifest-v1.schema.json",
                            url=source, artifact=entry, json_path=loc)
