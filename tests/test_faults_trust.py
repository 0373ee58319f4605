"""The fault suite, part 4: trust that holds, safe output, every variable checked.

6. Trust: rollback keyed by the publisher (key + names), whatever URL, host alias, directory or
   bundle an old manifest comes through; ``trusted_keys=[]``; signatures checked on raw bytes
   before parsing; ``sign --expires-in`` nonsense; maximum manifest age; unsafe artifact paths;
   credentials in URLs; key file hygiene.
7. Safe output: manifest strings with escape sequences, bidi overrides and undecodable text.
8. Every ``RTXPACK_*`` variable: negative, zero, nan, inf and garbage values (and hypothesis).

Each test carries ``@fault(name, expected, category)`` for docs/RELIABILITY.md.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fault_helpers import H100, cli, data_of, device, edit_first_artifact, engine_for, fault, one_engine, write_repo
from rtxpack.core import config
from rtxpack.core.errors import ConfigError, ManifestError, RtxpackError, SignatureError
from rtxpack.core.manifest import Manifest
from rtxpack.core.signing import load_private_key, sign_manifest
from rtxpack.farm.bundle import create_bundle
from rtxpack.farm.sign import keygen, sign_repository
from rtxpack.installer import trust
from rtxpack.installer.context import InstallContext
from rtxpack.installer.pipeline import install
from rtxpack.installer.repository import open_repository
from rtxpack.installer.store import Store

DEVICE = "8.9"
C6, C7, C8 = "6. trust that holds", "7. safe output", "8. every variable checked"




@pytest.fixture
def key(tmp_path: Path):
    k, pub, kid = keygen(tmp_path / "keys")
    return {"key": k, "pub": pub, "id": kid}


# ================================================================================================
# 6. trust that holds
# ================================================================================================
@fault("an older signed manifest through another spelling of the same publisher (host alias, other URL path, "
       "a directory copy, a renamed bundle)",
       "refused as a rollback: the state is keyed by signing key + manifest name + project name, not by location", C6)
@pytest.mark.parametrize("via", ["localhost alias", "another URL path", "directory copy", "renamed bundle"])
def test_rollback_whatever_the_spelling(nginx, tmp_path: Path, key, via: str) -> None:
    one_engine(nginx.root, 3000, seed=1)
    sign_repository(nginx.root, key["key"])                       # v2
    old = tmp_path / "old"
    shutil.copytree(nginx.root, old)
    sign_repository(nginx.root, key["key"])                       # v3
    install(nginx.url, "mlp", device=device(), progress=False, trusted_keys=[key["pub"]])
    assert trust.accepted_version(key["id"]) == 3
    if via == "localhost alias":
        (nginx.root / "manifest.json").write_bytes((old / "manifest.json").read_bytes())
        where = nginx.url.replace("127.0.0.1", "localhost")
    elif via == "another URL path":
        shutil.copytree(old, nginx.root / "mirror")
        where = nginx.url + "/mirror/"
    elif via == "directory copy":
        where = str(old)
    else:
        create_bundle(old, tmp_path / "release-2099.tar.gz")
        where = str(tmp_path / "release-2099.tar.gz")
    with pytest.raises(SignatureError, match="rollback") as ei:
        install(where, "mlp", device=device(), progress=False, trusted_keys=[key["pub"]])
    assert ei.value.version == 2 and ei.value.accepted_version == 3
    assert trust.accepted_version(key["id"]) == 3


@fault("rollback state with a custom store (load(store=...))",
       "kept in that store's state/trust, none in the default cache", C6)
def test_rollback_state_lives_in_the_given_store(tmp_path: Path, key) -> None:
    one_engine(tmp_path / "repo", 3000, seed=2)
    sign_repository(tmp_path / "repo", key["key"])
    open_repository(tmp_path / "repo", store=tmp_path / "custom", trusted_keys=[key["pub"]])
    assert trust.accepted_version(key["id"], store=Store(tmp_path / "custom")) == 2
    assert trust.accepted_version(key["id"]) is None
    assert not (Path(os.environ["RTXPACK_CACHE_DIR"]) / "state").exists()


@fault("trusted_keys=[] passed explicitly (API and load())",
       "trusts no key: an unsigned and a signed repository are both refused, never 'unsigned is fine'", C6)
def test_empty_key_list_trusts_nothing(tmp_path: Path, key) -> None:
    import rtxpack

    one_engine(tmp_path / "unsigned", 3000, seed=3)
    one_engine(tmp_path / "signed", 3000, seed=3)
    sign_repository(tmp_path / "signed", key["key"])
    for repo in (tmp_path / "unsigned", tmp_path / "signed"):
        with pytest.raises(SignatureError, match=r"trusted_keys=\[\] trusts no key"):
            open_repository(repo, trusted_keys=[])
        with pytest.raises(SignatureError, match="trusts no key"):
            install(str(repo), "mlp", device=device(), progress=False, trusted_keys=[])
        with pytest.raises(SignatureError, match="trusts no key"):
            rtxpack.load("mlp", repo=repo, trusted_keys=[], device=device())


@fault("a tampered signed manifest with 3,000 entries (directory repository, and inside a bundle)",
       "the signature is checked on the raw bytes first: refused before any entry is parsed or validated", C6)
@pytest.mark.parametrize("form", ["directory", "bundle"])
def test_signature_before_parsing(tmp_path: Path, key, monkeypatch, form: str) -> None:
    import io
    import tarfile

    from rtxpack.core import manifest as manifest_mod

    one_engine(tmp_path / "repo", 3000, seed=4)
    arts = [engine_for(data_of(10, i), model=f"m{i}") for i in range(3000)]
    Manifest(artifacts=tuple(arts)).save(tmp_path / "repo")
    sign_repository(tmp_path / "repo", key["key"])
    edit_first_artifact(tmp_path / "repo", size=arts[0].size + 1)
    where = tmp_path / "repo"
    if form == "bundle":
        raw = (tmp_path / "repo" / "manifest.json").read_bytes()
        where = tmp_path / "b.tar"
        with tarfile.open(where, "w") as t:
            ti = tarfile.TarInfo("manifest.json")
            ti.size = len(raw)
            t.addfile(ti, io.BytesIO(raw))
    parsed: list[int] = []
    real = manifest_mod.Artifact.from_dict
    monkeypatch.setattr(manifest_mod.Artifact, "from_dict", classmethod(
        lambda cls, d, where="artifact": parsed.append(1) or real.__func__(cls, d, where=where)))
    with pytest.raises(SignatureError, match="does not verify"):
        open_repository(where, trusted_keys=[key["pub"]])
    assert parsed == []


@fault("`rtxpack sign --expires-in` given inf, nan, a negative, zero, garbage or beyond 3650 days",
       "one clear error naming --expires-in and the accepted range, nothing signed; more than a year warns", C6)
@pytest.mark.parametrize("value", ["inf", "nan", "-3", "0", "abc", "1e9", "3651"])
def test_expires_in_nonsense(tmp_path: Path, key, value: str) -> None:
    one_engine(tmp_path / "repo", 3000, seed=5)
    before = (tmp_path / "repo" / "manifest.json").read_bytes()
    r = cli("sign", "--repo", str(tmp_path / "repo"), "--key", str(key["key"]), "--expires-in", value)
    assert r.returncode == 1 and "--expires-in" in r.stderr and "<= 3650" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and (tmp_path / "repo" / "manifest.json").read_bytes() == before


@fault("`rtxpack sign --expires-in 400`", "signs, with a warning that a stale mirror may serve it that long", C6)
def test_expires_in_long_warns(tmp_path: Path, key) -> None:
    one_engine(tmp_path / "repo", 3000, seed=6)
    r = cli("sign", "--repo", str(tmp_path / "repo"), "--key", str(key["key"]), "--expires-in", "400")
    assert r.returncode == 0 and "rtxpack: warning:" in r.stderr and "400 days" in r.stderr, r.stderr


@fault("a client demanding a maximum manifest age (--max-manifest-age, RTXPACK_MAX_MANIFEST_AGE_DAYS, load())",
       "a manifest signed longer ago is refused naming its age; a fresh one passes; nonsense ages are a clear error",
       C6)
def test_max_manifest_age(tmp_path: Path, key, monkeypatch) -> None:
    one_engine(tmp_path / "repo", 3000, seed=7)
    m = sign_manifest(Manifest.load(tmp_path / "repo"), load_private_key(key["key"]),
                      now=datetime.now(timezone.utc) - timedelta(days=10))
    m.save(tmp_path / "repo")
    args = ("resolve", "--repo", str(tmp_path / "repo"), "--model", "mlp", "--trusted-key", str(key["pub"]))
    r = cli(*args, "--max-manifest-age", "5", RTXPACK_DEVICE=DEVICE)
    assert r.returncode == 1 and "signed 10 days ago" in r.stderr and "5 days" in r.stderr, r.stderr
    assert cli(*args, RTXPACK_DEVICE=DEVICE, RTXPACK_MAX_MANIFEST_AGE_DAYS="5").returncode == 1
    assert cli(*args, "--max-manifest-age", "20", RTXPACK_DEVICE=DEVICE).returncode == 0
    r = cli(*args, "--max-manifest-age", "nan", RTXPACK_DEVICE=DEVICE)
    assert r.returncode == 1 and "maximum manifest age" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(SignatureError, match="too-old|signed 10 days ago"):
        open_repository(tmp_path / "repo", trusted_keys=[key["pub"]], max_manifest_age_days=1)


@fault("artifact paths with percent-encoding, Windows device names, stream colons, trailing dots or spaces",
       "refused when the manifest is validated: ManifestError naming the entry and the problem", C6)
@pytest.mark.parametrize("path", ["blobs/%2e%2e/x", "blobs/CON", "blobs/nul.txt", "blobs/COM1.bin", "blobs/lpt9",
                                  "blobs/aux.tar.gz", "blobs/x:stream", "blobs/x.", "blobs/x ", "blobs/a?b",
                                  "blobs/a#b", "blobs/\x1b[2Jx", "C:x"])
def test_unsafe_artifact_paths(tmp_path: Path, path: str) -> None:
    e, _ = one_engine(tmp_path / "repo", 3000, seed=8)
    edit_first_artifact(tmp_path / "repo", path=path)
    with pytest.raises(ManifestError) as ei:
        open_repository(tmp_path / "repo")
    assert e.id in str(ei.value) and repr(path) in str(ei.value)


@fault("a repository URL with credentials (user:secret@host), on success and on every failure path",
       "the secret is in no output (text, --json, errors with retries), no file under the cache, no provenance", C6)
def test_credentials_never_leak(faultserver, tmp_path: Path, reference_backend, monkeypatch) -> None:
    import rtxpack

    e, data = one_engine(tmp_path / "repo", 3000, seed=9)
    faultserver.files["/manifest.json"] = (tmp_path / "repo" / "manifest.json").read_bytes()
    faultserver.files["/" + e.path] = data
    url = faultserver.url.replace("http://", "http://alice:s3cr3t-t0ken@")
    outs = []
    faultserver.script("/" + e.path, ["cut:100", "status:500", "ok"])
    r = cli("install", "--repo", url, "--model", "mlp", RTXPACK_DEVICE=DEVICE, RTXPACK_RETRIES="3")
    outs.append(r.stdout + r.stderr)
    assert r.returncode == 0, r.stderr
    Store().remove(e.sha256)
    faultserver.script("/" + e.path, ["status:500"] * 10)
    for extra in ((), ("--json",)):
        r = cli("install", "--repo", url, "--model", "mlp", *extra, RTXPACK_DEVICE=DEVICE, RTXPACK_RETRIES="1")
        assert r.returncode == 1
        outs.append(r.stdout + r.stderr)
    r = cli("resolve", "--repo", url + "/nope", "--model", "mlp", "--json", RTXPACK_DEVICE=DEVICE)
    outs.append(r.stdout + r.stderr)
    monkeypatch.setenv("RTXPACK_DEVICE", DEVICE)
    try:
        rtxpack.load("mlp", repo=url)
    except RtxpackError as err:
        outs.append(str(err) + json.dumps(err.to_dict(), default=str))
    import refbackend
    from rtxpack.demo import models as examples

    refbackend.publish(tmp_path / "ref", "mlp", examples.mlp(tmp_path / "mlp.onnx"))
    for p in (tmp_path / "ref").rglob("*"):
        if p.is_file():
            faultserver.files["/ref/" + p.relative_to(tmp_path / "ref").as_posix()] = p.read_bytes()
    monkeypatch.setenv("RTXPACK_DEVICE", json.dumps(H100))
    with rtxpack.load("mlp", repo=url + "/ref") as s:                 # success: the provenance is clean too
        outs.append(json.dumps(s.provenance.to_dict(), default=str))
        assert s.provenance.path == "repository"
    assert all("s3cr3t" not in o for o in outs), [o for o in outs if "s3cr3t" in o][0]
    assert any("***@" in o for o in outs)
    for p in Path(os.environ["RTXPACK_CACHE_DIR"]).rglob("*"):
        if p.is_file():
            assert b"s3cr3t" not in p.read_bytes(), p


@fault("a private signing key readable by group or others", "ssh's warning: UNPROTECTED PRIVATE KEY FILE, with the "
       "chmod fix; a 0600 key signs silently", C6)
def test_private_key_permissions(tmp_path: Path, key) -> None:
    one_engine(tmp_path / "repo", 3000, seed=10)
    os.chmod(key["key"], 0o644)
    r = cli("sign", "--repo", str(tmp_path / "repo"), "--key", str(key["key"]))
    assert r.returncode == 0 and "UNPROTECTED PRIVATE KEY FILE" in r.stderr and "chmod 600" in r.stderr, r.stderr
    os.chmod(key["key"], 0o600)
    r = cli("sign", "--repo", str(tmp_path / "repo"), "--key", str(key["key"]))
    assert r.returncode == 0 and "UNPROTECTED" not in r.stderr


@fault("key paths that are a fifo or a device (signing key, trusted key)",
       "refused without reading (never blocks, never reads /dev/zero forever): one error naming the path", C6)
@pytest.mark.parametrize("which", ["--key", "--trusted-key"])
@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_key_path_not_a_file(tmp_path: Path, key, which: str, kind: str) -> None:
    one_engine(tmp_path / "repo", 3000, seed=11)
    bad = tmp_path / "bad.key"
    os.mkfifo(bad) if kind == "fifo" else bad.symlink_to("/dev/zero")
    if which == "--key":
        r = cli("sign", "--repo", str(tmp_path / "repo"), "--key", str(bad), timeout=30)
    else:
        r = cli("resolve", "--repo", str(tmp_path / "repo"), "--model", "mlp", "--trusted-key", str(bad),
                timeout=30, RTXPACK_DEVICE=DEVICE)
    assert r.returncode == 1 and "refused without reading it" in r.stderr and str(bad) in r.stderr, r.stderr


# ================================================================================================
# 7. safe output
# ================================================================================================
@fault("manifest strings with terminal escape sequences, bidi overrides and lone surrogates "
       "(a GPU name, an id that validation refuses, an undecodable id)",
       "printed escaped (\\x1b, \\u202e, \\udc80...) by install, resolve --explain and errors; the CLI never crashes",
       C7)
def test_manifest_strings_are_escaped(tmp_path: Path) -> None:
    from fault_helpers import cache_for

    data = data_of(3000, 12)
    e = engine_for(data)
    cd = data_of(100, 13)
    rc = cache_for(e, cd, gpu_name="\x1b[2J\x1b]0;pwned\x07 RTX \u202eevil")
    write_repo(tmp_path / "repo", [(e, data), (rc, cd)])
    r = cli("resolve", "--repo", str(tmp_path / "repo"), "--model", "mlp", "--explain", RTXPACK_DEVICE=DEVICE)
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout and "\u202e" not in r.stdout and "\\x1b[2J" in r.stdout, r.stdout
    doc = json.loads((tmp_path / "repo" / "manifest.json").read_text())
    doc["artifacts"][0]["id"] = "mlp/engine/\x1b[31mred"
    (tmp_path / "repo" / "manifest.json").write_text(json.dumps(doc))
    r = cli("install", "--repo", str(tmp_path / "repo"), "--model", "mlp", RTXPACK_DEVICE=DEVICE)
    assert r.returncode == 1 and "\x1b" not in r.stderr and "control characters" in r.stderr, r.stderr
    assert r.stderr.count("\n") == 2                                      # one line + the fix
    doc["artifacts"][0]["id"] = "mlp/engine/\ud800\u202e"
    raw = json.dumps(doc)                                                 # \ud800 stays an escape in the JSON
    (tmp_path / "repo" / "manifest.json").write_text(raw)
    r = cli("install", "--repo", str(tmp_path / "repo"), "--model", "mlp", RTXPACK_DEVICE=DEVICE)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "\\ud800\\u202e" in r.stdout
    r = cli("install", "--repo", str(tmp_path / "repo"), "--model", "mlp", "--json", RTXPACK_DEVICE=DEVICE)
    assert r.returncode == 0 and json.loads(r.stdout)["chosen"]["id"] == "mlp/engine/\ud800\u202e"


@fault("garbage in the store's metadata (escape sequences, undecodable bytes) and a cache path with "
       "undecodable bytes", "`cache list` prints them escaped, never crashes", C7)
def test_store_strings_are_escaped(tmp_path: Path) -> None:
    store = Store()
    path = store.add_bytes(b"blob", meta={"model": "m\x1b[2J", "kind": "engine", "id": "x\u202ey"})
    assert path.exists()
    r = cli("cache", "list")
    assert r.returncode == 0 and "\x1b" not in r.stdout and "m\\x1b[2J" in r.stdout, r.stdout
    env_dir = os.fsencode(str(tmp_path)) + b"/cache-\xff\xfe"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    environb = {os.fsencode(k): os.fsencode(v) for k, v in env.items()}
    environb[b"RTXPACK_CACHE_DIR"] = env_dir
    r2 = subprocess.run([sys.executable, "-m", "rtxpack.cli", "cache", "list"], env=environb, capture_output=True)
    assert r2.returncode == 0 and b"Traceback" not in r2.stderr, r2.stderr


# ================================================================================================
# 8. every variable checked
# ================================================================================================
NUMERIC = {
    "RTXPACK_CONNECT_TIMEOUT": config.connect_timeout,
    "RTXPACK_READ_TIMEOUT": config.read_timeout,
    "RTXPACK_DOWNLOAD_DEADLINE": config.download_deadline,
    "RTXPACK_RETRIES": config.max_retries,
    "RTXPACK_RETRY_BACKOFF": config.retry_backoff,
    "RTXPACK_MAX_MANIFEST_AGE_DAYS": config.max_manifest_age_days,
}
BAD = ["-1", "nan", "inf", "-inf", "abc", "1e999", "0x10", "10 s"]


@fault("every numeric RTXPACK_* variable set to a negative, nan, inf, garbage or out-of-range value",
       "ConfigError naming the variable, the value and the accepted range (read at call time)", C8)
@pytest.mark.parametrize("name", sorted(NUMERIC))
def test_numeric_variables_are_validated(monkeypatch, name: str) -> None:
    for value in BAD + (["0"] if name not in ("RTXPACK_RETRIES", "RTXPACK_RETRY_BACKOFF") else ["101"]
                        if name == "RTXPACK_RETRIES" else ["61"]):
        monkeypatch.setenv(name, value)
        with pytest.raises(ConfigError) as ei:
            NUMERIC[name]()
        msg = str(ei.value)
        assert name in msg and repr(value) in msg and "<=" in msg and ei.value.variable == name, msg
    monkeypatch.setenv(name, "")
    NUMERIC[name]()                                       # blank: the default


@fault("a bad RTXPACK_* value on the command line (each numeric variable, a flag, RTXPACK_DEVICE, "
       "RTXPACK_CACHE_DIR, RTXPACK_CACHE_MAX_SIZE, and RTXPACK_DEBUG itself)",
       "exit 1 with exactly one `rtxpack: error:` line naming the variable and its range plus the fix; no traceback",
       C8)
@pytest.mark.parametrize("name,value", [(n, "nan") for n in sorted(NUMERIC)] + [
    ("RTXPACK_OFFLINE", "maybe"), ("RTXPACK_REQUIRE_SIGNED", "2"), ("RTXPACK_DEVICE", '{"gpus": 5}'),
    ("RTXPACK_DEVICE", "[]"), ("RTXPACK_CACHE_DIR", "   "), ("RTXPACK_DEBUG", "perhaps")])
def test_bad_variable_on_the_cli(nginx, name: str, value: str) -> None:
    one_engine(nginx.root, 3000, seed=14)
    extra = {"RTXPACK_DEVICE": DEVICE, name: value}
    if name == "RTXPACK_DEBUG":
        extra["RTXPACK_READ_TIMEOUT"] = "-5"
    r = cli("install", "--repo", nginx.url, "--model", "mlp", **extra)
    shown = "RTXPACK_READ_TIMEOUT" if name == "RTXPACK_DEBUG" else name
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if not ln.startswith("rtxpack: warning:")]
    assert len(lines) == 2 and lines[0].startswith("rtxpack: error:") and shown in lines[0], r.stderr
    assert lines[1].startswith("  fix:"), r.stderr


@fault("RTXPACK_CACHE_MAX_SIZE and RTXPACK_CACHE_DIR garbage, read through config",
       "ConfigError naming the variable", C8)
def test_size_and_path_variables(monkeypatch) -> None:
    monkeypatch.setenv("RTXPACK_CACHE_MAX_SIZE", "12 parsecs")
    with pytest.raises(ConfigError, match="RTXPACK_CACHE_MAX_SIZE"):
        config.cache_max_size()
    monkeypatch.setenv("RTXPACK_CACHE_MAX_SIZE", "2GiB")
    assert config.cache_max_size() == 2 << 30
    monkeypatch.setenv("RTXPACK_CACHE_DIR", " \t")
    with pytest.raises(ConfigError, match="RTXPACK_CACHE_DIR"):
        config.cache_dir()


@fault("arbitrary text in the numeric variables (hypothesis, 400 values)",
       "either a finite value inside the documented range, or ConfigError naming the variable", C8)
@settings(max_examples=400, deadline=None, database=None)
@given(name=st.sampled_from(sorted(NUMERIC)), value=st.text(max_size=12))
def test_fuzzed_variables(name: str, value: str) -> None:
    if "\0" in value:
        return                                             # the environment cannot hold a NUL
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        try:
            x = NUMERIC[name]()
        except ConfigError as e:
            assert e.variable == name and name in str(e)
            return
        assert x is None or (x == x and abs(x) != float("inf") and x >= 0)
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


@fault("InstallContext keywords with nonsense (max_manifest_age_days=-1, inf)",
       "ConfigError naming the option", C8)
def test_api_options_are_validated() -> None:
    for bad in (-1, float("inf"), float("nan"), "soon"):
        with pytest.raises(ConfigError, match="maximum manifest age"):
            InstallContext.create(max_manifest_age_days=bad)
