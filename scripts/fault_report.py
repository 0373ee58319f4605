#!/usr/bin/env python3
"""Run the fault suite and publish its results as docs/RELIABILITY.md.

    python scripts/fault_report.py            # runs `pytest tests/test_faults.py`, rewrites the doc
    python scripts/fault_report.py --check    # same, but only prints the table

This file is also the pytest plugin that collects the results (``-p fault_report``): each test in
the fault suite (``tests/test_faults*.py``) carries ``@fault(name, expected, category)``; the
plugin records name, expected behaviour, category, outcome and seconds per test (parametrized
ids included) into a JSON file, which this script renders as one markdown table per category.
Exit status: 0 when nothing failed (known gaps are xfail tests and are listed as such), 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "RELIABILITY.md"
SUITE = ["tests/test_faults.py", "tests/test_faults_store.py", "tests/test_faults_bounds.py",
         "tests/test_faults_trust.py"]
COMMAND = "python scripts/fault_report.py"
#: table sections, in this order; (title, what the section promises)
CATEGORIES = [
    ("process and network", "killed installers, cut and hung connections, wrong or extra bytes, many processes"),
    ("disk: the store and runtime caches", "damaged store entries and runtime caches are found and never used"),
    ("input: manifests", "tampered, expired, rolled-back, absurd or oversized manifests are refused"),
    ("input: bundles", "hostile tar members are refused before anything is written"),
    ("1. nothing outside the store", "links, fifos, directories and strays planted in the cache folder never make "
     "rtxpack write outside it, and are healed by `cache verify` / `prune`"),
    ("2. read-only and full", "a read-only store serves and verifies; a full disk is one clear error naming the path, "
     "nothing half-written (real tmpfs mounts, another user's folder)"),
    ("3. nothing stale", "changed bytes are seen even when size and mtime were restored; `install` reports "
     "verified only what it hashed in this run"),
    ("4. every wait bounded", "trickling servers, Retry-After and held locks end by RTXPACK_DOWNLOAD_DEADLINE"),
    ("5. every read bounded", "fifos, devices, oversized files and archives are refused before they are read"),
    ("6. trust that holds", "rollback by publisher identity, explicit key lists, raw-bytes signatures, expiry and "
     "age limits, safe artifact paths, no credentials on disk or screen, key file hygiene"),
    ("7. safe output", "manifest strings are printed with control characters escaped; nothing undecodable crashes"),
    ("8. every variable checked", "every RTXPACK_* value is validated with one line naming the variable and range"),
]


# ---- the pytest plugin (loaded in the pytest process with -p fault_report) -------------------------
def pytest_addoption(parser: Any) -> None:
    parser.addoption("--fault-report", default=None, help="write fault-suite results as JSON to this file")


_results: dict[str, dict[str, Any]] = {}


def _label(item: Any) -> tuple[str, str, str]:
    fn = getattr(item, "function", None)
    label = getattr(fn, "fault", None)
    if label is None:
        doc = (getattr(fn, "__doc__", None) or item.name).strip().splitlines()[0]
        label = (doc, "", "other")
    name, expected, category = (tuple(label) + ("other",))[:3]
    callspec = getattr(item, "callspec", None)
    if callspec is not None:
        name = f"{name} [{callspec.id}]"
    return name, expected, category


def pytest_runtest_logreport(report: Any) -> None:
    rec = _results.setdefault(report.nodeid, {"nodeid": report.nodeid, "outcome": "passed", "seconds": 0.0,
                                              "detail": ""})
    rec["seconds"] += report.duration
    if hasattr(report, "wasxfail"):
        if report.skipped:
            rec["outcome"], rec["detail"] = "xfail", report.wasxfail
        elif report.passed:
            rec["outcome"], rec["detail"] = "xpass", report.wasxfail
        return
    if report.failed:
        rec["outcome"] = "failed" if report.when == "call" else "error"
        msg = getattr(report, "longreprtext", "") or str(report.longrepr)
        lines = [ln for ln in msg.splitlines() if ln.startswith("E ")]
        rec["detail"] = (lines[0][1:].strip() if lines else msg.strip().splitlines()[-1:][0] if msg.strip() else "")[:300]
    elif report.skipped and rec["outcome"] == "passed":
        rec["outcome"] = "skipped"
        lr = report.longrepr
        rec["detail"] = str(lr[2] if isinstance(lr, tuple) and len(lr) == 3 else lr)[:300]


def pytest_collection_modifyitems(session: Any, config: Any, items: list[Any]) -> None:  # noqa: ARG001
    for item in items:
        name, expected, category = _label(item)
        _results[item.nodeid] = {"nodeid": item.nodeid, "fault": name, "expected": expected, "category": category,
                                 "outcome": "passed", "seconds": 0.0, "detail": ""}


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:  # noqa: ARG001
    path = session.config.getoption("--fault-report")
    if path:
        Path(path).write_text(json.dumps(list(_results.values()), indent=1))


# ---- the script ----------------------------------------------------------------------------------
def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _result(r: dict[str, Any]) -> str:
    o = r["outcome"]
    if o == "passed":
        return "pass"
    if o == "xfail":
        return f"**known gap** (xfail): {r['detail'].removeprefix('reason: ')}"
    if o == "xpass":
        return "**xpass**: the gap is fixed; remove the xfail marker"
    if o == "skipped":
        return f"skipped: {r['detail']}"
    return f"**{o.upper()}**: {r['detail']}"


def _tool_versions() -> str:
    parts = [f"Python {platform.python_version()}", f"{platform.system()} {platform.release()}",
             f"{os.cpu_count()} CPUs"]
    for cmd in (["nginx", "-v"],):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            parts.append((out.stderr or out.stdout).strip().replace("nginx version: ", ""))
        except (OSError, subprocess.SubprocessError):
            parts.append("nginx: not installed (nginx tests skipped)")
    return ", ".join(parts)


def render(results: list[dict[str, Any]], *, wall: float, exit_code: int) -> str:
    counts: dict[str, int] = {}
    for r in results:
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    summary = ", ".join(f"{n} {o}" for o, n in sorted(counts.items()))
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Reliability: the fault suite",
        "",
        "An installer runs on machines nobody can see. What it installs must be exactly what the release",
        "engineer published, and no failure of network, disk, process or input may leave a broken or foreign",
        "artifact behind, write outside its cache folder, wait or read without bound, or crash on what it prints.",
        "The fault suite (`tests/test_faults*.py`) injects each failure for real: the CLI in subprocesses,",
        "SIGKILL, `RLIMIT_FSIZE`, small tmpfs mounts that really fill up or are remounted read-only, another",
        "user's folder (`setpriv`), symbolic links, fifos and directories planted in a real cache folder with a",
        "canary file outside it, nginx and a fault-injecting server on 127.0.0.1 (cut, hung, trickling,",
        "Retry-After), hand-made hostile tar files, and asserts the outcome. This page is generated from its last",
        "run; do not edit it by hand.",
        "",
        f"Reproduce: `{COMMAND}` (runs `pytest {' '.join(SUITE)}` and rewrites this file).",
        "",
        f"Last run: {when} on {_tool_versions()}. {len(results)} cases: {summary}; "
        f"{wall:.1f} s wall, pytest exit {exit_code}.",
        "",
        "A *known gap* is an xfail test: the behaviour the table's *expected* column states does not hold",
        "yet, the reason names the module that lacks it. The test turns into a failure (xpass) when fixed.",
        "",
        "Bounds the suite relies on: `RTXPACK_READ_TIMEOUT` (default 30 s) per socket read and",
        "`RTXPACK_DOWNLOAD_DEADLINE` (default 3600 s) per artifact or manifest fetch in all (every attempt,",
        "backoff and Retry-After wait, and the wait for another process fetching the same blob); a manifest is",
        "at most 64 MiB, a persisted runtime cache at most 1 GiB (larger: ignored unread), a bundle holds its",
        "manifest plus the declared artifact bytes and nothing more.",
    ]
    known = [c for c, _ in CATEGORIES]
    order = {c: i for i, c in enumerate(known)}
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault(r.get("category", "other"), []).append(r)
    promises = dict(CATEGORIES)
    for category in sorted(groups, key=lambda c: (order.get(c, len(order)), c)):
        rows = groups[category]
        passed = sum(r["outcome"] == "passed" for r in rows)
        lines += ["", f"## {category}", ""]
        if category in promises:
            lines += [f"Promise: {promises[category]}. {passed}/{len(rows)} pass.", ""]
        lines += ["| fault | expected | result | seconds |", "|---|---|---|---:|"]
        for r in rows:
            lines.append(f"| {_md(r['fault'])} | {_md(r['expected'])} | {_md(_result(r))} | {r['seconds']:.2f} |")
    gaps = [r for r in results if r["outcome"] in ("xfail", "failed", "error", "xpass")]
    if gaps:
        lines += ["", "## Open items", ""]
        for r in gaps:
            lines.append(f"- `{r['nodeid']}`: {_md(_result(r))}")
    lines += ["", "## Limits (what the suite does not claim)", "",
              "- Store folders are checked with `lstat` before use (portable): a planted link is never followed,",
              "  but another account racing to swap a folder for a link in the instant between the check and the",
              "  use is not covered; files are opened `O_NOFOLLOW`, and every rename is checked after the fact.",
              "- Name resolution (`getaddrinfo`) is bounded by the system resolver, not by",
              "  `RTXPACK_DOWNLOAD_DEADLINE`; everything after it is.",
              "- Where a file has no change time (Windows: `st_ctime` is the creation time), the weights digest",
              "  hashes the ONNX's full bytes on every start (about 75 ms per 100 MB on this machine) instead of",
              "  trusting identity + a sampled fingerprint.",
              "- Credentials are removed from `user:password@` in URLs; secrets in a query string (`?token=`)",
              "  are shown as given.",
              "- Read-only and full-disk cases run on real mounts: they need root (CI has it) and are skipped,",
              "  saying so, elsewhere."]
    lines += ["", "Signing and verification unit tests (keygen/sign/verify round trip through the CLI, tampered",
              "byte, wrong key, expiry, rollback, unsigned warning vs `--require-signed`, `RTXPACK_TRUSTED_KEYS`)",
              "live in `tests/test_trust.py`.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="print the table instead of rewriting docs/RELIABILITY.md")
    ap.add_argument("--out", type=Path, default=DOC, help=f"where to write the markdown (default {DOC})")
    args, extra = ap.parse_known_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "faults.json"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), str(ROOT),
                                                          env.get("PYTHONPATH")]))
        cmd = [sys.executable, "-m", "pytest", *SUITE, "-p", "fault_report", f"--fault-report={report}", "-q",
               "-p", "no:cacheprovider", "-W", "ignore::UserWarning", *extra]
        t0 = time.monotonic()
        proc = subprocess.run(cmd, cwd=ROOT, env=env)
        wall = time.monotonic() - t0
        if not report.exists():
            print("fault_report: pytest wrote no results (collection error?)", file=sys.stderr)
            return 2
        results = json.loads(report.read_text())
    text = render(results, wall=wall, exit_code=proc.returncode)
    if args.check:
        print(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out} ({len(results)} cases)")
    bad = [r for r in results if r["outcome"] in ("failed", "error", "xpass")]
    return 1 if bad or proc.returncode not in (0,) else 0


if __name__ == "__main__":
    sys.exit(main())
