"""Every ordinary mistake on the command line: one line plus the fix, exit 1, no traceback, and under
``--json`` one JSON error object on stdout; nothing the user owns is overwritten.

Most cases run ``rtxpack.cli.main`` in this process (the same code a shell runs, without paying an
interpreter start per case); a few run the real ``python -m rtxpack.cli`` to cover the entry point.
"""
from __future__ import annotations

import json
import os
import socket
import stat
import tarfile
from pathlib import Path
from typing import Callable

import pytest

from fault_helpers import cli, data_of, engine_for, write_repo
from rtxpack.cli import main
from rtxpack.demo import models as examples


@pytest.fixture
def ws(tmp_path: Path) -> dict[str, Path]:
    """A workspace: a repository, a config with a real model, a plain file, a directory, a bundle."""
    d = data_of(30000)        # larger than a tar record (10 KiB): a cut at 2/3 lands inside its bytes
    write_repo(tmp_path / "repo", [(engine_for(d), d)])
    examples.mlp(tmp_path / "models" / "mlp.onnx")
    cfg = tmp_path / "rtxpack.toml"
    cfg.write_text('[project]\nname = "t"\nversion = "1"\n[[models]]\nname = "mlp"\nonnx = "models/mlp.onnx"\n'
                   '[[targets]]\nname = "p"\nbackend = "nvrtc"\ncompute_capabilities = ["8.9"]\n')
    (tmp_path / "notes.txt").write_text("the user's own file\n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.doc").write_text("irreplaceable\n")
    assert main(["bundle", "--repo", str(tmp_path / "repo"), "-o", str(tmp_path / "b.tar")]) == 0
    assert main(["bundle", "--repo", str(tmp_path / "repo"), "-o", str(tmp_path / "b.tar.gz")]) == 0
    for name in ("b.tar", "b.tar.gz"):
        raw = (tmp_path / name).read_bytes()
        (tmp_path / f"truncated{name[1:]}").write_bytes(raw[: len(raw) * 2 // 3])
    return {"root": tmp_path, "repo": tmp_path / "repo", "cfg": cfg, "file": tmp_path / "notes.txt",
            "dir": tmp_path / "folder", "mine": tmp_path / "mine", "onnx": tmp_path / "models" / "mlp.onnx"}


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# (id, argv from the workspace, environment, words the message must hold)
Case = tuple[str, Callable[[dict], list[str]], dict[str, str], tuple[str, ...]]
CASES: list[Case] = [
    ("config-is-dir", lambda w: ["plan", str(w["dir"])], {}, ("is a directory", "rtxpack.toml")),
    ("config-missing", lambda w: ["plan", str(w["root"] / "nope.toml")], {}, ("no such",)),
    ("config-not-toml", lambda w: ["plan", str(w["onnx"])], {}, ("not",)),
    ("build-repo-is-file", lambda w: ["build", str(w["cfg"]), "--repo", str(w["file"])], {}, ("is a file",)),
    ("build-repo-users-dir", lambda w: ["build", str(w["cfg"]), "--repo", str(w["mine"])], {},
     ("not an rtxpack repository", "--force")),
    ("build-jobs-zero", lambda w: ["build", str(w["cfg"]), "--repo", str(w["root"] / "r"), "-j", "0"], {},
     ("at least one job",)),
    ("build-unknown-cell", lambda w: ["build", str(w["cfg"]), "--repo", str(w["root"] / "r"), "--cell", "ffff"], {},
     ("--cell ffff",)),
    ("build-bad-shard", lambda w: ["build", str(w["cfg"]), "--repo", str(w["root"] / "r"), "--shard", "5/4"], {},
     ("--shard '5/4'",)),
    ("merge-part-not-repo", lambda w: ["merge", str(w["mine"]), "--repo", str(w["root"] / "m")], {},
     ("not an rtxpack repository",)),
    ("bundle-repo-is-file", lambda w: ["bundle", "--repo", str(w["file"]), "-o", str(w["root"] / "x.tar")], {},
     ("is a file",)),
    ("bundle-output-exists", lambda w: ["bundle", "--repo", str(w["repo"]), "-o", str(w["file"])], {},
     ("already exists", "--force")),
    ("bundle-output-is-dir", lambda w: ["bundle", "--repo", str(w["repo"]), "-o", str(w["dir"])], {},
     ("is a directory",)),
    ("bundle-bad-cc", lambda w: ["bundle", "--repo", str(w["repo"]), "--cc", "8.9,eight", "-o", str(w["root"] / "x.tar")],
     {}, ("'eight' is not a compute capability",)),
    ("keygen-out-is-file", lambda w: ["keygen", "--out", str(w["file"])], {}, ("is a file",)),
    ("sign-key-is-dir", lambda w: ["sign", "--repo", str(w["repo"]), "--key", str(w["dir"])], {}, ("is a directory",)),
    ("sign-key-not-a-key", lambda w: ["sign", "--repo", str(w["repo"]), "--key", str(w["file"])], {},
     ("not an unencrypted ed25519 private key",)),
    ("sign-repo-not-repo", lambda w: ["sign", "--repo", str(w["mine"]), "--key", str(w["file"])], {},
     ("not an rtxpack repository",)),
    ("install-repo-not-a-bundle", lambda w: ["install", "--repo", str(w["file"]), "--model", "mlp"], {},
     ("not an rtxpack bundle",)),
    ("install-truncated-bundle", lambda w: ["install", "--repo", str(w["root"] / "truncated.tar"), "--model", "mlp"],
     {"RTXPACK_DEVICE": "8.9"}, ("truncated.tar", "truncated")),
    ("install-truncated-gz-bundle", lambda w: ["install", "--repo", str(w["root"] / "truncated.tar.gz"),
                                               "--model", "mlp"], {"RTXPACK_DEVICE": "8.9"}, ("truncated.tar.gz",)),
    ("install-dir-not-repo", lambda w: ["install", "--repo", str(w["mine"]), "--model", "mlp"], {},
     ("has no manifest.json",)),
    ("install-unknown-model", lambda w: ["install", "--repo", str(w["repo"]), "--model", "resnet"],
     {"RTXPACK_DEVICE": "8.9"}, ("no model 'resnet'", "it has: mlp")),
    ("install-gpu-out-of-range", lambda w: ["install", "--repo", str(w["repo"]), "--model", "mlp", "--gpu", "5"],
     {"RTXPACK_DEVICE": "8.9"}, ("no GPU 5",)),
    ("install-gpu-negative", lambda w: ["install", "--repo", str(w["repo"]), "--model", "mlp", "--gpu", "-1"],
     {"RTXPACK_DEVICE": "8.9"}, ("no GPU -1",)),
    ("install-onnx-is-dir", lambda w: ["install", "--repo", str(w["repo"]), "--model", "mlp", "--onnx", str(w["dir"])],
     {"RTXPACK_DEVICE": "8.9"}, ("is a directory",)),
    ("install-onnx-not-onnx", lambda w: ["install", "--repo", str(w["repo"]), "--model", "mlp", "--onnx", str(w["file"])],
     {"RTXPACK_DEVICE": "8.9"}, ("is not an ONNX model",)),
    ("install-trusted-key-is-dir", lambda w: ["install", "--repo", str(w["repo"]), "--model", "mlp",
                                              "--trusted-key", str(w["dir"])], {}, ("is a directory",)),
    ("inspect-dir", lambda w: ["inspect", str(w["dir"])], {}, ("is a directory",)),
    ("inspect-not-a-plan", lambda w: ["inspect", str(w["file"])], {}, ("not a plan",)),
    ("warm-missing-repo", lambda w: ["warm", str(w["cfg"]), "--repo", str(w["root"] / "nope")], {},
     ("no such repository directory",)),
    ("cache-prune-bad-size", lambda w: ["cache", "prune", "--max-size", "lots"], {}, ("not a size",)),
    ("env-device", lambda w: ["install", "--repo", str(w["repo"]), "--model", "mlp"], {"RTXPACK_DEVICE": "banana"},
     ("RTXPACK_DEVICE",)),
    ("env-offline", lambda w: ["install", "--repo", str(w["repo"]), "--model", "mlp"],
     {"RTXPACK_OFFLINE": "maybe", "RTXPACK_DEVICE": "8.9"}, ("RTXPACK_OFFLINE",)),
    ("parser-missing-argument", lambda w: ["install", "--repo", str(w["repo"])], {}, ("required", "--model")),
    ("parser-unknown-command", lambda w: ["instal"], {}, ("invalid choice",)),
    ("parser-bad-int", lambda w: ["install", "--repo", "r", "--model", "m", "--gpu", "first"], {},
     ("invalid int value",)),
    ("parser-bad-choice", lambda w: ["install", "--repo", "r", "--model", "m", "--backend", "cuda"], {},
     ("invalid choice",)),
]


def _run(argv: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_mistake_is_one_line_plus_fix(case: Case, ws: dict, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture) -> None:
    _, argv_of, env, words = case
    before = {p: p.read_bytes() for p in ws["root"].rglob("*") if p.is_file() and "cache" not in p.parts}
    rc, out, err = _run(argv_of(ws), env, monkeypatch, capsys)
    assert rc == 1, (out, err)
    lines = [ln for ln in err.splitlines() if not ln.startswith("rtxpack: warning: ")]
    assert len(lines) == 2 and lines[0].startswith("rtxpack: error: ") and lines[1].startswith("  fix: "), err
    assert "Traceback" not in err and "a bug in rtxpack" not in err and out == ""
    for w in words:
        assert w in err, (w, err)
    # nothing the user owns changed
    for p, data in before.items():
        assert p.read_bytes() == data, p

    rc, out, err = _run(argv_of(ws) + ["--json"], env, monkeypatch, capsys)
    assert rc == 1
    obj = json.loads(out)
    assert obj["error"] and obj["fix"] and all(w in obj["message"] + obj["fix"] for w in words), obj
    assert "Traceback" not in err
    rc, out, err = _run(["--json"] + argv_of(ws), env, monkeypatch, capsys)   # where a hurried user puts it
    assert rc == 1 and json.loads(out)["error"] == obj["error"] and "Traceback" not in err, out


def test_real_process_mistakes(ws: dict) -> None:
    """The entry point itself (``python -m rtxpack.cli``): a refused path and a parser error, text and JSON."""
    r = cli("bundle", "--repo", str(ws["repo"]), "-o", str(ws["file"]))
    assert r.returncode == 1 and r.stderr.splitlines() == [
        f"rtxpack: error: -o {ws['file']}: already exists; not overwriting it",
        "  fix: choose another path, or pass --force to replace it"]
    r = cli("install", "--json", "--repo", str(ws["repo"]))
    assert r.returncode == 1 and json.loads(r.stdout)["error"] == "UsageError" and r.stderr == ""
    r = cli("plan", str(ws["dir"]), "--json")
    assert r.returncode == 1 and "is a directory" in json.loads(r.stdout)["message"] and "Traceback" not in r.stderr


def test_unreachable_url_is_said_once(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    port = _closed_port()
    monkeypatch.setenv("RTXPACK_RETRIES", "3")
    rc, out, err = _run(["install", "--repo", f"http://127.0.0.1:{port}/repo", "--model", "mlp"], {}, monkeypatch,
                        capsys)
    assert rc == 1
    first = err.splitlines()[0]
    assert first.count("connection refused") == 1 and f"127.0.0.1:{port}" in first and "(4 attempts)" in first, first
    assert "HTTPConnectionPool" not in first and "Max retries" not in first


def test_backend_filter_names_that_backend(ws: dict, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture) -> None:
    rc, out, err = _run(["install", "--repo", str(ws["repo"]), "--model", "mlp", "--backend", "nvrtc"],
                        {"RTXPACK_DEVICE": "8.9"}, monkeypatch, capsys)
    assert rc == 1
    assert "no nvrtc artifact of model 'mlp'" in err and "TensorRT-RTX artifact" not in err
    assert "drop --backend" in err


def test_unsigned_notice_is_one_formatted_line(ws: dict) -> None:
    r = cli("install", "--repo", str(ws["repo"]), "--model", "mlp", RTXPACK_DEVICE="8.9")
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    warn = [ln for ln in lines if "signature" in ln]
    assert len(warn) == 1 and warn[0].startswith(f"rtxpack: warning: {ws['repo']} is not signed"), lines
    assert "--trusted-key" in warn[0]
    assert not any("warnings.warn" in ln or "trust.py" in ln or "UserWarning" in ln for ln in lines), lines


def test_every_cell_skipped_is_an_error_unless_allowed(ws: dict, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture) -> None:
    cfg = ws["root"] / "stripped.toml"
    cfg.write_text(ws["cfg"].read_text().replace('backend = "nvrtc"', 'backend = "tensorrt-rtx"')
                   + "strip_weights = true\n")
    from rtxpack.core.device import detect_gpus

    if detect_gpus()[0]:
        pytest.skip("this machine has a GPU: the stripped cell is buildable here")
    repo = ws["root"] / "built"
    rc, out, err = _run(["build", str(cfg), "--repo", str(repo)], {}, monkeypatch, capsys)
    assert rc == 1 and "every selected cell was skipped" in err and "STRIP_PLAN" in err and "--allow-all-skipped" in err
    rc, out, err = _run(["build", str(cfg), "--repo", str(repo), "--json"], {}, monkeypatch, capsys)
    assert rc == 1 and json.loads(out)["skipped"] == 1 and "every selected cell" in json.loads(out)["error"]
    rc, out, err = _run(["build", str(cfg), "--repo", str(repo), "--allow-all-skipped"], {}, monkeypatch, capsys)
    assert rc == 0


def test_unexpected_errors_are_one_line_too(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """A bug (any exception rtxpack did not expect) still ends as one line; RTXPACK_DEBUG=1 shows it."""
    from rtxpack.cli import machine

    def boom(args):  # type: ignore[no-untyped-def]
        raise KeyError("gpus")

    monkeypatch.setattr(machine, "cmd_detect", boom)
    rc, out, err = _run(["detect"], {}, monkeypatch, capsys)
    assert rc == 1 and err.startswith("rtxpack: error: unexpected KeyError") and "RTXPACK_DEBUG=1" in err
    monkeypatch.setenv("RTXPACK_DEBUG", "1")
    with pytest.raises(KeyError):
        main(["detect"])


# ---- nothing the user owns is lost ----------------------------------------------------------------
def test_bundle_force_and_modes(ws: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    old = os.umask(0o077)                     # a strict umask must not make a bundle unreadable to others
    try:
        out = ws["root"] / "new.tar.gz"
        assert main(["bundle", "--repo", str(ws["repo"]), "-o", str(out)]) == 0
        assert stat.S_IMODE(out.stat().st_mode) == 0o644
        assert main(["bundle", "--repo", str(ws["repo"]), "-o", str(ws["file"]), "--force"]) == 0
        with tarfile.open(ws["file"]) as t:
            assert "manifest.json" in t.getnames()
        assert main(["keygen", "--out", str(ws["root"] / "keys")]) == 0
        assert stat.S_IMODE((ws["root"] / "keys" / "rtxpack.key").stat().st_mode) == 0o600
        assert stat.S_IMODE((ws["root"] / "keys" / "rtxpack.pub").stat().st_mode) == 0o644
    finally:
        os.umask(old)
    capsys.readouterr()


def test_build_into_a_users_directory_needs_force(ws: dict, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture) -> None:
    # an interrupted first build leaves only rtxpack's own files: that directory is ours to continue
    partial = ws["root"] / "partial"
    (partial / ".tmp").mkdir(parents=True)
    (partial / ".rtxpack.lock").touch()
    from rtxpack.cli.output import _is_repository

    assert _is_repository(partial) and not _is_repository(ws["mine"])
    rc, out, err = _run(["merge", str(ws["repo"]), "--repo", str(ws["mine"])], {}, monkeypatch, capsys)
    assert rc == 1 and "--force" in err
    assert main(["merge", str(ws["repo"]), "--repo", str(ws["mine"]), "--force"]) == 0
    assert (ws["mine"] / "thesis.doc").read_text() == "irreplaceable\n" and (ws["mine"] / "manifest.json").is_file()


def test_sign_key_from_stdin(ws: dict) -> None:
    """A CI secret piped in (``--key -``): signs, and no key file is ever written."""
    from rtxpack.core.signing import generate_keypair

    pem, pub, kid = generate_keypair()
    (ws["root"] / "ci.pub").write_bytes(pub)
    import subprocess
    import sys

    from fault_helpers import child_env

    r = subprocess.run([sys.executable, "-m", "rtxpack.cli", "sign", "--repo", str(ws["repo"]), "--key", "-", "--json"],
                       input=pem, capture_output=True, env=child_env())
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["keyid"] == kid
    r = cli("install", "--repo", str(ws["repo"]), "--model", "mlp", "--trusted-key", str(ws["root"] / "ci.pub"),
            RTXPACK_DEVICE="8.9")
    assert r.returncode == 0 and "not signed" not in r.stderr, r.stderr


def test_load_jit_failure_does_not_ask_for_onnx(ws: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """load(onnx=...) whose JIT build fails says so, and never tells the caller to pass onnx=."""
    from rtxpack.core import registry
    from rtxpack.core.errors import ResolveError
    from rtxpack.installer.loader import load

    if registry.get("tensorrt-rtx").probe() is None:
        pytest.skip("tensorrt-rtx is not installed")
    from rtxpack.core.device import detect_gpus

    if detect_gpus()[0]:
        pytest.skip("a GPU is here: the JIT build would succeed")
    monkeypatch.setenv("RTXPACK_DEVICE", "8.9")
    with pytest.raises(ResolveError) as ei:
        load("other", repo=str(ws["repo"]), onnx=ws["onnx"], backend="tensorrt-rtx")
    assert "pass onnx" not in (ei.value.fix or "") and str(ws["onnx"]) in ei.value.fix


def test_selftest_tells_no_driver_from_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    from rtxpack.core.device import detect_gpus
    from rtxpack.installer.selftest import run_selftest

    if detect_gpus()[0]:
        pytest.skip("this machine has a GPU")
    monkeypatch.setenv("RTXPACK_DEVICE", "8.9")    # another PC's GPU: ignored, this machine is tested
    report = run_selftest()
    assert report["status"] == "no-gpu" and report["ok"]
    assert not [s for s in report["steps"] if s["status"] == "fail"], report["steps"]
    assert "no NVIDIA GPU/driver" in report["summary"] and "RTXPACK_DEVICE is ignored" in report["steps"][0]["detail"]

