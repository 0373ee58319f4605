"""rtxpack.toml parsing: the documented keys, defaults, and errors naming file, key and fix."""
from __future__ import annotations

from pathlib import Path

import pytest

from rtxpack.core.errors import ConfigError
from rtxpack.farm.config import load_config

FULL = """
[project]
name = "demo"
version = "1.0.0"
[[models]]
name = "resnet50"
onnx = "models/resnet50.onnx"
precision = "fp32"
warmup = [{x = [1, 3, 224, 224]}, {x = [4, 3, 224, 224]}]
[models.inputs.x]
min = [1, 3, 224, 224]
opt = [4, 3, 224, 224]
max = [16, 3, 224, 224]
[[targets]]
name = "portable"
backend = "tensorrt-rtx"
compute_capabilities = ["8.6", "8.9", "12.0"]
strip_weights = false
[[targets]]
name = "gpu-side"
backend = "nvrtc"
compute_capabilities = ["sm_89", "8.6"]
os = "windows"
[[toolchains]]
backend = "tensorrt-rtx"
version = "1.7.1.116"
cuda = "13"
[[gpus]]
name = "NVIDIA GeForce RTX 4070"
compute_capability = "8.9"
sku = "rtx4070"
[[gpus]]
sku = "rtx2080"
compute_capability = "sm_75"
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "rtxpack.toml"
    p.write_text(text)
    model = tmp_path / "models" / "resnet50.onnx"     # existence is checked at load; its bytes at build
    model.parent.mkdir(exist_ok=True)
    model.write_bytes(b"\x08\x08")
    return p


def test_full_config_parses(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, FULL))
    m = cfg.models[0]
    assert m.name == "resnet50" and m.onnx == (tmp_path / "models/resnet50.onnx").resolve()
    assert m.inputs["x"]["opt"] == (4, 3, 224, 224)
    assert m.warmup == ({"x": (1, 3, 224, 224)}, {"x": (4, 3, 224, 224)})
    assert cfg.targets[0].compute_capabilities == ("8.6", "8.9", "12.0")
    assert cfg.targets[1].backend == "nvrtc" and cfg.targets[1].compute_capabilities == ("8.6", "8.9")
    assert cfg.targets[1].os == "windows"
    assert cfg.toolchains[0].version == "1.7.1.116" and cfg.toolchains[0].cuda == "13"
    # no [[toolchains]] for nvrtc: the default (this interpreter's) is used
    assert cfg.toolchains_for("nvrtc")[0].version is None
    # [[gpus]]: the SKUs runtime caches are warmed for, each a Dask resource gpu-<sku>
    assert [(g.sku, g.compute_capability, g.name, g.resource) for g in cfg.gpus] == [
        ("rtx4070", "8.9", "NVIDIA GeForce RTX 4070", "gpu-rtx4070"), ("rtx2080", "7.5", None, "gpu-rtx2080")]


@pytest.mark.parametrize("old,new,key,fix", [
    ('precision = "fp32"', 'precision = "fp64"', "models[0].precision", "use one of"),
    ('compute_capabilities = ["8.6", "8.9", "12.0"]', 'compute_capabilities = ["eight"]',
     "targets[0].compute_capabilities", "8.9"),
    ('backend = "nvrtc"', 'backend = "cuda"', "targets[1].backend", "tensorrt-rtx"),
    ('cuda = "13"', 'cuda = "11"', "toolchains[0].cuda", "12, 13"),
    ('version = "1.7.1.116"', 'version = "latest"', "toolchains[0].version", "exact version"),
    ("min = [1, 3, 224, 224]", "min = [32, 3, 224, 224]", "models[0].inputs.x", "min <= opt <= max"),
    ("strip_weights = false", 'strip_weights = "no"', "targets[0].strip_weights", "true or false"),
    ('name = "portable"', 'name = "portable"\nflavour = 1', "targets[0].flavour", "remove it"),
    ('name = "gpu-side"', 'name = "portable"', "targets[1].name", "unique"),
    # a config that is wrong is an error, never a skip
    ('version = "1.0.0"', "version = 1", "project.version", 'version = "1"'),
    ('name = "demo"', 'name = "demo"\nrelease = "x"', "project.release", "remove it"),
    ('compute_capabilities = ["8.6", "8.9", "12.0"]', "compute_capabilities = [7.5]",
     "targets[0].compute_capabilities", '"7.5"'),
    ('compute_capabilities = ["8.6", "8.9", "12.0"]', 'compute_capabilities = ["8.9", "9.0"]',
     "targets[0].compute_capabilities", 'backend = "nvrtc"'),
    ('compute_capabilities = ["8.6", "8.9", "12.0"]', 'compute_capabilities = ["7.5", "8.6"]',
     "targets[0].compute_capabilities", "target of its own"),
    ('compute_capabilities = ["sm_89", "8.6"]', 'compute_capabilities = ["4.2"]',
     "targets[1].compute_capabilities", "12.0"),
    ('onnx = "models/resnet50.onnx"', 'onnx = "models/resnet05.onnx"', "models[0].onnx", "fix the path"),
    ('onnx = "models/resnet50.onnx"', 'onnx = "models"', "models[0].onnx", ".onnx file"),
    ('cuda = "13"', "cuda = true", "toolchains[0].cuda", "12, 13"),
    ('sku = "rtx4070"', 'sku = "RTX 4070"', "gpus[0].sku", "lower-case"),
    ('sku = "rtx4070"', 'sku = "sm89"', "gpus[0].sku", "not sm<digits>"),
    ('sku = "rtx2080"', 'sku = "rtx4070"', "gpus[1].sku", "unique"),
    ('compute_capability = "8.9"\nsku', 'compute_capability = "fast"\nsku', "gpus[0].compute_capability", "8.9"),
    ('compute_capability = "8.9"\nsku', 'memory = 24\ncompute_capability = "8.9"\nsku', "gpus[0].memory",
     "remove it"),
])
def test_errors_name_file_key_and_fix(tmp_path: Path, old: str, new: str, key: str, fix: str) -> None:
    assert old in FULL
    p = write(tmp_path, FULL.replace(old, new, 1))
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    e = ei.value
    assert str(p) in str(e) and key in str(e), str(e)
    assert e.key == key and e.path == str(p)
    assert fix in (e.fix or "") or fix in str(e), str(e)


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.toml")
    write(tmp_path, FULL)
    with pytest.raises(ConfigError, match="is a directory") as ei:
        load_config(tmp_path)
    assert str(tmp_path / "rtxpack.toml") in ei.value.fix
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not a text file"):
        load_config(tmp_path / "bin.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[[models]\nname="))


def test_models_and_targets_required(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as ei:
        load_config(write(tmp_path, '[project]\nname = "x"\n'))
    assert ei.value.key == "models" and "[[models]]" in ei.value.fix
