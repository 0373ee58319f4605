"""The farm on a real Dask cluster: ``dask scheduler`` and ``dask worker`` processes on loopback.

Two workers declare different GPUs (``--resources``; RTXPACK_DEVICE describes the GPU each
pretends to have, and a preload registers the CPU reference backend there). TensorRT-RTX cells
use the real builder on the workers; the reference backend stands in where a GPU is needed
(weight-stripped builds, warm-ups) and, with a model named ``slow*``, blocks a build so a test can
kill a worker or the scheduler mid-cell (``refbackend.BLOCK_DIR``).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

pytest.importorskip("distributed", reason="the cluster extra (pip install 'rtxpack[cluster]') is not installed")

import rtxpack  # noqa: E402
import refbackend  # noqa: E402
from daskcluster import ROOT, DaskCluster, set_allowed_failures, tasks_named  # noqa: E402
from rtxpack.core.manifest import Manifest  # noqa: E402
from rtxpack.demo import models as examples  # noqa: E402
from rtxpack.farm import build, load_config, make_plan  # noqa: E402
from rtxpack.farm import cluster as farm_cluster  # noqa: E402
from rtxpack.farm.cluster import build_on_cluster, warm_on_cluster  # noqa: E402
import test_farm_common  # noqa: E402
from test_farm_common import CNN, MLP, cli, target, write_config  # noqa: E402

farm, farm_env, matrix_repo = test_farm_common.farm, test_farm_common.farm_env, test_farm_common.matrix_repo

RTX4090 = {"os": "linux", "gpus": [{"name": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9",
                                    "driver_version": "13.0"}]}
RTX3060 = {"os": "linux", "gpus": [{"name": "NVIDIA GeForce RTX 3060", "compute_capability": "8.6",
                                    "driver_version": "13.0"}]}
#: what each worker of the shared cluster declares (gpu86 also claims an RTX 4080 it does not have)
RESOURCES = {"gpu89": "gpu-sm89=1 gpu-rtx4090=1", "gpu86": "gpu-sm86=1 gpu-rtx3060=1 gpu-rtx4080=1"}

REF_CLI = ("import sys; sys.path.insert(0, sys.argv.pop(1)); import refbackend; refbackend.install(farm=True); "
           "from rtxpack.cli import main; sys.exit(main(sys.argv[1:]))")


def _env_without_rtxpack() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("RTXPACK_")}


def start_cluster(workdir: Path, toolchains: Path, workers: dict[str, tuple[str, dict | None]],
                  scheduler_env: dict[str, str] | None = None) -> DaskCluster:
    """A scheduler and one single-thread worker per entry ``name: (resources, RTXPACK_DEVICE or None)``."""
    c = DaskCluster(workdir)
    c.env = {**_env_without_rtxpack(), "PYTHONPATH": c.env["PYTHONPATH"], "RTXPACK_TOOLCHAINS_DIR": str(toolchains),
             refbackend.BLOCK_DIR: str(workdir / "block")}
    c.start_scheduler(scheduler_env)
    for name, (resources, device) in workers.items():
        c.add_worker(name, resources, env={"RTXPACK_DEVICE": json.dumps(device)} if device else None)
    c.wait_for_workers(list(workers))
    return c


@pytest.fixture(scope="module")
def dask2(farm_env, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    """Scheduler + two workers: gpu89 (an RTX 4090) and gpu86 (an RTX 3060); both take CPU cells."""
    c = start_cluster(tmp_path_factory.mktemp("dask2"), farm_env.toolchains,
                      {"gpu89": (RESOURCES["gpu89"], RTX4090), "gpu86": (RESOURCES["gpu86"], RTX3060)})
    yield c
    release(c)
    c.stop()


@pytest.fixture
def ref_farm() -> Iterator[None]:
    """The reference backend's farm variant registered in this (submitting) process."""
    refbackend.install(farm=True)
    yield
    refbackend.uninstall()


def release(c: DaskCluster) -> None:
    (c.workdir / "block").mkdir(exist_ok=True)
    (c.workdir / "block" / "release").write_text("")


def reset_block(c: DaskCluster, *, always: bool = False) -> Path:
    d = c.workdir / "block"
    d.mkdir(exist_ok=True)
    for f in d.iterdir():
        f.unlink()
    if always:
        (d / "always").write_text("")
    return d


def wait_for(pred, timeout: float = 60, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def ref_config(path: Path, models: Path, targets: list[tuple[str, list[str], bool]], *, slow: bool = False,
               mlp: bool = True, gpus: str = "") -> Path:
    """Reference-backend config: an MLP and/or a ``slow`` MLP of other weights, x ``targets`` (name, CCs, stripped)."""
    text = '[project]\nname = "c"\nversion = "1"\n'
    if mlp:
        examples.mlp(models / "mlp.onnx")
        text += '[[models]]\nname = "mlp"\nonnx = "models/mlp.onnx"\n'
    if slow:
        examples.mlp(models / "slow.onnx", seed=7)
        text += '[[models]]\nname = "slow"\nonnx = "models/slow.onnx"\n'
    for name, ccs, strip in targets:
        text += (f'[[targets]]\nname = "{name}"\nbackend = "reference"\ncompute_capabilities = {json.dumps(ccs)}\n'
                 f"strip_weights = {'true' if strip else 'false'}\n")
    path.write_text(text + gpus)
    return path


def blob_shas(repo: Path) -> dict[str, str]:
    return {a.cell: a.sha256 for a in Manifest.load(repo) if a.kind == "engine"}


def assert_whole(repo: Path) -> None:
    """Only whole blobs named by the manifest, nothing half-written."""
    m = Manifest.load(repo)
    for a in m:
        assert (repo / a.path).is_file() and (repo / a.path).stat().st_size == a.size
    strays = [p for p in repo.rglob("*") if p.is_file() and p.name != "manifest.json" and ".rtxpack.lock" not in p.name
              and not p.relative_to(repo).as_posix().startswith("blobs/sha256/")]
    assert not strays, strays
    assert {p.name for p in (repo / "blobs").rglob("*") if p.is_file()} <= {a.sha256 for a in m}


# ---- the same repository as a local build ------------------------------------------------------
def test_cluster_build_is_the_local_build(dask2: DaskCluster, matrix_repo, tmp_path: Path, farm) -> None:
    """The 8-cell TensorRT-RTX matrix (two toolchains, one a venv) built by `rtxpack build --cluster` in a
    real process: the same cell ids and blob sha256s as the local -j 2 build, then an incremental no-op."""
    cfg, local_repo, _ = matrix_repo
    repo = tmp_path / "repo"
    proc = cli("build", str(cfg), "--repo", str(repo), "--cluster", dask2.address, "--json")
    d = json.loads(proc.stdout)
    assert (d["built"], d["failed"], d["skipped"]) == (8, 0, 0), d
    assert blob_shas(repo) == blob_shas(local_repo) and len(blob_shas(repo)) == 8
    assert {c["worker"] for c in d["cells"]} <= {"gpu89", "gpu86"}
    assert sorted(w["name"] for w in d["cluster"]["workers"]) == ["gpu86", "gpu89"]
    assert d["builder_runs"] == 8 and d["cluster"]["workers_lost"] == [] and d["manifest_writes"] >= 1
    assert d["cluster"]["transfer"] == "shared filesystem"   # one machine: models read, blobs staged in place
    assert d["cluster"]["blobs"] == {"staged": 8, "bytes": 0}
    assert 1 <= d["cluster"]["peak_running"] <= 2          # what the workers said they ran at once
    assert_whole(repo)
    again = json.loads(cli("build", str(cfg), "--repo", str(repo), "--cluster", dask2.address, "--json").stdout)
    assert (again["up_to_date"], again["builder_runs"], again["built"]) == (8, 0, 0)


def test_gpu_cells_land_on_the_worker_with_that_gpu(dask2: DaskCluster, ref_farm, tmp_path: Path) -> None:
    """Weight-stripped cells ask for gpu-sm<XY>: each runs on the worker that declared it; a CC no worker has
    is skipped with the reason; the CPU cell runs anywhere; blobs equal a local build's."""
    cfg = ref_config(tmp_path / "rtxpack.toml", tmp_path / "models",
                     [("ada", ["8.9"], True), ("ampere", ["8.6"], True), ("blackwell", ["12.0"], True),
                      ("portable", ["8.6", "8.9", "12.0"], False)])
    lines: list[str] = []
    report = build_on_cluster(cfg, tmp_path / "repo", cluster=dask2.address, progress=lines.append)
    by_target = {r.cell.target: r for r in report.results}
    assert by_target["ada"].status == "built" and by_target["ada"].worker == "gpu89"
    assert by_target["ampere"].status == "built" and by_target["ampere"].worker == "gpu86"
    assert by_target["portable"].status == "built" and by_target["portable"].worker in ("gpu89", "gpu86")
    skipped = by_target["blackwell"]
    assert skipped.status == "skipped" and "gpu-sm120" in skipped.error and "12.0" in skipped.error
    assert any(line.startswith("[skip]") and "gpu-sm120" in line for line in lines)
    # the same cells built here (planned as if this node had both GPUs) give the same blobs, and so do
    # they when models and blobs travel as bytes (as to workers that do not share this filesystem)
    local = build(cfg, tmp_path / "local", plan=make_plan(load_config(cfg), gpu_ccs=("8.6", "8.9")))
    assert local.count("built") == 3
    assert blob_shas(tmp_path / "repo") == blob_shas(tmp_path / "local")
    as_bytes = build_on_cluster(cfg, tmp_path / "bytes", cluster=dask2.address, transfer="bytes")
    assert as_bytes.cluster["transfer"] == "bytes" and as_bytes.count("built") == 3
    assert as_bytes.cluster["blobs"] == {"staged": 0, "bytes": 3} and report.cluster["blobs"]["staged"] == 3
    assert {r.cell.target: r.worker for r in as_bytes.results if r.status == "built"}["ada"] == "gpu89"
    assert blob_shas(tmp_path / "bytes") == blob_shas(tmp_path / "local")
    assert_whole(tmp_path / "bytes")


def test_cluster_local_starts_its_own_workers(farm, tmp_path: Path) -> None:
    """--cluster local: a LocalCluster of -j workers in the rtxpack process; the same blobs as a local build."""
    cfg = write_config(tmp_path / "rtxpack.toml", farm, MLP, CNN, target("p", ["8.6", "8.9", "12.0"]))
    d = json.loads(cli("build", str(cfg), "--repo", str(tmp_path / "repo"), "--cluster", "local", "-j", "2",
                       "--json").stdout)
    assert (d["built"], d["failed"]) == (2, 0) and len(d["cluster"]["workers"]) == 2
    assert set(d["cluster"]["seconds"]) == {"inputs", "builder", "blob", "fetch", "publish"}
    build(cfg, tmp_path / "local", jobs=2)
    assert blob_shas(tmp_path / "repo") == blob_shas(tmp_path / "local")


# ---- warm-ups ----------------------------------------------------------------------------------
GPUS = """
[[gpus]]
sku = "rtx4090"
compute_capability = "8.9"
name = "NVIDIA GeForce RTX 4090"
[[gpus]]
sku = "rtx3060"
compute_capability = "8.6"
[[gpus]]
sku = "rtx4080"
compute_capability = "8.9"
[[gpus]]
sku = "rtx5090"
compute_capability = "12.0"
"""


def test_warm_runs_on_each_sku_worker_and_names_the_missing(dask2: DaskCluster, ref_farm, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = ref_config(tmp_path / "rtxpack.toml", tmp_path / "models", [("portable", ["8.6", "8.9", "12.0"], False),
                                                                      ("blackwell", ["12.0"], False)], gpus=GPUS)
    repo = tmp_path / "repo"
    assert build_on_cluster(cfg, repo, cluster=dask2.address).count("built") == 2
    lines: list[str] = []
    rep = warm_on_cluster(cfg, repo, cluster=dask2.address, progress=lines.append)
    res = {(r.gpu, r.status): r for r in rep.results}
    assert res[("rtx4090", "warmed")].worker == "gpu89" and res[("rtx3060", "warmed")].worker == "gpu86"
    lie = res[("rtx4080", "failed")]          # gpu86 declares gpu-rtx4080 but has a 3060: refused there
    assert lie.worker == "gpu86" and "declares gpu-rtx4080" in lie.reason and "RTX 3060" in lie.reason
    assert sum(r.status == "skipped" and "12.0" in r.reason for r in rep.results) == 3   # the 12.0-only engine
    assert [m["sku"] for m in rep.missing] == ["rtx5090"] and "gpu-rtx5090" in rep.missing[0]["reason"]
    assert any("[missing] rtx5090" in line for line in lines)
    caches = Manifest.load(repo).select(kind="runtime-cache")
    assert sorted((c.gpu_name, c.compute_capabilities) for c in caches) == [
        ("NVIDIA GeForce RTX 3060", ("8.6",)), ("NVIDIA GeForce RTX 4090", ("8.9",))]
    # warming again (the CLI, in a process of its own) replaces; a failure makes the exit status 1
    proc = _ref_cli(["warm", str(cfg), "--repo", str(repo), "--cluster", dask2.address, "--json"])
    out, err = proc.communicate(timeout=120)
    d = json.loads(out)
    assert proc.returncode == 1 and (d["warmed"], d["failed"]) == (2, 1), err
    assert [m["sku"] for m in d["missing"]] == ["rtx5090"] and d["gpus"][0]["workers"] == ["gpu89"]
    assert len(Manifest.load(repo).select(kind="runtime-cache")) == 2
    monkeypatch.setenv("RTXPACK_DEVICE", json.dumps({**RTX4090, "backends": {"reference": "1.0.0"}}))
    with rtxpack.load("mlp", repo=repo) as s:
        assert s.provenance.runtime_cache.startswith("shipped")


# ---- faults ------------------------------------------------------------------------------------
@pytest.fixture
def dask3(farm_env, tmp_path: Path) -> Iterator[DaskCluster]:
    """A cluster of its own (tests kill its processes): CPU workers k1, k2 and an RTX 4090 worker g89."""
    c = start_cluster(tmp_path / "dask3", farm_env.toolchains,
                      {"k1": ("", None), "k2": ("", None), "g89": ("gpu-sm89=1 gpu-rtx4090=1", RTX4090)})
    yield c
    release(c)
    c.stop()


def _killer(c: DaskCluster, block: Path) -> str:
    """Wait for the blocked build, SIGKILL the Dask worker running it; its name."""
    pid = int(wait_for(lambda: (block / "started").exists() and (block / "started").read_text(), what="slow build"))
    name = next(n for n, p in c.workers.items() if p.pid == pid)
    c.kill(c.workers[name])
    return name


def test_killed_worker_cell_is_retried_elsewhere_or_fails_alone(dask3: DaskCluster, ref_farm, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = ref_config(tmp_path / "rtxpack.toml", tmp_path / "models", [("p", ["8.6", "8.9"], False)], slow=True)
    local = build(cfg, tmp_path / "local")
    # 1. retried: the slow cell's worker is SIGKILLed mid-build; the scheduler runs it on another worker
    #    (its model bytes too, if the killed worker held them)
    block = reset_block(dask3)
    out: dict = {}
    t = threading.Thread(target=lambda: out.update(r=build_on_cluster(cfg, tmp_path / "r1", cluster=dask3.address,
                                                                      transfer="bytes")))
    t.start()
    killed = _killer(dask3, block)
    t.join(timeout=120)
    rep = out["r"]
    slow = next(r for r in rep.results if r.cell.model == "slow")
    assert rep.count("built") == 2 and slow.worker != killed
    assert rep.cluster["workers_lost"] == [killed] and rep.cluster["retried"] == [slow.cell.id]
    assert rep.worker_crashes == 1
    assert blob_shas(tmp_path / "r1") == blob_shas(tmp_path / "local") and local.count("built") == 2
    assert_whole(tmp_path / "r1")
    # 2. fails alone: with allowed-failures 0 the scheduler gives up on the first death; the other cell builds
    from distributed import Client

    with Client(dask3.address, timeout=10) as client:
        client.run_on_scheduler(set_allowed_failures, 0)
    block = reset_block(dask3)
    t = threading.Thread(target=lambda: out.update(r=build_on_cluster(cfg, tmp_path / "r2", cluster=dask3.address)))
    t.start()
    killed = _killer(dask3, block)
    t.join(timeout=120)
    rep = out["r"]
    slow = next(r for r in rep.results if r.cell.model == "slow")
    assert slow.status == "failed" and "died" in slow.error and killed in slow.error, slow.error
    assert [r.status for r in rep.results if r.cell.model == "mlp"] == ["built"]
    assert len(Manifest.load(tmp_path / "r2")) == 1
    assert_whole(tmp_path / "r2")


def test_gpu_cell_fails_when_the_last_worker_with_that_gpu_is_gone(dask3: DaskCluster, ref_farm, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(farm_cluster, "NO_WORKER_GRACE_S", 1.0)
    cfg = ref_config(tmp_path / "rtxpack.toml", tmp_path / "models", [("ada", ["8.9"], True)], slow=True, mlp=False)
    block = reset_block(dask3, always=True)
    out: dict = {}
    t = threading.Thread(target=lambda: out.update(r=build_on_cluster(cfg, tmp_path / "r", cluster=dask3.address)))
    t.start()
    pid = int(wait_for(lambda: (block / "started").exists() and (block / "started").read_text(), what="slow build"))
    assert pid == dask3.workers["g89"].pid           # the stripped 8.9 cell runs on the one RTX 4090 worker
    t0 = time.monotonic()
    dask3.kill(dask3.workers["g89"])
    t.join(timeout=60)
    assert time.monotonic() - t0 < 30
    rep = out["r"]
    (slow,) = rep.results
    assert slow.status == "failed" and "no worker of the cluster offers gpu-sm89" in slow.error
    assert rep.cluster["workers_lost"] == ["g89"]


def _ref_cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """``rtxpack ARGS`` (the real CLI entry point) in a process that registered the reference backend first."""
    e = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.Popen([sys.executable, "-c", REF_CLI, str(Path(__file__).parent), *args], env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _lines(stream) -> tuple[list[str], threading.Thread]:  # type: ignore[no-untyped-def]
    """Lines of ``stream`` as they come (read by a thread; join it after the process ended)."""
    got: list[str] = []

    def pump() -> None:
        for line in iter(stream.readline, ""):
            got.append(line)
    t = threading.Thread(target=pump, daemon=True)
    t.start()
    return got, t


def _build_until_the_slow_cell(c: DaskCluster, tmp_path: Path):  # type: ignore[no-untyped-def]
    """`rtxpack build --cluster` of an MLP cell and a slow one, returned once the MLP cell is built and the
    slow one is blocked on a worker: (process, its stderr lines so far, their reader, the repository)."""
    cfg = ref_config(tmp_path / "rtxpack.toml", tmp_path / "models", [("p", ["8.6", "8.9"], False)], slow=True)
    block = reset_block(c, always=True)
    repo = tmp_path / "repo"
    proc = _ref_cli(["build", str(cfg), "--repo", str(repo), "--cluster", c.address])
    err, reader = _lines(proc.stderr)
    wait_for(lambda: (block / "started").exists() and any(" built " in x and "mlp" in x for x in err),
             what="the fast cell built and the slow one started")
    return proc, err, reader, repo


def test_scheduler_gone_mid_build_is_a_clear_error_and_keeps_finished_cells(dask3: DaskCluster, ref_farm,
                                                                          tmp_path: Path) -> None:
    proc, err, reader, repo = _build_until_the_slow_cell(dask3, tmp_path)
    t0 = time.monotonic()
    dask3.kill(dask3.scheduler)
    proc.wait(timeout=60)
    reader.join(timeout=10)
    assert proc.returncode == 1 and time.monotonic() - t0 < 30, err
    text = "".join(err)
    assert "rtxpack: error: lost the Dask scheduler" in text and "1 cell(s) were built and published, 1 were not" in text
    assert "fix: start the scheduler" in text and "Traceback" not in text
    assert [a.model for a in Manifest.load(repo)] == ["mlp"]
    assert_whole(repo)


def test_a_worker_that_stops_seeing_the_staging_folder_gets_bytes(dask2: DaskCluster, ref_farm, tmp_path: Path) -> None:
    """Shared filesystem decided at the start; a task on a worker that then no longer sees the token file
    (a worker without the share) answers needs_bytes and the cell is sent again with its model bytes."""
    cfg = ref_config(tmp_path / "rtxpack.toml", tmp_path / "models", [("a", ["8.6"], False), ("b", ["8.9"], False),
                                                                      ("c", ["12.0"], False)], slow=True, mlp=False)
    block = reset_block(dask2, always=True)
    out: dict = {}
    lines: list[str] = []
    repo = tmp_path / "repo"
    t = threading.Thread(target=lambda: out.update(r=build_on_cluster(cfg, repo, cluster=dask2.address,
                                                                      progress=lines.append)))
    t.start()
    wait_for(lambda: len(list(block.glob("started.*"))) == 2, what="both workers blocked")
    for token in (repo / ".tmp").glob("cluster-*.token"):
        token.unlink()
    (block / "always").unlink()
    (block / "release").write_text("")
    t.join(timeout=60)
    rep = out["r"]
    assert rep.cluster["transfer"] == "shared filesystem" and rep.count("built") == 3, rep.to_dict()
    assert rep.cluster["blobs"] == {"staged": 2, "bytes": 1}     # the resent cell came back as bytes
    assert any("does not see" in x and "sending it model bytes" in x for x in lines), lines
    assert build(cfg, tmp_path / "local").count("built") == 3
    assert blob_shas(repo) == blob_shas(tmp_path / "local")
    assert_whole(repo)


def test_ctrl_c_cancels_the_tasks_and_keeps_finished_cells(dask2: DaskCluster, ref_farm, tmp_path: Path) -> None:
    proc, err, reader, repo = _build_until_the_slow_cell(dask2, tmp_path)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    reader.join(timeout=10)
    assert proc.returncode == 130 and any("interrupted" in x for x in err), err
    assert [a.model for a in Manifest.load(repo)] == ["mlp"]
    assert_whole(repo)
    from distributed import Client

    with Client(dask2.address, timeout=10) as client:     # nothing of that build is left on the scheduler
        wait_for(lambda: not client.run_on_scheduler(tasks_named, "rtxpack-"), timeout=10, what="tasks released")
    release(dask2)


# ---- errors ------------------------------------------------------------------------------------
def test_unreachable_scheduler_is_one_clear_line(farm, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "rtxpack.toml", farm, MLP, target("p", ["8.6"]))
    import socket

    with socket.socket() as s:       # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = cli("build", str(cfg), "--repo", str(tmp_path / "repo"), "--cluster", f"tcp://127.0.0.1:{port}",
               env={"RTXPACK_CONNECT_TIMEOUT": "1"}, check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"rtxpack: error: cannot reach the Dask scheduler at tcp://127.0.0.1:{port}")
    assert "fix:" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "repo").exists()


def test_without_dask_the_error_names_the_extra(farm, tmp_path: Path) -> None:
    shadow = tmp_path / "shadow" / "distributed"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named distributed (hidden by the test)')\n")
    cfg = write_config(tmp_path / "rtxpack.toml", farm, MLP, target("p", ["8.6"]))
    e = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "shadow"), str(ROOT)]))
    proc = subprocess.run([sys.executable, "-m", "rtxpack.cli", "build", str(cfg), "--repo", str(tmp_path / "r"),
                           "--cluster", "local", "--json"], capture_output=True, text=True, env=e, timeout=120)
    assert proc.returncode == 1
    d = json.loads(proc.stdout)
    assert d["error"] == "ClusterError" and "pip install 'rtxpack[cluster]'" in d["fix"]
    # the local build does not need it
    ok = subprocess.run([sys.executable, "-m", "rtxpack.cli", "plan", str(cfg), "--json"], capture_output=True,
                        text=True, env=e, timeout=120)
    assert ok.returncode == 0, ok.stderr
