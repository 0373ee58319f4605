"""Shared pytest fixtures for rtxpack.

Environment
    ``_isolated_env`` (autouse): every test gets its own ``RTXPACK_CACHE_DIR`` (under tmp_path) and
    no other ``RTXPACK_*`` variable; network knobs are set small so failures are fast
    (``RTXPACK_RETRY_BACKOFF=0.01``). Tests override with ``monkeypatch.setenv``.

Servers (loopback only: 127.0.0.1, never another address)
    ``nginx``        a real nginx serving ``tmp_path/"repo"`` (Range, ETag, If-Range for real);
                     ``.url``, ``.root``, ``.hits(path)`` parses its access log.
                     Skipped only when no nginx binary exists (CI installs the Debian package).
    ``faultserver``  :class:`tests.faultserver.FaultServer`, scripted faults (cuts, wrong bytes,
                     500/404, hangs, 200 to a Range request).
    ``s3``           a real S3-compatible server (moto in server mode, as s3fs's own tests use it) on
                     127.0.0.1 with one empty bucket per test: ``.endpoint``, ``.bucket``, ``.client``
                     (boto3), ``.url(prefix)`` (``s3://bucket/prefix``); credentials are dummies.

Helpers
    ``make_artifact(data, repo_dir=None, **attrs)`` -> :class:`Art`, writing the bytes into the
    repository layout ``blobs/sha256/ab/<sha>`` when ``repo_dir`` is given.

Other areas: add fixtures below the marked section, with a line in this docstring.

Installer hardening (tests/test_faults_*.py)
    ``small_fs(size)``  a real small filesystem mounted under tmp_path (tmpfs; a loop-mounted ext4
                     image if tmpfs cannot be mounted); ``.ro()`` / ``.rw()`` remount it; skipped
                     with the reason when this machine forbids mounting. Unmounted afterwards.
    ``canary``       a folder *outside* the cache with files in it; ``canary.assert_untouched()``
                     checks that no byte, size, mtime or name in it changed.
"""
from __future__ import annotations

import grp
import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from faultserver import FaultServer  # noqa: E402

NGINX_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")


# -- environment ---------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private cache dir and a clean RTXPACK_* environment for every test."""
    for name in list(os.environ):
        if name.startswith("RTXPACK_"):
            monkeypatch.delenv(name)
    cache = tmp_path / "cache"
    monkeypatch.setenv("RTXPACK_CACHE_DIR", str(cache))
    monkeypatch.setenv("RTXPACK_RETRY_BACKOFF", "0.01")
    # Never let a proxy setting send loopback traffic elsewhere.
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    return cache


# -- artifacts -----------------------------------------------------------------------------------
@dataclass
class Art:
    """Duck-typed artifact as fetch_artifact sees it (sha256, size, path, mirrors, id...)."""

    sha256: str
    size: int
    path: str
    mirrors: list[str] = field(default_factory=list)
    id: str = "test-artifact"
    model: str = "mlp"
    kind: str = "plan"
    data: bytes = b""


def _write_artifact(data: bytes, repo_dir: Path | None = None, **attrs: object) -> Art:
    sha = hashlib.sha256(data).hexdigest()
    rel = f"blobs/sha256/{sha[:2]}/{sha}"
    if repo_dir is not None:
        dest = Path(repo_dir) / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
    return Art(sha256=sha, size=len(data), path=rel, data=data, **attrs)  # type: ignore[arg-type]


@pytest.fixture
def make_artifact() -> Callable[..., Art]:
    return _write_artifact


def random_bytes(n: int, seed: int = 0) -> bytes:
    import random

    return random.Random(seed).randbytes(n)


# -- nginx ---------------------------------------------------------------------------------------
@dataclass
class NginxHit:
    method: str
    path: str
    status: int
    sent: int          # body bytes sent ($body_bytes_sent)
    range: str | None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nginx:
    """nginx on 127.0.0.1:<free port> serving ``root``; all its files live under ``workdir``."""

    def __init__(self, root: Path, workdir: Path, limit_rate: str | None = None) -> None:
        self.binary = next((p for p in NGINX_CANDIDATES if os.access(p, os.X_OK)), None) or shutil.which("nginx")
        self.root = root
        self.workdir = workdir
        self.limit_rate = limit_rate
        self.access_log = workdir / "access.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.url = ""

    def _conf(self) -> str:
        w = self.workdir
        # As root, nginx would switch workers to "nobody", who cannot read pytest's 0700 tmp dirs.
        user = f"user {pwd.getpwuid(0).pw_name} {grp.getgrgid(0).gr_name};" if os.geteuid() == 0 else ""
        rate = f"limit_rate {self.limit_rate};" if self.limit_rate else ""
        return f"""
{user}
daemon off;
master_process off;  # one process: nothing is orphaned if it is killed
worker_processes 1;
pid {w}/nginx.pid;
error_log {w}/error.log warn;
events {{ worker_connections 256; }}
http {{
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 30;
    log_format rtx '$request_method $uri $status $body_bytes_sent "$http_range"';
    access_log {self.access_log} rtx;
    client_body_temp_path {w}/client_body;
    proxy_temp_path {w}/proxy;
    fastcgi_temp_path {w}/fastcgi;
    uwsgi_temp_path {w}/uwsgi;
    scgi_temp_path {w}/scgi;
    server {{
        listen 127.0.0.1:{self.port};
        root {self.root};
        {rate}
        location / {{ }}
    }}
}}
"""

    def start(self) -> "Nginx":
        if not self.binary:
            pytest.skip("nginx is not installed (apt-get install nginx); CI installs it")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)
        last_err = ""
        for _ in range(5):  # the free port may be taken between probing and nginx binding it
            self.port = _free_port()
            conf = self.workdir / "nginx.conf"
            conf.write_text(self._conf())
            self.proc = subprocess.Popen(
                [self.binary, "-p", str(self.workdir), "-c", str(conf), "-e", str(self.workdir / "error.log")],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                    self.url = f"http://127.0.0.1:{self.port}"
                    return self
                except OSError:
                    time.sleep(0.02)
            last_err = self._stop_and_read_error()
        raise RuntimeError(f"nginx did not start: {last_err}")

    def _stop_and_read_error(self) -> str:
        err = ""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            _, stderr = self.proc.communicate(timeout=5)
            err = stderr.decode(errors="replace")
            self.proc = None
        log = self.workdir / "error.log"
        return err + (log.read_text(errors="replace") if log.exists() else "")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: flushes the access log
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    def hits(self, path: str | None = None, *, at_least: int = 0, timeout: float = 3.0) -> list[NginxHit]:
        """Requests in the access log (for ``path`` when given); waits for ``at_least`` of them,
        because nginx writes the line just after the client has its last byte."""
        deadline = time.monotonic() + timeout
        while True:
            hits = []
            if self.access_log.exists():
                for line in self.access_log.read_text().splitlines():
                    method, uri, status, sent, rng = line.split(" ", 4)
                    rng = rng.strip('"')
                    hit = NginxHit(method, uri, int(status), int(sent), None if rng in ("", "-") else rng)
                    if path is None or hit.path == path or hit.path == "/" + path.lstrip("/"):
                        hits.append(hit)
            if len(hits) >= at_least or time.monotonic() > deadline:
                return hits
            time.sleep(0.02)


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Nginx]:
    """A real nginx serving the directory ``nginx.root`` (= tmp_path/"repo")."""
    server = Nginx(tmp_path / "repo", tmp_path / "nginx").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def slow_nginx(tmp_path: Path) -> Iterator[Nginx]:
    """Like ``nginx`` but sending at most 1 MiB/s per connection (to catch downloads mid-way)."""
    server = Nginx(tmp_path / "repo", tmp_path / "nginx-slow", limit_rate="1m").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def faultserver() -> Iterator[FaultServer]:
    """A scripted fault-injecting HTTP server on 127.0.0.1 (see tests/faultserver.py)."""
    with FaultServer(lifetime=60) as server:
        yield server


# -- fixtures from other areas go below this line ------------------------------------------------


@pytest.fixture
def reference_backend() -> Iterator[object]:
    """The CPU reference backend (tests/refbackend.py) registered as backend ``reference`` for one test."""
    import refbackend

    backend = refbackend.install()
    try:
        yield backend
    finally:
        refbackend.uninstall()


# -- S3-compatible server (moto) ---------------------------------------------------------------------
@dataclass
class S3:
    endpoint: str
    bucket: str
    client: object

    def url(self, prefix: str = "repo") -> str:
        return f"s3://{self.bucket}/{prefix}"

    def http(self, prefix: str = "repo") -> str:
        """The same objects as plain static HTTP (path-style), as an installer reads them."""
        return f"{self.endpoint}/{self.bucket}/{prefix}"


@pytest.fixture(scope="session")
def _moto_server() -> Iterator[str]:
    pytest.importorskip("moto.server", reason="moto[server] is in the test extra")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(_moto_server: str, monkeypatch: pytest.MonkeyPatch) -> S3:
    import uuid

    import boto3

    for k, v in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                 ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(k, v)
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(k, raising=False)
    client = boto3.client("s3", endpoint_url=_moto_server, region_name="us-east-1")
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return S3(endpoint=_moto_server, bucket=bucket, client=client)


# -- installer hardening: real small filesystems, and a canary outside the cache ---------------------
class SmallFS:
    """A mounted filesystem of ``size`` bytes at ``path`` (see the ``small_fs`` fixture)."""

    def __init__(self, path: Path, kind: str) -> None:
        self.path, self.kind = path, kind

    def _remount(self, mode: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{mode}", str(self.path)], check=True, capture_output=True)

    def ro(self) -> None:
        self._remount("ro")

    def rw(self) -> None:
        self._remount("rw")

    @property
    def free(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self, leave: int = 0) -> Path:
        """Fill the filesystem with one file until at most ``leave`` bytes (page-rounded) stay free."""
        filler = self.path / "filler"
        with open(filler, "ab") as f:
            while self.free > leave:
                try:
                    f.write(b"\0" * min(1 << 20, max(4096, self.free - leave)))
                    f.flush()
                except OSError:
                    break
        return filler


def _mount(target: Path, size: int, work: Path) -> tuple[str | None, str]:
    """Mount tmpfs (or a loop ext4 image) of ``size`` bytes at ``target``: (kind, why-not)."""
    target.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(target)],
                       capture_output=True, text=True)
    if r.returncode == 0:
        return "tmpfs", ""
    why = f"tmpfs: {r.stderr.strip() or r.returncode}"
    image = work / "fs.img"
    try:
        with open(image, "wb") as f:
            f.truncate(max(size, 2 << 20))
        mk = subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], capture_output=True, text=True)
        lo = subprocess.run(["mount", "-o", "loop", str(image), str(target)], capture_output=True, text=True) \
            if mk.returncode == 0 else mk
    except OSError as e:
        return None, f"{why}; loop ext4: {e}"
    if lo.returncode == 0:
        return "ext4-loop", ""
    return None, f"{why}; loop ext4: {(lo.stderr or '').strip() or lo.returncode}"


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Callable[[int], SmallFS]]:
    """``small_fs(size)`` -> a :class:`SmallFS` mounted under tmp_path (unmounted at teardown)."""
    mounted: list[Path] = []

    def make(size: int) -> SmallFS:
        target = tmp_path / f"fs{len(mounted)}"
        kind, why = _mount(target, size, tmp_path)
        if kind is None:
            pytest.skip(f"this machine does not allow mounting a small filesystem ({why}); "
                        "run the suite as root (CI does) to test full and read-only disks for real")
        mounted.append(target)
        return SmallFS(target, kind)

    try:
        yield make
    finally:
        for target in reversed(mounted):
            subprocess.run(["umount", "-l", str(target)], capture_output=True)


class Canary:
    """Files outside the cache directory; :meth:`assert_untouched` proves nothing wrote there."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.file = root / "canary.bin"
        self.file.write_bytes(b"canary bytes that must never change\n" * 100)
        os.utime(self.file, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
        self.dir = root / "dir"
        self.dir.mkdir()
        (self.dir / "keep.txt").write_text("keep")
        self._before = self.snapshot()

    def snapshot(self) -> dict[str, tuple[bytes, int, int]]:
        out = {}
        for p in sorted(self.root.rglob("*")):
            st = p.lstat()
            out[str(p.relative_to(self.root))] = (p.read_bytes() if p.is_file() and not p.is_symlink() else b"",
                                                  st.st_size, st.st_mtime_ns)
        return out

    def assert_untouched(self) -> None:
        after = self.snapshot()
        assert after == self._before, {k: (self._before.get(k), after.get(k)) for k in set(after) | set(self._before)
                                       if self._before.get(k) != after.get(k)}


@pytest.fixture
def canary(tmp_path: Path) -> Canary:
    """A folder outside the cache dir (tmp_path/"outside") to aim planted links at."""
    return Canary(tmp_path / "outside")
