"""The CI examples work end to end: manifests/examples/github-actions.yml and gitlab-ci.yml are parsed,
their structure checked (jobs, dependencies, GPU runner labels, where the key comes from), and then
run by a small emulator of each CI on this machine: every job in dependency order, in a fresh copy of
the checkout, artifacts passed between jobs as the CI passes them, every ``rtxpack`` command line
executed for real (the emulator only skips ``pip install`` and the checkout/setup actions). What comes
out is a signed repository published to a folder and an offline bundle, both installed from.

``rtxpack warm`` needs an NVIDIA GPU; on a machine without one (CI) its command is run and must fail
with exactly that reason, and the job goes on as if the runner had warmed nothing.
"""
from __future__ import annotations

import fnmatch
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rtxpack.core.device import detect_gpus
from rtxpack.core.signing import generate_keypair
from rtxpack.demo.flow import config_text, demo_models

yaml = pytest.importorskip("yaml")
ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "manifests" / "examples"


def load(name: str) -> dict[str, Any]:
    with open(EXAMPLES / name, encoding="utf-8") as f:
        return yaml.load(f, Loader=yaml.BaseLoader)    # strings stay strings ("on" too)


def rtxpack_lines(doc: Any) -> list[str]:
    """Every ``rtxpack ...`` command line in a CI file (after a pipe too)."""
    out: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
        elif isinstance(v, str):
            for line in v.splitlines():
                for part in line.split("|"):
                    if part.strip().startswith("rtxpack "):
                        out.append(part.strip())
    walk(doc)
    return out


class Pipeline:
    """What both emulators share: a checkout, a PATH with ``rtxpack``, artifacts, the commands run."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.checkout = tmp / "checkout"
        self.checkout.mkdir()
        (self.checkout / "rtxpack.toml").write_text(config_text())
        demo_models(self.checkout)
        bindir = tmp / "bin"
        bindir.mkdir()
        shim = bindir / "rtxpack"
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m rtxpack.cli "$@"\n')
        shim.chmod(0o755)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("RTXPACK_", "GITHUB_", "CI_"))}
        self.env.update(PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=str(ROOT),
                        RTXPACK_CACHE_DIR=str(tmp / "runner-cache"), NO_PROXY="127.0.0.1,localhost")
        self.artifacts = tmp / "artifacts"
        self.artifacts.mkdir()
        self.ran: list[str] = []          # script text of every step run
        self.warm_refused = 0
        self.www = tmp / "www"
        pem, pub, self.keyid = generate_keypair()
        self.key_pem = pem.decode()
        self.pub = tmp / "rtxpack.pub"
        self.pub.write_bytes(pub)
        self.n = 0

    def workdir(self, name: str, checkout: bool) -> Path:
        self.n += 1
        d = self.tmp / "jobs" / f"{self.n:02d}-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}"
        if checkout:
            shutil.copytree(self.checkout, d)
        else:
            d.mkdir(parents=True)
        return d

    def sh(self, script: str, cwd: Path, env: dict[str, str]) -> None:
        if script.strip().startswith("pip install"):
            return
        self.ran.append(script)
        r = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=cwd, env=env, capture_output=True,
                           text=True, timeout=900)
        if r.returncode != 0 and "rtxpack warm" in script and not detect_gpus()[0]:
            assert "needs a GPU" in r.stderr and "Traceback" not in r.stderr, r.stderr
            self.warm_refused += 1
            rest = script.split("rtxpack warm", 1)[1].split("\n", 1)
            if len(rest) == 2 and rest[1].strip():          # the lines after the warm command still run
                self.sh(rest[1], cwd, env)
            return
        assert r.returncode == 0, f"{script}\nexit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"

    def check_result(self, bundle: Path) -> None:
        """The published folder and the bundle are signed repositories an installer accepts."""
        manifest = json.loads((self.www / "manifest.json").read_text())
        assert manifest["signatures"][0]["keyid"] == self.keyid
        env = dict(self.env, RTXPACK_DEVICE="8.9", RTXPACK_CACHE_DIR=str(self.tmp / "pc"))
        for repo, extra in ((self.www, {}), (bundle, {"RTXPACK_OFFLINE": "1"})):
            r = subprocess.run(["rtxpack", "install", "--repo", str(repo), "--model", "mlp", "--trusted-key",
                                str(self.pub), "--json"], env=dict(env, **extra), capture_output=True, text=True,
                               timeout=300)
            assert r.returncode == 0, r.stderr
            assert "covers 8.9" in json.loads(r.stdout)["reason"]


# ---- GitHub Actions ----------------------------------------------------------------------------------
def test_github_workflow_structure() -> None:
    wf = load("github-actions.yml")
    jobs = wf["jobs"]
    assert list(jobs) == ["plan", "build", "merge", "warm", "release"]
    needs = {k: v.get("needs") for k, v in jobs.items()}
    assert needs == {"plan": None, "build": "plan", "merge": "build", "warm": "merge", "release": ["merge", "warm"]}
    assert "needs.plan.outputs.matrix" in jobs["build"]["strategy"]["matrix"]
    runs_on = jobs["warm"]["runs-on"]
    assert "self-hosted" in runs_on and "gpu" in runs_on and "${{ matrix.gpu }}" in runs_on
    assert len(jobs["warm"]["strategy"]["matrix"]["include"]) >= 2
    steps = {s.get("name", ""): s for s in jobs["release"]["steps"]}
    sign = next(s for s in steps.values() if "rtxpack sign" in s.get("run", ""))
    assert sign["env"]["RTXPACK_SIGNING_KEY"] == "${{ secrets.RTXPACK_SIGNING_KEY }}" and "--key -" in sign["run"]
    assert any("rtxpack publish" in s.get("run", "") for s in steps.values())
    assert any(s.get("uses", "").startswith("actions/upload-artifact") and "engines-offline" in str(s.get("with"))
               for s in jobs["release"]["steps"])


def _gh_expr(text: str, ctx: dict[str, Any]) -> str:
    def one(m: re.Match) -> str:
        value: Any = ctx
        for part in m.group(1).strip().split("."):
            value = value[part]
        return str(value)
    return re.sub(r"\$\{\{\s*([A-Za-z0-9_.-]+)\s*\}\}", one, text)


def _order(jobs: dict[str, Any]) -> list[str]:
    done: list[str] = []
    while len(done) < len(jobs):
        for name, job in jobs.items():
            need = job.get("needs") or []
            need = [need] if isinstance(need, str) else need
            if name not in done and all(n in done for n in need):
                done.append(name)
    return done


def test_github_workflow_runs_end_to_end(tmp_path: Path) -> None:
    wf = load("github-actions.yml")
    p = Pipeline(tmp_path)
    outputs: dict[str, dict[str, str]] = {}
    ctx_base = {"secrets": {"RTXPACK_SIGNING_KEY": p.key_pem, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"},
                "vars": {"RTXPACK_PUBLISH_URL": str(p.www)}}
    for name in _order(wf["jobs"]):
        job = wf["jobs"][name]
        matrix = (job.get("strategy") or {}).get("matrix")
        if matrix is None:
            entries: list[dict[str, str]] = [{}]
        elif isinstance(matrix, str):           # ${{ fromJSON(needs.plan.outputs.matrix) }}
            entries = json.loads(outputs["plan"]["matrix"])["include"]
            assert entries, "the plan produced no cell"
        else:
            entries = matrix["include"]
        for entry in entries:
            ctx = dict(ctx_base, matrix=entry)
            uses = [s.get("uses", "") for s in job["steps"]]
            wd = p.workdir(f"{name}-{entry.get('cell', entry.get('gpu', ''))}",
                           checkout=any(u.startswith("actions/checkout") for u in uses))
            out_file = wd / ".github_output"
            env = dict(p.env, **{k: _gh_expr(v, ctx) for k, v in (wf.get("env") or {}).items()},
                       GITHUB_OUTPUT=str(out_file))
            for step in job["steps"]:
                u, w = step.get("uses", ""), step.get("with") or {}
                if u.startswith("actions/upload-artifact"):
                    dest = p.artifacts / _gh_expr(w["name"], ctx)
                    src = wd / _gh_expr(w["path"], ctx)
                    shutil.copytree(src, dest) if src.is_dir() else (dest.mkdir(), shutil.copy2(src, dest))
                elif u.startswith("actions/download-artifact"):
                    if "name" in w:
                        shutil.copytree(p.artifacts / w["name"], wd / w["path"], dirs_exist_ok=True)
                    else:           # pattern: each artifact into its own folder, named after it
                        for a in sorted(p.artifacts.iterdir()):
                            if fnmatch.fnmatch(a.name, w["pattern"]):
                                shutil.copytree(a, wd / w["path"] / a.name)
                elif "run" in step:
                    step_env = dict(env, **{k: _gh_expr(v, ctx) for k, v in (step.get("env") or {}).items()})
                    p.sh(_gh_expr(step["run"], ctx), wd, step_env)
            if out_file.exists():
                outputs[name] = dict(line.split("=", 1) for line in out_file.read_text().splitlines() if "=" in line)
    # every rtxpack command line of the workflow ran
    ran = "\n".join(p.ran)
    for line in rtxpack_lines(wf):
        cmd = re.sub(r"\$\{\{.*?\}\}", "", line).split()[:2]
        assert " ".join(cmd) in ran, line
    assert sum("rtxpack build" in s for s in p.ran) == 4          # the demo config: 4 cells, one job each
    assert p.warm_refused in (0, len(wf["jobs"]["warm"]["strategy"]["matrix"]["include"]))
    p.check_result(p.artifacts / "offline-bundle" / "engines-offline.tar.gz")


# ---- GitLab CI ---------------------------------------------------------------------------------------
def test_gitlab_pipeline_structure() -> None:
    ci = load("gitlab-ci.yml")
    assert ci["stages"] == ["plan", "build", "merge", "warm", "release"]
    jobs = {k: v for k, v in ci.items() if isinstance(v, dict) and "stage" in v}
    assert [jobs[j]["stage"] for j in jobs] == ["plan", "build", "merge", "warm", "release"]
    assert jobs["build"]["needs"] == ["plan"] and jobs["merge"]["needs"] == ["build"]
    assert jobs["warm"]["needs"] == ["merge"] and jobs["release"]["needs"] == ["merge", "warm"]
    assert int(jobs["build"]["parallel"]) > 1 and "--shard" in " ".join(jobs["build"]["script"])
    assert "$GPU" in jobs["warm"]["tags"] and "gpu" in jobs["warm"]["tags"]
    assert any("--key -" in line and "$RTXPACK_SIGNING_KEY" in line for line in jobs["release"]["script"])


def test_gitlab_pipeline_runs_end_to_end(tmp_path: Path) -> None:
    ci = load("gitlab-ci.yml")
    p = Pipeline(tmp_path)
    glob_vars = dict(ci.get("variables") or {})
    jobs = {k: v for k, v in ci.items() if isinstance(v, dict) and "stage" in v}
    produced: dict[str, list[Path]] = {}          # job -> the artifact folders of its instances
    secrets = {"RTXPACK_SIGNING_KEY": p.key_pem, "RTXPACK_PUBLISH_URL": str(p.www), "AWS_ACCESS_KEY_ID": "x",
               "AWS_SECRET_ACCESS_KEY": "x", "CI_COMMIT_BRANCH": "main", "CI_DEFAULT_BRANCH": "main"}
    for stage in ci["stages"]:
        for name, job in jobs.items():
            if job["stage"] != stage:
                continue
            par = job.get("parallel")
            if isinstance(par, dict):
                axes = par["matrix"][0]
                instances = [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]
            elif par:
                instances = [{"CI_NODE_INDEX": str(i), "CI_NODE_TOTAL": str(par)} for i in range(1, int(par) + 1)]
            else:
                instances = [{}]
            produced[name] = []
            for inst in instances:
                wd = p.workdir(f"{name}-{'-'.join(inst.values())}", checkout=True)
                for need in job.get("needs") or []:
                    for art in produced[need if isinstance(need, str) else need["job"]]:
                        shutil.copytree(art, wd, dirs_exist_ok=True)
                env = dict(p.env, CI_PROJECT_DIR=str(wd), **secrets, **glob_vars, **inst)
                for k, v in (job.get("variables") or {}).items():
                    env[k] = os.path.expandvars(v.replace("$CI_PROJECT_DIR", str(wd)))
                for line in job["script"]:
                    p.sh(line, wd, env)
                art = tmp_path / "gl-artifacts" / f"{name}-{len(produced[name])}"
                art.mkdir(parents=True)
                for path in (job.get("artifacts") or {}).get("paths", []):
                    src = wd / path
                    if src.is_dir():
                        shutil.copytree(src, art / path, dirs_exist_ok=True)
                    elif src.exists():
                        shutil.copy2(src, art / path)
                produced[name].append(art)
    ran = "\n".join(p.ran)
    for line in rtxpack_lines(ci):
        assert " ".join(line.split()[:2]) in ran, line
    assert sum(1 for s in p.ran if "--shard" in s) == int(jobs["build"]["parallel"])
    (bundle_dir,) = produced["release"]
    p.check_result(bundle_dir / "engines-offline.tar.gz")
