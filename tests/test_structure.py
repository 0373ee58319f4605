"""The structure issue's promises, tested from outside: one registry every part reads, one context
whose store receives every file the installer writes, an injectable clock, declared error fields."""
from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

import rtxpack
from rtxpack.backends.inspect import plan_info
from rtxpack.cli import build_parser
from rtxpack.core import registry
from rtxpack.core.errors import ChecksumMismatch, ConfigError, ManifestError, RtxpackError, SignatureError
from rtxpack.core.manifest import Manifest
from rtxpack.core.resolve import Target, resolve
from rtxpack.demo import models as examples
from rtxpack.farm.sign import keygen, sign_repository
from rtxpack.installer.repository import open_repository

import refbackend
from test_runtime import H100


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} if root.exists() else set()


# ---- the registry ---------------------------------------------------------------------------------
def test_a_registered_backend_is_known_everywhere(tmp_path: Path, reference_backend) -> None:
    onnx = examples.mlp(tmp_path / "mlp.onnx")
    art = refbackend.publish(tmp_path / "repo", "mlp", onnx, ccs=("9.0",))
    # manifest validation accepts its name, the resolver ranks it, the CLI offers it, inspect sniffs it
    m = Manifest.load(tmp_path / "repo")
    assert m.artifacts[0].backend == "reference"
    res = resolve(m, Target(cc=(9, 0), os="linux", backends=(("reference", "1.0.0"),)), "mlp")
    assert res.best is not None and res.best.artifact.id == art.id and res.best.tier == "exact-cc"
    choices = build_parser()._subparsers._group_actions[0].choices["install"]._option_string_actions["--backend"].choices
    assert "reference" in choices
    plan = (tmp_path / "repo" / art.path).read_bytes()
    assert plan_info(plan, "x")["backend"] == "reference"
    # the farm's config takes it as a target backend
    from rtxpack.farm.config import load_config

    cfg = tmp_path / "rtxpack.toml"
    cfg.write_text('[[models]]\nname = "m"\nonnx = "mlp.onnx"\n[[targets]]\nname = "t"\nbackend = "reference"\n'
                   'compute_capabilities = ["9.0"]\n')
    assert load_config(cfg).targets[0].backend == "reference"


def test_an_unregistered_backend_is_refused_by_name(tmp_path: Path) -> None:
    onnx = examples.mlp(tmp_path / "mlp.onnx")
    refbackend.publish(tmp_path / "repo", "mlp", onnx, ccs=("9.0",))   # written while nobody checks
    with pytest.raises(ManifestError, match="backend 'reference' is not one of tensorrt-rtx, nvrtc"):
        Manifest.load(tmp_path / "repo")


def test_registry_rules_are_the_only_cc_table() -> None:
    trt = registry.get("tensorrt-rtx")
    assert not trt.supports((9, 0)) and trt.supports((8, 9)) and registry.get("nvrtc").supports((9, 0))
    assert trt.plan_problem(["7.5", "8.9"], "fp16", False, [], "t").startswith("7.5 must be its own engine")
    assert "fp8 needs compute capability 8.9" in trt.plan_problem(["8.6"], "fp8", False, [], "t")
    assert registry.get("nvrtc").version_compatible("1.0.0", "1.2.0") is None
    assert "exact version" in trt.version_compatible("1.6.1.120", "1.7.1.116")
    with pytest.raises(ConfigError, match="unknown backend 'nope'"):
        registry.get("nope")


# ---- one context: the store gets every file ------------------------------------------------------
def test_a_custom_store_receives_every_file_the_installer_writes(tmp_path: Path, monkeypatch, nginx,
                                                                 reference_backend) -> None:
    monkeypatch.setenv("RTXPACK_DEVICE", json.dumps(H100))
    default = Path(os.environ["RTXPACK_CACHE_DIR"])
    onnx = examples.mlp(tmp_path / "app" / "mlp.onnx")
    refbackend.publish(nginx.root, "mlp", onnx, stripped=True)
    k = keygen(tmp_path / "keys")
    sign_repository(nginx.root, k[0])
    custom = tmp_path / "custom-store"
    x = np.ones((2, 64), np.float32)
    with rtxpack.load("mlp", repo=nginx.url, onnx=onnx, store=custom, trusted_keys=[k[1]]) as s:
        s.run({"x": x})
    files = _files(custom)
    assert any(f.startswith("blobs/") for f in files)
    for part in ("state/manifests/", "state/trust/", "state/digests.json", "state/runtime-caches/"):
        assert any(f.startswith(part) for f in files), (part, sorted(files))
    assert _files(default) == set(), sorted(_files(default))          # nothing went to the default cache


def test_the_clock_is_injected_not_patched(tmp_path: Path) -> None:
    from test_trust import write_repo, engine_for, data_of  # noqa: F401 - the same small repository

    d = data_of(500)
    write_repo(tmp_path / "repo", [(engine_for(d), d)])
    k = keygen(tmp_path / "keys")
    sign_repository(tmp_path / "repo", k[0], expires_in_days=1)
    now = datetime.now(timezone.utc)
    store = tmp_path / "s"
    assert open_repository(tmp_path / "repo", store=store, trusted_keys=[k[1]], clock=lambda: now).manifest
    later = lambda: now + timedelta(days=2)  # noqa: E731
    with pytest.raises(SignatureError, match="expired"):
        open_repository(tmp_path / "repo", store=store, trusted_keys=[k[1]], clock=later)


# ---- errors declare their fields ----------------------------------------------------------------
def test_errors_declare_their_fields() -> None:
    e = ChecksumMismatch("bad bytes", fix="retry", sha256="a" * 64, expected_sha256="a" * 64, actual_sha256="b" * 64,
                         url="http://x")
    assert e.expected_sha256 == "a" * 64 and e.actual_sha256 == "b" * 64 and e.url == "http://x"
    assert e.path is None                                  # declared, not given: None, never AttributeError
    assert e.to_dict()["expected_sha256"] == "a" * 64 and e.to_dict()["fix"] == "retry"
    with pytest.raises(TypeError, match="does not declare field"):
        ChecksumMismatch("x", expected="a")                # the old synonym is gone
    with pytest.raises(TypeError):
        RtxpackError("x", bogus=1)
    assert "expected_sha256" in ChecksumMismatch.FIELDS and "expected_sha256" not in ManifestError.FIELDS


def test_every_raise_in_the_package_uses_declared_fields() -> None:
    """Static check of every ``SomeError(..., field=...)`` call in rtxpack/ (a typo would only fail at raise time)."""
    import ast

    from rtxpack.core import errors

    classes = {n: c for n, c in vars(errors).items() if isinstance(c, type) and issubclass(c, RtxpackError)}
    bad = []
    for p in (Path(rtxpack.__file__).parent).rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in classes:
                for kw in node.keywords:
                    if kw.arg not in (None, "fix") and kw.arg not in classes[node.func.id].FIELDS:
                        bad.append(f"{p.name}:{node.lineno} {node.func.id}({kw.arg}=...)")
    assert not bad, bad
