"""Signed manifests: keygen / sign / verify through the real CLI, and each refusal on its own."""
from __future__ import annotations

import hashlib
import json
import os
import stat
import warnings
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from fault_helpers import cache_for, cli, data_of, engine_for, write_repo
from rtxpack.installer import trust
from rtxpack.core.signing import load_private_key, load_public_key, sign_manifest
from rtxpack.farm.sign import keygen, sign_repository
from rtxpack.core.errors import ConfigError, SignatureError
from rtxpack.installer.pipeline import install
from rtxpack.core.manifest import Manifest
from rtxpack.installer.repository import open_repository
from rtxpack.installer.store import Store

DEVICE = {"RTXPACK_DEVICE": "8.9"}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    d = data_of(2000)
    e = engine_for(d)
    cd = data_of(100, 1)
    write_repo(tmp_path / "repo", [(e, d), (cache_for(e, cd), cd)])
    return tmp_path / "repo"


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """Two key pairs, made with the library (the CLI path has its own test)."""
    a = keygen(tmp_path / "key-a")
    b = keygen(tmp_path / "key-b")
    return {"a.key": a[0], "a.pub": a[1], "a.id": a[2], "b.key": b[0], "b.pub": b[1], "b.id": b[2]}


def signed(repo: Path, key: Path, **kw) -> Manifest:
    return sign_repository(repo, key, **kw)


# -- round trip through the real CLI ----------------------------------------------------------------
def test_keygen_sign_install_round_trip_via_cli(tmp_path: Path, repo: Path) -> None:
    """keygen -> sign -> install --trusted-key, each a real `python -m rtxpack.cli` process."""
    r = cli("keygen", "--out", str(tmp_path / "k"), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    key, pub = Path(out["private_key"]), Path(out["public_key"])
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    from cryptography.hazmat.primitives import serialization

    raw = serialization.load_pem_public_key(pub.read_bytes()).public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert out["keyid"] == hashlib.sha256(raw).hexdigest()[:16]

    # keygen never overwrites a key silently
    again = cli("keygen", "--out", str(tmp_path / "k"))
    assert again.returncode == 1 and "already exists" in again.stderr and "--force" in again.stderr

    r = cli("sign", "--repo", str(repo), "--key", str(key), "--expires-in", "30", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    m = Manifest.load(repo)
    assert m.version == info["version"] == 2                     # bumped from 1
    assert m.signatures[0]["keyid"] == out["keyid"] and m.signatures[0]["algorithm"] == "ed25519"
    left = datetime.fromisoformat(m.expires.replace("Z", "+00:00")) - datetime.now(timezone.utc)
    assert timedelta(days=29) < left <= timedelta(days=30)

    r = cli("install", "--repo", str(repo), "--model", "mlp", "--trusted-key", str(pub), "--json", **DEVICE)
    assert r.returncode == 0, r.stderr
    assert "WITHOUT signature" not in r.stderr
    assert {a["kind"] for a in json.loads(r.stdout)["artifacts"]} == {"engine", "runtime-cache"}

    r = cli("sign", "--repo", str(repo), "--key", str(key), "--version", "7")
    assert r.returncode == 0 and Manifest.load(repo).version == 7
    r = cli("sign", "--repo", str(repo), "--key", str(key), "--version", "3")
    assert r.returncode == 1 and "rollback" in r.stderr and Manifest.load(repo).version == 7


def test_tampered_manifest_byte_is_refused(repo: Path, keys) -> None:
    """One changed byte of a signed manifest (an artifact's sha256) is refused, via API and CLI."""
    signed(repo, keys["a.key"])
    mp = repo / "manifest.json"
    doc = json.loads(mp.read_text())
    good = doc["artifacts"][0]["sha256"]
    doc["artifacts"][0]["sha256"] = ("0" if good[0] != "0" else "1") + good[1:]
    mp.write_text(json.dumps(doc))
    with pytest.raises(SignatureError) as ei:
        open_repository(repo, trusted_keys=[keys["a.pub"]])
    msg = str(ei.value)
    assert "does not verify" in msg and keys["a.id"] in msg and str(repo) in msg and "rtxpack sign" in msg
    r = cli("install", "--repo", str(repo), "--model", "mlp", "--trusted-key", str(keys["a.pub"]), **DEVICE)
    assert r.returncode == 1 and "does not verify" in r.stderr and "fix:" in r.stderr
    assert Store().entries() == []


def test_manifest_bytes_outside_the_signed_content_change_nothing(repo: Path, keys) -> None:
    """Reformatting the JSON (whitespace, key order) keeps the signature valid: it covers the content."""
    signed(repo, keys["a.key"])
    mp = repo / "manifest.json"
    mp.write_text(json.dumps(json.loads(mp.read_text()), indent=7, sort_keys=True))
    assert open_repository(repo, trusted_keys=[keys["a.pub"]]).manifest.version == 2


def test_wrong_key_is_refused_naming_keyids(repo: Path, keys) -> None:
    """Signed by A, only B trusted: refused; the message names A (seen), B (trusted) and the fix."""
    signed(repo, keys["a.key"])
    with pytest.raises(SignatureError) as ei:
        open_repository(repo, trusted_keys=[keys["b.pub"]])
    e = ei.value
    assert e.keyids_seen == [keys["a.id"]] and e.trusted_keyids == [keys["b.id"]]
    assert keys["a.id"] in str(e) and keys["b.id"] in str(e) and "none of which is trusted" in str(e)
    assert "--trusted-key" in e.fix and str(repo) in str(e)


def test_unsigned_manifest_refused_when_keys_are_pinned(repo: Path, keys) -> None:
    """Trusted keys configured + unsigned manifest (signatures stripped) -> refused."""
    with pytest.raises(SignatureError, match="not signed"):
        open_repository(repo, trusted_keys=[keys["a.pub"]])


def test_bad_signature_bytes_refused(repo: Path, keys) -> None:
    """A signature entry with the trusted keyid but garbage (or truncated) base64 is refused."""
    m = signed(repo, keys["a.key"])
    for bogus in ("AAAA", "not base64!", m.signatures[0]["signature"][:-8] + "AAAAAAA="):
        bad = replace(m, signatures=({**m.signatures[0], "signature": bogus},))
        with pytest.raises(SignatureError, match="does not verify"):
            trust.verify_manifest(bad, trusted_keys=[keys["a.pub"]], require_signed=False, repo="r", record=False)


def test_expired_manifest_refused(repo: Path, keys) -> None:
    """A signed manifest past its expiry is refused (frozen mirror); before it, accepted."""
    m = signed(repo, keys["a.key"], expires_in_days=1)
    later = datetime.now(timezone.utc) + timedelta(days=2)
    with pytest.raises(SignatureError, match="expired") as ei:
        trust.verify_manifest(m, trusted_keys=[keys["a.pub"]], require_signed=False, repo=str(repo), now=later)
    assert ei.value.reason == "expired" and "rtxpack sign" in ei.value.fix
    ok = trust.verify_manifest(m, trusted_keys=[keys["a.pub"]], require_signed=False, repo=str(repo))
    assert ok.signed and ok.keyid == keys["a.id"]


def test_expired_manifest_refused_even_unsigned(repo: Path) -> None:
    m = Manifest.load(repo)
    old = replace(m, expires="2020-01-01T00:00:00Z")
    with pytest.raises(SignatureError, match="expired"):
        trust.verify_manifest(old, trusted_keys=None, require_signed=False, repo="unsigned-expired")


def test_rollback_to_older_signed_manifest_refused(repo: Path, keys) -> None:
    """Accept v3, then a server serving the (validly signed) v2 again is refused as a rollback."""
    signed(repo, keys["a.key"])                                  # v2
    v2 = (repo / "manifest.json").read_bytes()
    assert open_repository(repo, trusted_keys=[keys["a.pub"]]).manifest.version == 2
    signed(repo, keys["a.key"])                                  # v3
    assert open_repository(repo, trusted_keys=[keys["a.pub"]]).manifest.version == 3
    assert trust.accepted_version(keys["a.id"]) == 3
    (repo / "manifest.json").write_bytes(v2)
    with pytest.raises(SignatureError, match="rollback") as ei:
        open_repository(repo, trusted_keys=[keys["a.pub"]])
    assert ei.value.version == 2 and ei.value.accepted_version == 3
    assert trust.accepted_version(keys["a.id"]) == 3                # refused manifests are not recorded


def test_same_version_with_other_content_refused(repo: Path, keys) -> None:
    """A second, different manifest under an already-accepted version number is refused."""
    signed(repo, keys["a.key"], version=5)
    open_repository(repo, trusted_keys=[keys["a.pub"]])
    open_repository(repo, trusted_keys=[keys["a.pub"]])          # same content again: fine
    signed(repo, keys["a.key"], version=5, expires_in_days=3)    # same version, other expiry
    with pytest.raises(SignatureError, match="different content"):
        open_repository(repo, trusted_keys=[keys["a.pub"]])


def test_corrupt_rollback_state_fails_closed(repo: Path, keys) -> None:
    signed(repo, keys["a.key"])
    open_repository(repo, trusted_keys=[keys["a.pub"]])
    state = next(Store().state_dir("trust").glob("*.json"))
    state.write_text("{garbage")
    with pytest.raises(SignatureError, match="corrupt"):
        open_repository(repo, trusted_keys=[keys["a.pub"]])


def test_unsigned_repository_warns_once_then_require_signed_refuses(repo: Path, caplog) -> None:
    """No trusted key: one warning per repository (warnings + logging) saying how to pin a key;
    require_signed=True turns it into a SignatureError."""
    with pytest.warns(trust.UnsignedRepositoryWarning, match="RTXPACK_TRUSTED_KEYS"):
        open_repository(repo)
    assert any("WITHOUT signature verification" in r.message for r in caplog.records)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        open_repository(repo)                                    # second time: silent
    with pytest.raises(SignatureError, match="signed manifests are required") as ei:
        open_repository(repo, require_signed=True)
    assert "--trusted-key" in ei.value.fix


def test_require_signed_env_and_cli_flag(repo: Path, keys, monkeypatch) -> None:
    """RTXPACK_REQUIRE_SIGNED=1 and --require-signed refuse an unpinned repository."""
    monkeypatch.setenv("RTXPACK_REQUIRE_SIGNED", "1")
    with pytest.raises(SignatureError, match="required"):
        open_repository(repo)
    monkeypatch.delenv("RTXPACK_REQUIRE_SIGNED")
    r = cli("resolve", "--repo", str(repo), "--model", "mlp", "--require-signed", **DEVICE)
    assert r.returncode == 1 and "signed manifests are required" in r.stderr
    signed(repo, keys["a.key"])
    r = cli("resolve", "--repo", str(repo), "--model", "mlp", "--require-signed", "--trusted-key",
            str(keys["a.pub"]), **DEVICE)
    assert r.returncode == 0, r.stderr


def test_trusted_keys_from_environment(repo: Path, keys, monkeypatch) -> None:
    """RTXPACK_TRUSTED_KEYS (os.pathsep-separated files) pins keys for API and CLI."""
    signed(repo, keys["a.key"])
    monkeypatch.setenv("RTXPACK_TRUSTED_KEYS", os.pathsep.join([str(keys["b.pub"]), str(keys["a.pub"])]))
    assert open_repository(repo).manifest.version == 2
    r = cli("install", "--repo", str(repo), "--model", "mlp", **DEVICE)
    assert r.returncode == 0 and "WITHOUT" not in r.stderr, r.stderr
    monkeypatch.setenv("RTXPACK_TRUSTED_KEYS", str(keys["b.pub"]))
    with pytest.raises(SignatureError, match="none of which is trusted"):
        open_repository(repo)
    r = cli("install", "--repo", str(repo), "--model", "mlp", **DEVICE)
    assert r.returncode == 1 and keys["a.id"] in r.stderr
    monkeypatch.setenv("RTXPACK_TRUSTED_KEYS", str(keys["b.pub"]) + ".missing")
    with pytest.raises(ConfigError, match="cannot read trusted key"):
        open_repository(repo)


def test_trusted_keys_as_bytes_and_install_api(repo: Path, keys) -> None:
    """trusted_keys= accepts key bytes (PEM or raw 32 bytes); install() passes it through."""
    signed(repo, keys["a.key"])
    from rtxpack.core.device import parse_override

    pem = keys["a.pub"].read_bytes()
    res = install(str(repo), "mlp", device=parse_override("8.9"), progress=False, trusted_keys=[pem])
    assert res.files
    raw = load_public_key(pem).key.public_bytes_raw()
    assert open_repository(repo, trusted_keys=[raw]).manifest.version == 2
    with pytest.raises(ConfigError, match="not an ed25519 public key"):
        open_repository(repo, trusted_keys=[b"hello"])
    with pytest.raises(ConfigError, match="not an ed25519 public key"):
        open_repository(repo, trusted_keys=[keys["a.key"]])      # the private key by mistake


def test_misspelled_option_does_not_disable_verification(repo: Path, keys) -> None:
    with pytest.raises(ConfigError, match="unknown option"):
        open_repository(repo, trusted_key=[keys["a.pub"]])


def test_co_signing_keeps_both_signatures(repo: Path, keys) -> None:
    """Signing the same content (same version, expiry) with a second key keeps the first signature."""
    now = datetime(2030, 1, 1, tzinfo=timezone.utc)
    m = Manifest.load(repo)
    a = sign_manifest(m, load_private_key(keys["a.key"]), now=now)
    ab = sign_manifest(a, load_private_key(keys["b.key"]), version=a.version, now=now)
    assert [s["keyid"] for s in ab.signatures] == [keys["a.id"], keys["b.id"]]
    for pub in ("a.pub", "b.pub"):
        v = trust.verify_manifest(ab, trusted_keys=[keys[pub]], require_signed=True, repo="co",
                                  now=now, record=False)
        assert v.keyid == keys[pub[0] + ".id"]
    # changed content drops the stale signature instead of carrying it along
    bumped = sign_manifest(ab, load_private_key(keys["b.key"]), now=now)
    assert [s["keyid"] for s in bumped.signatures] == [keys["b.id"]]


def test_sign_writes_atomically_and_keeps_artifacts(repo: Path, keys) -> None:
    before = Manifest.load(repo)
    after = signed(repo, keys["a.key"])
    assert after.artifacts == before.artifacts and after.version == before.version + 1
    assert [p.name for p in repo.iterdir() if p.name.startswith(".manifest.")] == []
    with pytest.raises(ConfigError, match="not an unencrypted ed25519 private key"):
        sign_repository(repo, keys["a.pub"])               # the public key by mistake
    assert Manifest.load(repo) == after
