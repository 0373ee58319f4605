"""Planning: cell expansion, stable ids, skip rules decided before any build, CI matrix."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from rtxpack.core.errors import ConfigError

from rtxpack.farm.config import load_config
from rtxpack.farm.plan import make_plan
from test_farm_common import CNN, LOCAL, MLP, OTHER, cli, farm, farm_env, target, toolchain, write_config  # noqa: F401


def plan_of(path: Path, **kw):  # type: ignore[no-untyped-def]
    return make_plan(load_config(path), **kw)


def test_cells_and_stable_ids(farm, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "a" / "rtxpack.toml", farm, MLP, CNN, target("p", ["8.6", "8.9", "12.0"]),
                       target("b", ["12.0"]), toolchain(LOCAL), toolchain(OTHER))
    p1, p2 = plan_of(cfg), plan_of(cfg)
    assert len(p1.cells) == 8 and not p1.skipped
    assert [c.id for c in p1.cells] == [c.id for c in p2.cells]
    assert len({c.id for c in p1.cells}) == 8
    # the same model/target/toolchain in another config file (another directory) has the same id
    other = write_config(tmp_path / "b" / "x.toml", farm, MLP, target("p", ["8.6", "8.9", "12.0"]), toolchain(LOCAL))
    assert plan_of(other).cells[0].id == p1.cells[0].id
    # anything that changes the output changes the id
    changed = write_config(tmp_path / "c" / "rtxpack.toml", farm, MLP.replace("max = [16, 64]", "max = [32, 64]"),
                           target("p", ["8.6", "8.9", "12.0"]), toolchain(LOCAL))
    assert plan_of(changed).cells[0].id != p1.cells[0].id
    fewer = write_config(tmp_path / "d" / "rtxpack.toml", farm, MLP, target("p", ["8.6", "8.9"]), toolchain(LOCAL))
    assert plan_of(fewer).cells[0].id != p1.cells[0].id


def test_skip_rules_before_any_build(farm, tmp_path: Path) -> None:
    mlp_fp8 = MLP.replace('name = "mlp"', 'name = "mlp8"\nprecision = "fp8"')
    mlp_fp4 = MLP.replace('name = "mlp"', 'name = "mlp4"\nprecision = "fp4"')
    cfg = write_config(tmp_path / "rtxpack.toml", farm, MLP, mlp_fp8, mlp_fp4,
                       target("ada", ["8.9"]), target("ampere", ["8.6"]),
                       target("stripped", ["8.9"], strip_weights=True),
                       toolchain(LOCAL), toolchain("9.9.9.9"))
    plan = plan_of(cfg, gpu_ccs=())
    by = {(c.model, c.target, c.backend_version): c for c in plan.cells}
    assert "no such" not in (by[("mlp", "ada", LOCAL)].skipped or "")
    assert by[("mlp", "ada", LOCAL)].skipped is None
    assert "8.9 or newer" in by[("mlp8", "ampere", LOCAL)].skipped
    assert by[("mlp8", "ada", LOCAL)].skipped is None
    assert "12.0 or newer" in by[("mlp4", "ada", LOCAL)].skipped
    assert "STRIP_PLAN" in by[("mlp", "stripped", LOCAL)].skipped and "no GPU" in by[("mlp", "stripped", LOCAL)].skipped
    bad = by[("mlp", "ada", "9.9.9.9")].skipped
    assert "cannot be installed" in bad and "9.9.9.9" in bad
    # with a GPU of the right CC on the node, the stripped cell is planned
    plan_gpu = plan_of(cfg, gpu_ccs=("8.9",))
    assert next(c for c in plan_gpu.cells if c.target == "stripped" and c.backend_version == LOCAL and c.model == "mlp").skipped is None


def test_offline_toolchain_cannot_be_installed(farm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTXPACK_TOOLCHAINS_DIR", str(tmp_path / "empty-toolchains"))
    monkeypatch.setenv("RTXPACK_OFFLINE", "1")
    cfg = write_config(tmp_path / "rtxpack.toml", farm, MLP, target("p", ["8.9"]), toolchain(OTHER))
    (cell,) = plan_of(cfg).cells
    assert "RTXPACK_OFFLINE=1" in cell.skipped


def test_targets_no_node_can_build_are_config_errors_not_skips(farm, tmp_path: Path) -> None:
    """A skip is for "not on this node"; a target its backend can never build is a mistake in the config."""
    for bad, words in ((target("mixed", ["7.5", "8.6"]), "7.5 must be its own engine"),
                       (target("hopper", ["9.0"]), "cannot target compute capability 9.0")):
        cfg = write_config(tmp_path / "rtxpack.toml", farm, MLP, bad)
        with pytest.raises(ConfigError, match=words):
            load_config(cfg)
        r = cli("plan", str(cfg), check=False)
        assert r.returncode == 1 and words in r.stderr and "Traceback" not in r.stderr


def test_missing_onnx_is_a_config_error_with_the_path(farm, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "rtxpack.toml", farm, CNN.replace("cnn.onnx", "nope.onnx"), target("p", ["8.9"]))
    with pytest.raises(ConfigError, match="nope.onnx does not exist") as ei:
        load_config(cfg)
    assert ei.value.key == "models[0].onnx"


def test_cli_plan_json_and_github_matrix(farm, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "rtxpack.toml", farm, MLP, CNN, target("p", ["8.6", "8.9", "12.0"]),
                       target("stripped", ["8.9"], strip_weights=True), toolchain(LOCAL), toolchain(OTHER))
    env = {"RTXPACK_TOOLCHAINS_DIR": str(farm.toolchains)}
    d = json.loads(cli("plan", str(cfg), "--json", env=env).stdout)
    assert d["planned"] == 4 and d["skipped"] == 4
    assert all(c["reason"] for c in d["cells"] if c["status"] == "skipped")
    m = json.loads(cli("plan", str(cfg), "--ci", "github", env=env).stdout)
    assert len(m["include"]) == 4
    assert {tuple(sorted(j)) for j in m["include"]} == {("cell", "model", "name", "target", "toolchain")}
    planned = {c["id"] for c in d["cells"] if c["status"] == "planned"}
    assert {j["cell"] for j in m["include"]} == planned
    per = json.loads(cli("plan", str(cfg), "--ci", "github", "--per", "toolchain", env=env).stdout)
    assert sorted(j["toolchain"] for j in per["include"]) == sorted({f"tensorrt-rtx-{LOCAL}-cu13", f"tensorrt-rtx-{OTHER}-cu13"})
    assert sum(j["count"] for j in per["include"]) == 4
