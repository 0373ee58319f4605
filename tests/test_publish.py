"""``rtxpack publish``: a local folder and a real S3-compatible server (moto, loopback), blobs before
the manifest, skips by name and size, cache headers, read-back verification, rollback refusal, and
publishes killed half-way that finish when run again."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fault_helpers import child_env, cli, data_of, engine_for, write_repo
from rtxpack.core.errors import ChecksumMismatch, ManifestError
from rtxpack.core.manifest import Manifest
from rtxpack.farm import publish as pub
from rtxpack.farm.publish import publish
from rtxpack.farm.sign import keygen, sign_repository

pytest.importorskip("fsspec")


def make_repo(root: Path, n: int, size: int = 2000, seed: int = 0) -> Manifest:
    blobs = []
    for i in range(n):
        d = data_of(size + i, seed * 10_000 + i)
        blobs.append((engine_for(d, model="mlp" if i == 0 else f"m{i}"), d))
    return write_repo(root, blobs)


def kill_after(args: list[str], env: dict[str, str], uploads: int) -> None:
    """Run ``rtxpack publish ARGS`` and SIGKILL it once it has reported ``uploads`` uploaded blobs."""
    proc = subprocess.Popen([sys.executable, "-m", "rtxpack.cli", "publish", *args], stderr=subprocess.PIPE, text=True,
                            env=env)
    assert proc.stderr is not None
    seen = 0
    for line in proc.stderr:
        seen += " uploaded blobs/" in line
        if seen == uploads:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the publish finished before it could be interrupted"


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# ---- a local folder ---------------------------------------------------------------------------------
def test_local_folder_gets_manifest_and_named_blobs_only(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    m = make_repo(repo, 5)
    (repo / ".rtxpack.lock").touch()
    (repo / ".tmp").mkdir()
    (repo / "blobs" / "sha256" / "00").mkdir(parents=True)
    (repo / "blobs" / "sha256" / "00" / ("00" * 32)).write_bytes(b"orphan")   # named by no entry
    www = tmp_path / "www"
    rep = publish(repo, str(www))
    assert len(rep.uploaded) == 5 and rep.manifest == "uploaded" and rep.verified == 5
    got = files_under(www)
    assert set(got) == {"manifest.json"} | {a.path for a in m}
    assert got["manifest.json"] == (repo / "manifest.json").read_bytes()
    assert all(oct(os.stat(www / p).st_mode & 0o777) == "0o644" for p in got)
    assert not rep.cache_headers                      # a folder keeps no HTTP headers

    again = publish(repo, str(www))                   # nothing changed: nothing written
    assert again.uploaded == [] and len(again.skipped) == 5 and again.manifest == "unchanged"


def test_blobs_go_before_the_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    make_repo(repo, 4)
    order: list[str] = []
    real_put, real_bytes = pub.Destination.put, pub.Destination.put_bytes
    monkeypatch.setattr(pub.Destination, "put", lambda self, src, rel, h: (order.append(rel), real_put(self, src, rel, h)))
    monkeypatch.setattr(pub.Destination, "put_bytes",
                        lambda self, data, rel, h: (order.append(rel), real_bytes(self, data, rel, h)))
    publish(repo, str(tmp_path / "www"), jobs=3)
    assert order[-1] == "manifest.json" and len(order) == 5 and "manifest.json" not in order[:-1]


def test_new_build_uploads_only_new_blobs_and_installs(tmp_path: Path) -> None:
    repo, www = tmp_path / "repo", tmp_path / "www"
    m = make_repo(repo, 3)
    publish(repo, str(www))
    d = data_of(5000, 99)
    extra = engine_for(d, model="new")
    write_repo(repo, [(a, (repo / a.path).read_bytes()) for a in m] + [(extra, d)], version=2)
    rep = publish(repo, str(www))
    assert rep.uploaded == [extra.path] and len(rep.skipped) == 3 and rep.manifest == "uploaded"
    r = cli("install", "--repo", str(www), "--model", "new", "--json", RTXPACK_DEVICE="8.9")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["artifacts"][0]["sha256"] == extra.sha256


def test_a_corrupt_copy_at_the_destination_is_caught_and_replaced(tmp_path: Path) -> None:
    repo, www = tmp_path / "repo", tmp_path / "www"
    m = make_repo(repo, 3)
    publish(repo, str(www))
    victim = www / m.artifacts[1].path
    victim.write_bytes(bytes(len(victim.read_bytes())))          # same size, other bytes
    with pytest.raises(ChecksumMismatch, match="read back wrong") as ei:
        publish(repo, str(www), verify="all")
    assert m.artifacts[1].path in str(ei.value) and not victim.exists()   # removed: the next run replaces it
    rep = publish(repo, str(www), verify="all")
    assert rep.uploaded == [m.artifacts[1].path] and rep.verified == 3
    assert victim.read_bytes() == (repo / m.artifacts[1].path).read_bytes()


def test_missing_local_blob_publishes_nothing(tmp_path: Path) -> None:
    repo, www = tmp_path / "repo", tmp_path / "www"
    m = make_repo(repo, 3)
    (repo / m.artifacts[2].path).unlink()
    with pytest.raises(ManifestError, match="which is missing"):
        publish(repo, str(www))
    assert not www.exists() or not files_under(www)


def test_older_signed_manifest_is_refused_unless_forced(tmp_path: Path) -> None:
    repo, www = tmp_path / "repo", tmp_path / "www"
    make_repo(repo, 2)
    key, _, _ = keygen(tmp_path / "keys")
    sign_repository(repo, key, version=5)
    publish(repo, str(www))
    old = tmp_path / "old"
    make_repo(old, 2)
    sign_repository(old, key, version=3)
    with pytest.raises(ManifestError, match="already has manifest version 5") as ei:
        publish(old, str(www))
    assert "rtxpack sign" in ei.value.fix
    assert Manifest.from_json((www / "manifest.json").read_bytes()).version == 5
    r = cli("publish", "--repo", str(old), "--to", str(www))
    assert r.returncode == 1 and "rollback" in r.stderr and "Traceback" not in r.stderr
    assert publish(old, str(www), force=True).manifest == "uploaded"


def test_someone_elses_manifest_is_not_overwritten(tmp_path: Path) -> None:
    repo, www = tmp_path / "repo", tmp_path / "www"
    make_repo(repo, 1)
    www.mkdir()
    (www / "manifest.json").write_text('{"name": "My web app", "start_url": "/"}')
    with pytest.raises(ManifestError, match="not an rtxpack manifest"):
        publish(repo, str(www))
    assert json.loads((www / "manifest.json").read_text())["name"] == "My web app"
    assert not (www / "blobs").exists()
    assert publish(repo, str(www), force=True).manifest == "uploaded"


def test_interrupted_local_publish_resumes(tmp_path: Path) -> None:
    """Kill -9 a publish to a folder half-way: the old manifest (none here) stays, every blob that is
    there is whole, the temp files go on the next run, which skips what arrived and finishes."""
    repo, www = tmp_path / "repo", tmp_path / "www"
    m = make_repo(repo, 300, size=20_000)
    kill_after(["--repo", str(repo), "--to", str(www), "-j", "1"], child_env(), 20)
    assert not (www / "manifest.json").exists()
    by_path = {a.path: a for a in m}
    present = [p for p in files_under(www) if not Path(p).name.startswith(".")]
    assert 20 <= len(present) < 300
    for p in present:
        assert (www / p).read_bytes() == (repo / p).read_bytes()
    rep = publish(repo, str(www), verify="all")
    assert len(rep.skipped) == len(present) and len(rep.uploaded) == 300 - len(present)
    assert set(files_under(www)) == {"manifest.json"} | set(by_path)      # no temp file left behind
    assert rep.verified == 300


# ---- a real S3-compatible server ------------------------------------------------------------------
def test_s3_publish_headers_and_install_over_http(tmp_path: Path, s3) -> None:
    repo = tmp_path / "repo"
    m = make_repo(repo, 4)
    key, pubkey, _ = keygen(tmp_path / "keys")
    sign_repository(repo, key)
    r = cli("publish", "--repo", str(repo), "--to", s3.url("demo"), "--storage-option", f"endpoint_url={s3.endpoint}",
            "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["uploaded"] == 4 and d["cache_headers"] and d["signed"] and d["manifest"] == "uploaded"
    head = s3.client.head_object(Bucket=s3.bucket, Key="demo/manifest.json")
    assert head["CacheControl"] == "public, max-age=60" and head["ContentType"] == "application/json"
    blob = s3.client.head_object(Bucket=s3.bucket, Key=f"demo/{m.artifacts[0].path}")
    assert blob["CacheControl"] == "public, max-age=31536000, immutable"
    keys = {o["Key"] for o in s3.client.list_objects_v2(Bucket=s3.bucket)["Contents"]}
    assert keys == {"demo/manifest.json"} | {f"demo/{a.path}" for a in m}
    # the bucket is a static repository: made public-read (as a release bucket or its CDN is), an
    # installer reads it over plain HTTP, signature checked
    s3.client.put_bucket_policy(Bucket=s3.bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{s3.bucket}/*"}]}))
    r = cli("install", "--repo", s3.http("demo"), "--model", "mlp", "--trusted-key", str(pubkey), "--json",
            RTXPACK_DEVICE="8.9")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["artifacts"][0]["sha256"] == m.artifacts[0].sha256
    again = publish(repo, s3.url("demo"), storage_options={"endpoint_url": s3.endpoint})
    assert again.uploaded == [] and again.manifest == "unchanged" and len(again.skipped) == 4


def test_interrupted_s3_publish_resumes(tmp_path: Path, s3) -> None:
    repo = tmp_path / "repo"
    m = make_repo(repo, 200, size=1000)
    env = child_env(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    kill_after(["--repo", str(repo), "--to", s3.url("r"), "--storage-option", f"endpoint_url={s3.endpoint}", "-j", "1"],
               env, 15)
    listed = s3.client.list_objects_v2(Bucket=s3.bucket, Prefix="r/").get("Contents", [])
    keys = {o["Key"][2:] for o in listed}
    assert "manifest.json" not in keys and 15 <= len(keys) < 200
    by_path = {a.path: a for a in m}
    for k in keys:          # an object is whole or absent
        body = s3.client.get_object(Bucket=s3.bucket, Key=f"r/{k}")["Body"].read()
        assert body == (repo / k).read_bytes() and len(body) == by_path[k].size
    rep = publish(repo, s3.url("r"), storage_options={"endpoint_url": s3.endpoint}, verify="all")
    assert len(rep.skipped) == len(keys) and len(rep.uploaded) == 200 - len(keys) and rep.verified == 200
    assert s3.client.get_object(Bucket=s3.bucket, Key="r/manifest.json")["Body"].read() == \
        (repo / "manifest.json").read_bytes()


def test_publish_mistakes_are_one_line(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    make_repo(repo, 1)
    r = cli("publish", "--repo", str(repo), "--to", str(tmp_path / "w"), "--storage-option", "endpoint")
    assert r.returncode == 1 and "KEY=VALUE" in r.stderr and "Traceback" not in r.stderr
    r = cli("publish", "--repo", str(tmp_path), "--to", str(tmp_path / "w"), "--json")
    assert r.returncode == 1 and "not an rtxpack repository" in json.loads(r.stdout)["message"]
    r = cli("publish", "--repo", str(repo), "--to", "nosuchproto://x/y")
    assert r.returncode == 1 and r.stderr.startswith("rtxpack: error: --to nosuchproto://x/y") and "Traceback" not in r.stderr
