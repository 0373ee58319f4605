#!/usr/bin/env python3
"""Download throughput of rtxpack's fetch_artifact against curl, from nginx on 127.0.0.1.

Both fetch the same file from the same nginx in the same run, alternating, into the same
filesystem. rtxpack does its whole job: sha256 while streaming, size check, os.replace into a fresh
store. curl just writes the file. Prints the median of ``--runs`` runs each and the ratio.

    python scripts/bench_download.py                  # 512 MiB, 5 runs each
    python scripts/bench_download.py --size-mib 64 --runs 3
"""
from __future__ import annotations

import argparse
import hashlib
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rtxpack.installer.fetch import FetchStats, fetch_artifact  # noqa: E402
from rtxpack.installer.store import Store  # noqa: E402


@dataclass
class Artifact:
    sha256: str
    size: int
    path: str
    mirrors: tuple[str, ...] = ()
    id: str = "bench"


def start_nginx(root: Path, work: Path) -> tuple[subprocess.Popen[bytes], str]:
    """nginx on a free loopback port (same configuration style as tests/conftest.py)."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    user = "user root root;" if os.geteuid() == 0 else ""
    conf = work / "nginx.conf"
    conf.write_text(f"""
{user}
daemon off;
master_process off;

pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 64; }}
http {{
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    access_log off;
    client_body_temp_path {work}/cb; proxy_temp_path {work}/px; fastcgi_temp_path {work}/fc;
    uwsgi_temp_path {work}/uw; scgi_temp_path {work}/sc;
    server {{ listen 127.0.0.1:{port}; root {root}; location / {{ }} }}
}}
""")
    proc = subprocess.Popen([binary, "-p", str(work), "-c", str(conf), "-e", str(work / "error.log")])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.05)
    proc.kill()
    sys.exit(f"nginx did not start; see {work}/error.log")


def _cpu(after: resource.struct_rusage, before: resource.struct_rusage) -> float:
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def settle() -> None:
    """Let the previous run's dirty pages and deletes reach the disk first, so neither tool pays
    for the other's (on a disk mounted with ``discard`` freeing 512 MiB is not free)."""
    os.sync()
    time.sleep(1.0)


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    curl = subprocess.run(["curl", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    nginx = subprocess.run([shutil.which("nginx") or "/usr/sbin/nginx", "-v"], capture_output=True, text=True).stderr.strip()
    return (f"{cpu}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, {curl.split(' (')[0]}, {nginx.replace('nginx version: ', '')}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", type=Path, default=None, help="scratch directory (default: a temp dir)")
    ap.add_argument("--chart", type=Path, metavar="PNG", help="also draw MB/s against curl (scripts/charts.py)")
    args = ap.parse_args()
    if not shutil.which("curl"):
        sys.exit("curl is needed as the reference")

    scratch = Path(tempfile.mkdtemp(prefix="rtxpack-bench-", dir=args.dir))
    try:
        repo, work = scratch / "repo", scratch / "nginx"
        repo.mkdir()
        work.mkdir()
        size = args.size_mib << 20
        h = hashlib.sha256()
        tmp = repo / "data"
        with open(tmp, "wb") as f:
            for _ in range(args.size_mib // 16 + (args.size_mib % 16 > 0)):
                block = os.urandom(min(16 << 20, size - f.tell()))
                h.update(block)
                f.write(block)
        sha = h.hexdigest()
        rel = f"blobs/sha256/{sha[:2]}/{sha}"
        (repo / rel).parent.mkdir(parents=True)
        os.replace(tmp, repo / rel)
        art = Artifact(sha, size, rel)

        proc, url = start_nginx(repo, work)
        try:
            times: dict[str, list[float]] = {"curl": [], "rtxpack": []}
            cpu: dict[str, list[float]] = {"curl": [], "rtxpack": []}
            load_before = os.getloadavg()[0]
            # one untimed warm-up each: page cache, TCP, imports. Alternating, same conditions.
            for i in range(args.runs + 1):
                out = scratch / f"curl{i}.out"
                settle()
                r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                t0 = time.perf_counter()
                subprocess.run(["curl", "-sS", "--fail", "--noproxy", "*", "-o", str(out), f"{url}/{rel}"], check=True)
                t_curl = time.perf_counter() - t0
                c_curl = _cpu(resource.getrusage(resource.RUSAGE_CHILDREN), r0)
                assert out.stat().st_size == size
                out.unlink()

                store = Store(scratch / f"store{i}")
                stats = FetchStats()
                settle()
                r0 = resource.getrusage(resource.RUSAGE_SELF)
                t0 = time.perf_counter()
                path = fetch_artifact(art, repo=url, store=store, progress=False, stats=stats)
                t_rtx = time.perf_counter() - t0
                c_rtx = _cpu(resource.getrusage(resource.RUSAGE_SELF), r0)
                assert stats.bytes_downloaded == size and path.stat().st_size == size
                shutil.rmtree(store.root)
                if i:
                    times["curl"].append(t_curl)
                    times["rtxpack"].append(t_rtx)
                    cpu["curl"].append(c_curl)
                    cpu["rtxpack"].append(c_rtx)
        finally:
            proc.send_signal(signal.SIGQUIT)
            proc.wait(timeout=10)

        med = {k: statistics.median(v) for k, v in times.items()}
        mbps = {k: size / 1e6 / v for k, v in med.items()}
        print(f"# {args.size_mib} MiB from nginx on 127.0.0.1, median of {args.runs} runs each")
        print(f"# machine: {machine()}")
        print(f"# load average (1 min) before/after: {load_before:.2f} / {os.getloadavg()[0]:.2f}")
        print(f"{'tool':<34} {'median s':>9} {'MB/s':>9} {'vs curl':>8} {'CPU s':>6}   runs (s)")
        rows = [("curl -o (no hashing)", "curl"), ("rtxpack fetch_artifact (sha256)", "rtxpack")]
        for label, key in rows:
            runs = " ".join(f"{t:.3f}" for t in times[key])
            print(f"{label:<34.34} {med[key]:>9.3f} {mbps[key]:>9.0f} {mbps[key] / mbps['curl']:>7.2f}x "
                  f"{statistics.median(cpu[key]):>6.3f}   {runs}")
        print("# MB/s = 10^6 bytes/s; CPU s = median user+sys seconds of the client process (curl, or")
        print("# this Python process incl. its hashing thread); nginx's own CPU is not counted.")
        if args.chart:
            import charts

            where = "tmpfs" if str(args.dir or "").startswith("/dev/shm") else str(args.dir or "temp dir")
            charts.download_vs_curl([(where, mbps["curl"], mbps["rtxpack"])], args.chart)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
