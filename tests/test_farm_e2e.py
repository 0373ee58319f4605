"""End to end: plan -> build -> serve on loopback (nginx) -> `rtxpack install` in a subprocess with a
forced GPU; merge of repository parts built apart (and a conflict refused); install from a bundle
with networking off."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rtxpack.farm import load_config, make_plan
from rtxpack.core.manifest import Manifest
from test_farm_common import CNN, LOCAL, MLP16, cli, farm, farm_env, target, write_config  # noqa: F401


def e2e_config(tmp_path: Path, farm) -> Path:  # type: ignore[no-untyped-def]
    """fp16 MLP (dynamic batch): a portable engine for 8.6/8.9/12.0 and a Turing engine (7.5)."""
    return write_config(tmp_path / "cfg" / "rtxpack.toml", farm, MLP16, target("portable", ["8.6", "8.9", "12.0"]),
                        target("turing", ["7.5"]))


def install(url: str, device: str, *extra_env: tuple[str, str], check: bool = True):  # type: ignore[no-untyped-def]
    env = {"RTXPACK_DEVICE": device, **dict(extra_env)}
    return cli("install", "--repo", url, "--model", "mlp", "--json", env=env, check=check)


def test_plan_build_serve_install(farm, tmp_path: Path, nginx) -> None:
    cfg = e2e_config(tmp_path, farm)
    plan = json.loads(cli("plan", str(cfg), "--json").stdout)
    assert plan["planned"] == 2
    d = json.loads(cli("build", str(cfg), "--repo", str(nginx.root), "--json").stdout)
    assert (d["built"], d["failed"]) == (2, 0), d
    by_target = {c["target"]: c for c in d["cells"]}

    got = json.loads(install(nginx.url, "8.9").stdout)
    assert got["chosen"]["id"] == by_target["portable"]["artifact"]
    assert "portable" in got["reason"]
    (art,) = got["artifacts"]
    assert Path(art["path"]).read_bytes()[:4] == b"vtrt" and art["sha256"] == by_target["portable"]["sha256"]
    assert nginx.hits("/" + by_target["portable"]["path"], at_least=1)

    got = json.loads(install(nginx.url, "7.5").stdout)
    assert got["chosen"]["id"] == by_target["turing"]["artifact"]
    assert got["chosen"]["compute_capabilities"] == ["7.5"]

    proc = install(nginx.url, "9.0", check=False)
    assert proc.returncode != 0
    err = json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else {"message": proc.stderr, "fix": proc.stderr}
    text = json.dumps(err)
    assert "no TensorRT-RTX artifact for this GPU" in text
    assert "next fallback" in text


def test_merge_parts_built_apart_and_refuse_conflicts(farm, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "cfg" / "rtxpack.toml", farm, MLP16, CNN, target("portable", ["8.6", "8.9", "12.0"]))
    ids = [c.id for c in make_plan(load_config(cfg)).cells]
    assert len(ids) == 2
    # like two CI jobs: one cell each, into separate parts
    for i, cid in enumerate(ids):
        cli("build", str(cfg), "--repo", str(tmp_path / f"part{i}"), "--cell", cid)
    out = json.loads(cli("merge", str(tmp_path / "part0"), str(tmp_path / "part1"), "--repo", str(tmp_path / "repo"),
                         "--json").stdout)
    assert out["artifacts"] == 2
    m = Manifest.load(tmp_path / "repo")
    assert sorted(a.cell for a in m) == sorted(ids)
    for a in m:
        assert (tmp_path / "repo" / a.path).stat().st_size == a.size
    # merging the same parts again is a no-op, not a conflict
    cli("merge", str(tmp_path / "part0"), "--repo", str(tmp_path / "repo"))

    # a part whose entry for the same artifact says something else is refused, naming the entry
    bad = tmp_path / "bad"
    shutil.copytree(tmp_path / "part0", bad)
    raw = json.loads((bad / "manifest.json").read_text())
    raw["artifacts"][0]["min_driver_version"] = "12.0"
    (bad / "manifest.json").write_text(json.dumps(raw))
    proc = cli("merge", str(bad), "--repo", str(tmp_path / "repo"), check=False)
    assert proc.returncode != 0
    assert "conflicting entries" in proc.stderr and raw["artifacts"][0]["id"] in proc.stderr
    assert "min_driver_version" in proc.stderr
    # a corrupt blob in a part is refused too (sha256 verified while copying)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tmp_path / "part1", corrupt)
    a = Manifest.load(corrupt).artifacts[0]
    blob = corrupt / a.path
    data = bytearray(blob.read_bytes())
    data[100] ^= 0xFF
    blob.write_bytes(bytes(data))
    proc = cli("merge", str(corrupt), "--repo", str(tmp_path / "fresh"), check=False)
    assert proc.returncode != 0 and "sha256" in proc.stderr
    assert not (tmp_path / "fresh" / "manifest.json").exists()


@pytest.mark.parametrize("name", ["bundle.tar", "bundle.tar.gz"])
def test_bundle_install_offline(farm, tmp_path: Path, name: str) -> None:
    cfg = e2e_config(tmp_path, farm)
    repo = tmp_path / "repo"
    cli("build", str(cfg), "--repo", str(repo))
    bundle = tmp_path / name
    res = json.loads(cli("bundle", "--repo", str(repo), "--model", "mlp", "--cc", "8.9", "-o", str(bundle), "--json").stdout)
    assert res["artifacts"] == 1  # the Turing engine is not selected for 8.9
    got = json.loads(install(str(bundle), "8.9", ("RTXPACK_OFFLINE", "1")).stdout)
    assert got["chosen"]["compute_capabilities"] == ["8.6", "8.9", "12.0"]
    (art,) = got["artifacts"]
    assert Path(art["path"]).read_bytes()[:4] == b"vtrt"
    # the Turing engine is not in the bundle: a clear error, still without network
    proc = install(str(bundle), "7.5", ("RTXPACK_OFFLINE", "1"), check=False)
    assert proc.returncode != 0
