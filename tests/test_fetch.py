"""The downloader against real servers on 127.0.0.1: nginx (Range, ETag, If-Range) and a scripted
fault server (cuts, wrong bytes, 500/404, hangs, 200 to a Range request)."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import requests

from conftest import Art, random_bytes
from rtxpack.core.errors import ChecksumMismatch, FetchError, ManifestError, OfflineError
from rtxpack.core.location import Location
from rtxpack.installer.fetch import FetchStats, fetch_artifact, fetch_bytes
from rtxpack.installer.store import Store

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20


def child_env(**extra: str) -> dict[str, str]:
    env = os.environ.copy()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def on_fault(server, art: Art, behaviours=None, data: bytes | None = None) -> str:
    """Serve ``art`` from the fault server at its repository path; returns that URL path."""
    path = "/" + art.path
    server.files[path] = art.data if data is None else data
    if behaviours is not None:
        server.script(path, behaviours)
    return path


def assert_installed(path: Path, art: Art) -> None:
    assert path == Store().blob_path(art.sha256)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == art.sha256


def assert_nothing_installed(art: Art) -> None:
    store = Store()
    assert not store.has(art.sha256)
    assert store.entries() == []


# -- the plain path ------------------------------------------------------------------------------
def test_fetch_from_nginx_then_from_store(nginx, make_artifact) -> None:
    art = make_artifact(random_bytes(MiB + 123), nginx.root)
    stats = FetchStats()
    path = fetch_artifact(art, repo=nginx.url, stats=stats, progress=False)
    assert_installed(path, art)
    assert (stats.requests, stats.bytes_downloaded, stats.from_store) == (1, art.size, False)
    assert stats.source == f"{nginx.url}/{art.path}"
    (entry,) = Store().entries()
    assert entry.meta["model"] == "mlp" and entry.meta["kind"] == "plan"
    assert [(h.status, h.sent) for h in nginx.hits(art.path, at_least=1)] == [(200, art.size)]
    assert list(Store().tmp_dir.iterdir()) == []  # no partial or etag file left behind

    again = FetchStats()
    assert fetch_artifact(art, repo=nginx.url, stats=again) == path
    assert again.from_store and again.requests == 0
    assert len(nginx.hits(art.path)) == 1


def test_repository_as_directory_and_file_url(tmp_path: Path, make_artifact) -> None:
    repo = tmp_path / "repo dir"
    art = make_artifact(random_bytes(300_000), repo)
    path = fetch_artifact(art, repo=repo)
    assert_installed(path, art)
    Store().remove(art.sha256)
    path = fetch_artifact(art, repo=(repo.as_uri()))  # file:// with a quoted space
    assert_installed(path, art)
    assert Location.parse(repo).join(art.path) == str(repo.resolve() / art.path)


def test_directory_repository_with_missing_or_wrong_file(tmp_path: Path, make_artifact) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    art = make_artifact(b"x" * 1000)
    with pytest.raises(FetchError, match="does not exist") as info:
        fetch_artifact(art, repo=repo)
    assert not isinstance(info.value, ChecksumMismatch)
    (repo / art.path).parent.mkdir(parents=True)
    (repo / art.path).write_bytes(b"y" * 1000)  # right size, wrong bytes
    with pytest.raises(ChecksumMismatch):
        fetch_artifact(art, repo=repo)
    assert_nothing_installed(art)


def test_artifact_path_cannot_escape_the_repository(tmp_path: Path) -> None:
    for bad in ("../secret", "/etc/passwd", "blobs/../../x", "C:/x", ""):
        with pytest.raises(ManifestError):
            Location.parse(tmp_path).join(bad)
        with pytest.raises(ManifestError):
            Location.parse("http://127.0.0.1:1/repo").join(bad)
    assert Location.parse("http://127.0.0.1:1/repo/").join("a/b") == "http://127.0.0.1:1/repo/a/b"


# -- resume --------------------------------------------------------------------------------------
def test_killed_download_resumes_and_fetches_only_missing_bytes(slow_nginx, nginx, make_artifact) -> None:
    """A real process is killed mid-download (nginx at 1 MiB/s); the next fetch sends
    ``Range: bytes=N-`` and nginx's access log shows exactly size - N body bytes sent."""
    art = make_artifact(random_bytes(3 * MiB, seed=1), nginx.root)
    code = textwrap.dedent(f"""
        from rtxpack.installer.fetch import fetch_artifact
        from conftest import Art
        fetch_artifact(Art(sha256={art.sha256!r}, size={art.size}, path={art.path!r}), repo={slow_nginx.url!r},
                       progress=False)
    """)
    env = child_env(PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True)
    partial = Store().partial_path(art.sha256)
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and proc.poll() is None and (
                not partial.exists() or partial.stat().st_size < 300_000):
            time.sleep(0.02)
    finally:
        proc.kill()
        _, err = proc.communicate()
    assert proc.returncode == -9, err
    have = partial.stat().st_size
    assert 300_000 <= have < art.size
    assert Store().entries() == []  # a partial download is never an entry

    stats = FetchStats()
    path = fetch_artifact(art, repo=nginx.url, stats=stats, progress=False)
    assert_installed(path, art)
    assert (stats.resumed_from, stats.bytes_downloaded, stats.requests) == (have, art.size - have, 1)
    (hit,) = nginx.hits(art.path, at_least=1)
    assert (hit.status, hit.range, hit.sent) == (206, f"bytes={have}-", art.size - have)
    assert not partial.exists()


@pytest.mark.parametrize("fast_body", [True, False], ids=["readinto", "urllib3-read1"])
def test_cut_connection_is_retried_with_range(faultserver, make_artifact, monkeypatch, fast_body) -> None:
    import rtxpack.installer.fetch

    monkeypatch.setattr(rtxpack.installer.fetch, "FAST_BODY", fast_body)
    art = make_artifact(random_bytes(MiB, seed=2))
    path = on_fault(faultserver, art, ["cut:300000"])
    stats = FetchStats()
    assert_installed(fetch_artifact(art, repo=faultserver.url, stats=stats), art)
    hits = faultserver.hits(path)
    assert [(h.range, h.status, h.sent) for h in hits] == [(None, 200, 300_000), ("bytes=300000-", 206, art.size - 300_000)]
    assert (stats.requests, stats.retries, stats.resumed_from, stats.bytes_downloaded) == (2, 1, 300_000, art.size)


def test_resume_uses_etag_if_range_with_nginx(nginx, make_artifact) -> None:
    art = make_artifact(random_bytes(MiB, seed=3), nginx.root)
    url = f"{nginx.url}/{art.path}"
    etag = requests.head(url).headers["ETag"]
    store = Store()
    partial = store.partial_path(art.sha256)
    info = partial.with_name(partial.name + ".json")

    partial.write_bytes(art.data[:1000])
    info.write_text(json.dumps({"url": url, "etag": etag}))
    stats = FetchStats()
    assert_installed(fetch_artifact(art, repo=nginx.url, stats=stats), art)
    assert stats.resumed_from == 1000 and stats.bytes_downloaded == art.size - 1000

    # A stale ETag: nginx ignores the Range and sends the whole file (200); we restart cleanly.
    store.remove(art.sha256)
    partial.write_bytes(art.data[:1000])
    info.write_text(json.dumps({"url": url, "etag": '"stale-0"'}))
    stats = FetchStats()
    assert_installed(fetch_artifact(art, repo=nginx.url, stats=stats), art)
    assert (stats.restarts, stats.resumed_from, stats.bytes_downloaded) == (1, 0, art.size)
    assert [(h.status, h.range) for h in nginx.hits(art.path, at_least=3)][1:] == [
        (206, "bytes=1000-"), (200, "bytes=1000-")]


def test_200_answer_to_range_restarts_from_zero(faultserver, make_artifact) -> None:
    art = make_artifact(random_bytes(500_000, seed=4))
    path = on_fault(faultserver, art, ["ignore-range"])
    Store().partial_path(art.sha256).write_bytes(art.data[:200_000])
    stats = FetchStats()
    assert_installed(fetch_artifact(art, repo=faultserver.url, stats=stats), art)
    assert [(h.range, h.status) for h in faultserver.hits(path)] == [("bytes=200000-", 200)]
    assert (stats.restarts, stats.bytes_downloaded, stats.requests) == (1, art.size, 1)


def test_416_and_oversized_partial_restart(faultserver, make_artifact) -> None:
    art = make_artifact(random_bytes(100_000, seed=5))
    path = on_fault(faultserver, art, ["status:416"])
    partial = Store().partial_path(art.sha256)
    partial.write_bytes(art.data[:5000])
    assert_installed(fetch_artifact(art, repo=faultserver.url), art)
    assert [(h.range, h.status) for h in faultserver.hits(path)] == [("bytes=5000-", 416), (None, 200)]

    Store().remove(art.sha256)
    partial.write_bytes(art.data + b"extra")  # longer than the artifact: not a prefix of it
    stats = FetchStats()
    assert_installed(fetch_artifact(art, repo=faultserver.url, stats=stats), art)
    assert faultserver.hits(path)[-1].range is None and stats.restarts == 1


def test_corrupt_partial_is_detected_and_refetched(nginx, make_artifact) -> None:
    art = make_artifact(random_bytes(400_000, seed=6), nginx.root)
    Store().partial_path(art.sha256).write_bytes(b"\0" * 100_000)  # not the artifact's first bytes
    stats = FetchStats()
    assert_installed(fetch_artifact(art, repo=nginx.url, stats=stats), art)
    assert [h.status for h in nginx.hits(art.path, at_least=2)] == [206, 200]
    assert stats.restarts == 1


# -- faults and mirrors --------------------------------------------------------------------------
def test_wrong_bytes_are_never_installed(faultserver, make_artifact) -> None:
    art = make_artifact(random_bytes(200_000, seed=7))
    path = on_fault(faultserver, art, ["wrong"] * 10)
    mirror = f"{faultserver.url}/mirror/{art.path}"
    faultserver.files["/mirror/" + art.path] = art.data
    faultserver.script("/mirror/" + art.path, ["wrong"] * 10)
    art.mirrors = [mirror]
    with pytest.raises(ChecksumMismatch) as info:
        fetch_artifact(art, repo=faultserver.url)
    err = info.value
    assert err.expected_sha256 == art.sha256 and err.actual_sha256 not in (None, art.sha256)
    assert len(faultserver.hits(path)) == 1 and len(faultserver.hits("/mirror/" + art.path)) == 1
    assert_nothing_installed(art)
    assert list(Store().tmp_dir.iterdir()) == []


def test_wrong_bytes_then_good_mirror(faultserver, nginx, make_artifact) -> None:
    art = make_artifact(random_bytes(200_000, seed=8), nginx.root)
    on_fault(faultserver, art, ["wrong"])
    art.mirrors = [f"{nginx.url}/{art.path}"]
    stats = FetchStats()
    assert_installed(fetch_artifact(art, repo=faultserver.url, stats=stats), art)
    assert stats.source == art.mirrors[0]
    assert len(stats.errors) == 1 and "sha256 mismatch" in stats.errors[0]


def test_server_errors_are_retried_then_mirror(faultserver, nginx, make_artifact, monkeypatch) -> None:
    monkeypatch.setenv("RTXPACK_RETRIES", "2")
    art = make_artifact(random_bytes(100_000, seed=9), nginx.root)
    path = on_fault(faultserver, art, ["status:500"] * 10)
    art.mirrors = [f"{nginx.url}/{art.path}"]
    stats = FetchStats()
    assert_installed(fetch_artifact(art, repo=faultserver.url, stats=stats), art)
    assert [h.status for h in faultserver.hits(path)] == [500, 500, 500]
    assert len(nginx.hits(art.path, at_least=1)) == 1
    assert stats.retries == 2 and stats.source == art.mirrors[0]


def test_500_then_success_on_same_source(faultserver, make_artifact) -> None:
    art = make_artifact(random_bytes(10_000, seed=10))
    path = on_fault(faultserver, art, ["status:503", "status:500"])
    assert_installed(fetch_artifact(art, repo=faultserver.url), art)
    assert [h.status for h in faultserver.hits(path)] == [503, 500, 200]


def test_404_goes_to_the_mirror_without_retrying(faultserver, nginx, make_artifact) -> None:
    art = make_artifact(random_bytes(10_000, seed=11), nginx.root)
    art.mirrors = [f"{nginx.url}/{art.path}"]
    assert_installed(fetch_artifact(art, repo=faultserver.url), art)  # fault server has no such file
    assert [h.status for h in faultserver.hits()] == [404]


def test_all_sources_fail_names_each(faultserver, make_artifact) -> None:
    art = make_artifact(random_bytes(1000, seed=12))
    art.mirrors = [f"{faultserver.url}/m1/{art.path}"]
    with pytest.raises(FetchError) as info:
        fetch_artifact(art, repo=faultserver.url)
    err = info.value
    assert not isinstance(err, (ChecksumMismatch, OfflineError))
    assert "HTTP 404" in str(err) and art.mirrors[0] in str(err) and "test-artifact" in str(err)
    assert err.sources == [f"{faultserver.url}/{art.path}", art.mirrors[0]]
    assert_nothing_installed(art)


@pytest.mark.timeout(20)
def test_hung_server_times_out_then_mirror(faultserver, nginx, make_artifact, monkeypatch) -> None:
    monkeypatch.setenv("RTXPACK_READ_TIMEOUT", "0.3")
    monkeypatch.setenv("RTXPACK_RETRIES", "1")
    art = make_artifact(random_bytes(10_000, seed=13), nginx.root)
    path = on_fault(faultserver, art, ["hang"] * 10)
    with pytest.raises(FetchError, match="timed out") as info:
        fetch_artifact(art, repo=faultserver.url)
    assert "RTXPACK_READ_TIMEOUT" in str(info.value)
    assert len(faultserver.hits(path)) == 2
    art.mirrors = [f"{nginx.url}/{art.path}"]
    assert_installed(fetch_artifact(art, repo=faultserver.url), art)


@pytest.mark.timeout(20)
def test_body_that_stalls_times_out_and_resumes(faultserver, make_artifact, monkeypatch) -> None:
    """A body that goes silent hits the read timeout; the retry resumes. Bytes of the read in
    flight when the timeout fired (at most one 256 KiB buffer) are fetched again."""
    import rtxpack.installer.fetch

    monkeypatch.setenv("RTXPACK_READ_TIMEOUT", "0.3")
    art = make_artifact(random_bytes(900_000, seed=20))
    path = on_fault(faultserver, art, ["stall:600000"])
    stats = FetchStats()
    assert_installed(fetch_artifact(art, repo=faultserver.url, stats=stats), art)
    first, second = faultserver.hits(path)
    assert (first.range, first.sent) == (None, 600_000)
    assert 0 < stats.resumed_from <= 600_000 < stats.resumed_from + rtxpack.installer.fetch._BUFFER
    assert (second.range, second.sent) == (f"bytes={stats.resumed_from}-", art.size - stats.resumed_from)
    assert "timeout" in stats.errors[0].lower()


def test_connection_refused_is_a_fetch_error(make_artifact, monkeypatch) -> None:
    import socket

    monkeypatch.setenv("RTXPACK_RETRIES", "0")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(FetchError, match="cannot connect to 127.0.0.1:[0-9]+: connection refused"):
            fetch_artifact(make_artifact(b"z" * 100), repo=f"http://127.0.0.1:{port}")


# -- offline -------------------------------------------------------------------------------------
def test_offline_with_artifact_in_store_makes_no_request(faultserver, make_artifact, monkeypatch) -> None:
    art = make_artifact(random_bytes(5000, seed=14))
    on_fault(faultserver, art)
    expected = Store().add_bytes(art.data)
    monkeypatch.setenv("RTXPACK_OFFLINE", "1")
    stats = FetchStats()
    assert fetch_artifact(art, repo=faultserver.url, stats=stats) == expected
    assert stats.from_store and stats.requests == 0 and faultserver.hits() == []


def test_offline_without_artifact_fails_clearly(faultserver, make_artifact, monkeypatch) -> None:
    art = make_artifact(random_bytes(5000, seed=15), id="resnet50-sm89-fp16")
    on_fault(faultserver, art)
    art.mirrors = [f"{faultserver.url}/{art.path}"]
    monkeypatch.setenv("RTXPACK_OFFLINE", "1")
    with pytest.raises(OfflineError) as info:
        fetch_artifact(art, repo=faultserver.url)
    msg = str(info.value)
    assert "resnet50-sm89-fp16" in msg and "RTXPACK_OFFLINE" in msg and "--repo bundle.tar" in msg
    assert info.value.sha256 == art.sha256
    assert faultserver.hits() == []
    assert_nothing_installed(art)
    with pytest.raises(OfflineError):
        fetch_bytes(f"{faultserver.url}/manifest.json", max_size=1000)
    assert faultserver.hits() == []


def test_offline_from_a_directory_repository(tmp_path: Path, make_artifact, monkeypatch) -> None:
    art = make_artifact(random_bytes(5000, seed=16), tmp_path / "repo")
    art.mirrors = ["http://127.0.0.1:9/never-contacted"]
    monkeypatch.setenv("RTXPACK_OFFLINE", "1")
    assert_installed(fetch_artifact(art, repo=tmp_path / "repo"), art)


# -- many processes ------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_eight_processes_download_once(slow_nginx, make_artifact, tmp_path: Path) -> None:
    """8 processes start together on one artifact (nginx at 1 MiB/s, 1.5 MiB): one downloads
    while the other seven wait on the blob's lock; nginx sees exactly one request."""
    art = make_artifact(random_bytes(3 * MiB // 2, seed=17), slow_nginx.root)
    go = tmp_path / "go"
    code = textwrap.dedent(f"""
        import hashlib, os, sys, time
        from rtxpack.installer.fetch import FetchStats, fetch_artifact
        from conftest import Art
        while not os.path.exists({str(go)!r}):
            time.sleep(0.005)
        stats = FetchStats()
        p = fetch_artifact(Art(sha256={art.sha256!r}, size={art.size}, path={art.path!r}),
                           repo={slow_nginx.url!r}, progress=False, stats=stats)
        print(p, hashlib.sha256(open(p, 'rb').read()).hexdigest(), stats.requests, flush=True)
    """)
    env = child_env(PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(8)]
    time.sleep(1.0)  # let them import and start polling
    go.touch()
    outputs = [p.communicate(timeout=50)[0].split() for p in procs]
    assert [p.returncode for p in procs] == [0] * 8
    blob = str(Store().blob_path(art.sha256))
    assert all(out[:2] == [blob, art.sha256] for out in outputs)
    assert sorted(int(out[2]) for out in outputs) == [0] * 7 + [1]
    hits = slow_nginx.hits(art.path, at_least=1)
    assert [(h.status, h.sent) for h in hits] == [(200, art.size)]
    assert len(Store().entries()) == 1


# -- small documents -----------------------------------------------------------------------------
def test_fetch_bytes_http_dir_and_caps(nginx, tmp_path: Path, faultserver) -> None:
    (nginx.root / "manifest.json").write_bytes(b'{"v": 1}')
    assert fetch_bytes(f"{nginx.url}/manifest.json", max_size=100) == b'{"v": 1}'
    assert fetch_bytes(nginx.root / "manifest.json", max_size=100) == b'{"v": 1}'
    assert fetch_bytes((nginx.root / "manifest.json").as_uri(), max_size=100) == b'{"v": 1}'
    with pytest.raises(FetchError, match="limit"):
        fetch_bytes(f"{nginx.url}/manifest.json", max_size=5)
    with pytest.raises(FetchError, match="limit"):
        fetch_bytes(nginx.root / "manifest.json", max_size=5)
    with pytest.raises(FetchError) as info:
        fetch_bytes(f"{nginx.url}/missing.json", max_size=100)
    assert info.value.http_status == 404
    with pytest.raises(FetchError):
        fetch_bytes(tmp_path / "missing.json", max_size=100)

    faultserver.files["/manifest.json"] = b"{}"
    faultserver.script("/manifest.json", ["status:500", "cut:1"])
    stats = FetchStats()
    assert fetch_bytes(f"{faultserver.url}/manifest.json", max_size=100, stats=stats) == b"{}"
    assert [h.status for h in faultserver.hits("/manifest.json")] == [500, 200, 200]
    assert stats.retries == 2


def test_progress_bar_only_when_asked_or_on_a_terminal(nginx, make_artifact, capsys) -> None:
    art = make_artifact(random_bytes(200_000, seed=18), nginx.root)
    fetch_artifact(art, repo=nginx.url)  # stderr is not a terminal under pytest: no bar
    assert capsys.readouterr().err == ""
    Store().remove(art.sha256)
    fetch_artifact(art, repo=nginx.url, progress=True)
    err = capsys.readouterr().err
    assert "%" in err and "195k" in err  # 200000 bytes in KiB, as tqdm prints it


def test_more_bytes_than_declared_are_never_installed(nginx, make_artifact) -> None:
    art = make_artifact(random_bytes(100_000, seed=19), nginx.root)
    art.size -= 10  # the server sends 10 bytes more than the manifest says
    with pytest.raises(ChecksumMismatch, match="more than the expected"):
        fetch_artifact(art, repo=nginx.url)
    assert_nothing_installed(art)
    assert list(Store().tmp_dir.iterdir()) == []


def test_disk_full_while_downloading_is_a_store_error_not_retried(nginx, make_artifact, monkeypatch) -> None:
    import errno

    import rtxpack.installer.fetch
    from rtxpack.core.errors import StoreError

    def full(f, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rtxpack.installer.fetch, "_write_all", full)
    monkeypatch.setenv("RTXPACK_RETRIES", "3")
    art = make_artifact(random_bytes(MiB, seed=21), nginx.root)
    stats = FetchStats()
    with pytest.raises(StoreError, match="No space left") as info:
        fetch_artifact(art, repo=nginx.url, stats=stats)
    assert not isinstance(info.value, FetchError) and "RTXPACK_CACHE_DIR" in str(info.value)
    assert stats.requests == 1  # a full disk is not retried
    assert_nothing_installed(art)
