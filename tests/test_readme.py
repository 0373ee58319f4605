"""README's code blocks run, and its generated parts are what the code says.

Every fenced block is checked by its kind: ``toml`` blocks are loaded by the real config parser;
a block marked ``<!-- readme-test: run -->`` is executed line by line, as written, with ``rtxpack``
on PATH, in a folder holding the demo's rtxpack.toml and models; ``compile`` blocks are compiled
(the app-side example needs a GPU and a CDN: checked by hand, see README); ``skip`` blocks must say
why. The supported-GPU table must equal what ``rtxpack/core/registry.py`` generates, and the charts
README shows must exist.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path


from rtxpack.core import registry
from rtxpack.core.versions import format_cc
from rtxpack.demo.flow import config_text, demo_models
from rtxpack.farm.config import load_config

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
FENCE = re.compile(r"(?:<!-- readme-test: (?P<tag>[a-z]+)(?P<why>[^>]*)-->\n)?```(?P<lang>[a-z]*)\n(?P<body>.*?)```",
                   re.S)


def blocks() -> list[dict[str, str]]:
    return [m.groupdict() for m in FENCE.finditer(README)]


def backends_table() -> str:
    """The "Supported GPUs" table, from the registry."""
    rows = ["| backend | runs on compute capabilities | built by default for | rules |", "|---|---|---|---|"]
    for s in registry.specs():
        rules = []
        if s.must_build_alone:
            rules.append(", ".join(format_cc(c) for c in sorted(s.must_build_alone)) + " must be its own engine")
        floors = ", ".join(f"{p.upper()} needs {format_cc(c)}+" for p, c in sorted(s.precision_floors.items()))
        if floors:
            rules.append(floors)
        if s.strip_needs_gpu:
            rules.append("weight-stripped builds need a GPU of the target CC")
        rows.append(f"| `{s.name}` ({s.label}) | {s.supported_text()} | {', '.join(s.default_ccs)} | "
                    f"{'; '.join(rules) or '-'} |")
    return "\n".join(rows)


def test_supported_gpus_table_comes_from_the_registry() -> None:
    m = re.search(r"<!-- BEGIN generated: backends -->\n(.*?)<!-- END generated: backends -->", README, re.S)
    assert m, "README lost its generated backends section"
    want = backends_table()
    assert m.group(1).strip() == want, f"regenerate README's table; it must read:\n{want}"


def test_every_block_is_checked_or_says_why() -> None:
    found = blocks()
    assert len(found) >= 5
    for b in found:
        if b["lang"] == "toml":
            continue
        assert b["tag"] in ("run", "compile", "skip"), f"untagged ```{b['lang']} block:\n{b['body'][:200]}"
        if b["tag"] == "skip":
            assert b["why"].strip().startswith("("), f"a skipped block must say why:\n{b['body'][:200]}"


def test_toml_blocks_load(tmp_path: Path) -> None:
    tomls = [b["body"] for b in blocks() if b["lang"] == "toml"]
    assert tomls
    for i, body in enumerate(tomls):
        d = tmp_path / str(i)
        for rel in re.findall(r'onnx = "([^"]+)"', body):
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            (d / rel).write_bytes(b"\x08\x08")        # existence is what the parser checks
        (d / "rtxpack.toml").write_text(body)
        cfg = load_config(d / "rtxpack.toml")
        assert cfg.models and cfg.targets


def test_compile_blocks_compile() -> None:
    for b in blocks():
        if b["tag"] == "compile":
            compile(b["body"], "README.md", "exec")


def test_run_blocks_run_as_written(tmp_path: Path) -> None:
    work = tmp_path / "release"
    work.mkdir()
    (work / "rtxpack.toml").write_text(config_text())
    demo_models(work)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "rtxpack").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m rtxpack.cli "$@"\n')
    (bindir / "rtxpack").chmod(0o755)
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=str(ROOT),
               RTXPACK_DEVICE="8.9")
    runs = [b for b in blocks() if b["tag"] == "run"]
    assert runs
    for b in runs:
        for line in b["body"].splitlines():
            cmd = line.split("#", 1)[0].strip()
            if not cmd:
                continue
            r = subprocess.run(["bash", "-c", cmd], cwd=work, env=env, capture_output=True, text=True, timeout=600)
            assert r.returncode == 0, f"README line failed: {cmd}\n{r.stdout}\n{r.stderr}"
    assert (work / "www" / "manifest.json").is_file() and (work / "engines-offline.tar.gz").is_file()


def test_readme_links_and_charts_exist() -> None:
    for target in re.findall(r"\]\(([^)#]+)\)", README):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target
    for png in ("scripts/load_paths.png", "scripts/download_vs_curl.png", "scripts/farm_throughput.png"):
        assert png in README and (ROOT / png).stat().st_size > 10_000


def test_example_config_loads(tmp_path: Path) -> None:
    """manifests/examples/rtxpack.toml (README points at it) is a valid config once its models exist."""
    body = (ROOT / "manifests" / "examples" / "rtxpack.toml").read_text()
    for rel in re.findall(r'onnx = "([^"]+)"', body):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"\x08\x08")
    (tmp_path / "rtxpack.toml").write_text(body)
    assert len(load_config(tmp_path / "rtxpack.toml").targets) == 4
