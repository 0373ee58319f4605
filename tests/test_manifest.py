import json
from pathlib import Path

import pytest

from rtxpack.core.errors import ManifestError
from rtxpack.core.manifest import Manifest, parse_cc

from manifest_factory import engine, manifest, runtime_cache

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "manifests" / "examples" / "manifest.json"


def test_example_manifest_loads_and_round_trips(tmp_path):
    m = Manifest.load(EXAMPLE)
    assert m.models() == ["resnet50"] and len(m) == 4
    out = m.save(tmp_path)
    again = Manifest.load(out)
    assert again == m
    assert json.loads(out.read_text())["schema_version"] == 1


def test_packaged_schema_is_the_published_one():
    assert (ROOT / "rtxpack" / "schemas" / "manifest-v1.schema.json").read_text() == \
        (ROOT / "manifests" / "manifest-v1.schema.json").read_text()


def _doc():
    return json.loads(EXAMPLE.read_text())


@pytest.mark.parametrize("path, problem", [
    ("/etc/passwd", "absolute"),
    ("C:/Windows/x", "absolute"),
    ("blobs/../../x", "'..'"),
    ("..", "'..'"),
    ("blobs\\x", "backslash"),
])
def test_bad_paths_are_rejected_naming_the_entry(path, problem):
    d = _doc()
    d["artifacts"][2]["path"] = path
    with pytest.raises(ManifestError) as ei:
        Manifest.from_dict(d)
    msg = str(ei.value)
    assert problem in msg and d["artifacts"][2]["id"] in msg


def test_unknown_schema_version_rejected():
    d = _doc()
    d["schema_version"] = 2
    with pytest.raises(ManifestError, match="unknown schema_version 2.*upgrade rtxpack"):
        Manifest.from_dict(d)


def test_not_a_manifest():
    with pytest.raises(ManifestError, match="not an rtxpack manifest"):
        Manifest.from_dict({"hello": 1})
    with pytest.raises(ManifestError, match="not valid JSON"):
        Manifest.from_json(b"{nope")


@pytest.mark.parametrize("field, value, needle", [
    ("sha256", "xyz", "sha256"),
    ("size", -1, "size"),
    ("size", 10**15, "size"),
    ("kind", "movie", "kind"),
    ("compute_capabilities", ["sm89"], "compute_capabilities"),
    ("backend_version", "latest", "backend_version"),
    ("mirrors", ["ftp://x"], "mirrors"),
])
def test_malformed_entries_name_the_entry_and_field(field, value, needle):
    d = _doc()
    d["artifacts"][0][field] = value
    with pytest.raises(ManifestError) as ei:
        Manifest.from_dict(d)
    assert needle in str(ei.value) and d["artifacts"][0]["id"] in str(ei.value)


def test_missing_field_and_unknown_field():
    d = _doc()
    del d["artifacts"][1]["sha256"]
    with pytest.raises(ManifestError, match="sha256"):
        Manifest.from_dict(d)
    d = _doc()
    d["artifacts"][1]["colour"] = "blue"
    with pytest.raises(ManifestError, match="colour"):
        Manifest.from_dict(d)


def test_duplicate_ids_rejected():
    d = _doc()
    d["artifacts"].append(dict(d["artifacts"][0]))
    with pytest.raises(ManifestError, match="duplicate artifact id"):
        Manifest.from_dict(d)


def test_deeply_nested_json_rejected():
    d = _doc()
    nested: dict = {}
    cur = nested
    for _ in range(100):
        cur["a"] = {}
        cur = cur["a"]
    d["project"] = nested
    with pytest.raises(ManifestError, match="nested deeper"):
        Manifest.from_dict(d)
    with pytest.raises(ManifestError):
        Manifest.from_json(b"[" * 100000 + b"]" * 100000)


def test_runtime_cache_needs_gpu_and_engine():
    d = _doc()
    cache = next(a for a in d["artifacts"] if a["kind"] == "runtime-cache")
    del cache["gpu_name"]
    with pytest.raises(ManifestError, match="gpu_name"):
        Manifest.from_dict(d)


def test_merge_union_and_conflict():
    a, b = engine("m", ("8.9",)), engine("m", ("12.0",))
    merged = manifest(a).merge(manifest(b))
    assert {x.id for x in merged} == {a.id, b.id}
    assert manifest(a).merge(manifest(a)) == manifest(a)   # idempotent
    import dataclasses
    conflicting = dataclasses.replace(a, size=a.size + 1)
    with pytest.raises(ManifestError, match=r"conflicting entries .* size"):
        manifest(a).merge(manifest(conflicting))


def test_parse_cc():
    assert parse_cc("8.9") == (8, 9) and parse_cc("12.0") == (12, 0) and parse_cc("sm_120") == (12, 0)
    with pytest.raises(ValueError):
        parse_cc("eighty")


def test_canonical_bytes_exclude_signatures():
    e = engine()
    m1 = manifest(e, runtime_cache(e, "RTX 4090", "8.9"))
    m2 = Manifest(artifacts=m1.artifacts, signatures=({"keyid": "0" * 16, "algorithm": "ed25519", "signature": "x"},))
    assert m1.canonical_bytes() == m2.canonical_bytes()
