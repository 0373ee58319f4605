"""Every environment variable rtxpack reads, read here, at call time (so tests can set them).

Each value is validated where it is read, through one helper per type (flag, number with a
range, size, path): a bad value is one :class:`ConfigError` naming the variable, what it holds
and the accepted range, never a traceback or a silently odd behaviour (a negative timeout, a
``nan`` that compares false with everything, an ``inf`` deadline).
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

from .errors import ConfigError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

#: default bounds (seconds) — documented in README's environment list
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 30.0
DOWNLOAD_DEADLINE = 3600.0
MAX_TIMEOUT = 3600.0
MAX_DEADLINE = 7 * 24 * 3600.0


def env(name: str, default: str | None = None) -> str | None:
    """The value of environment variable ``name`` (the one helper every reader goes through)."""
    value = os.environ.get(name)
    return default if value is None else value


def _bad(name: str, value: str, accepted: str, example: str) -> ConfigError:
    return ConfigError(f"{name}={value!r} is not valid: it must be {accepted}",
                       fix=f"set {name} to {accepted} (e.g. {name}={example}), or unset it for the default",
                       variable=name, value=value)


def env_flag(name: str, default: bool = False) -> bool:
    value = env(name)
    if value is None:
        return default
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise _bad(name, value, "a boolean (1/0, true/false, yes/no, on/off)", "1")


def env_number(name: str, default: float, *, low: float, high: float, low_open: bool = False,
               integer: bool = False, unit: str = "seconds") -> float:
    """A number from ``name`` within [low, high] (``(low, high]`` when ``low_open``); unset or blank:
    ``default``. nan, inf, garbage and anything out of range are a ConfigError naming the range."""
    value = env(name)
    if value is None or value.strip() == "":
        return default
    kind = "an integer" if integer else "a number"
    lo = f"> {low:g}" if low_open else f">= {low:g}"
    accepted = f"{kind} of {unit} {lo} and <= {high:g}" if unit else f"{kind} {lo} and <= {high:g}"
    example = f"{default:g}"
    try:
        x = int(value.strip(), 10) if integer else float(value)
    except ValueError:
        raise _bad(name, value, accepted, example) from None
    if not math.isfinite(x) or x > high or x < low or (low_open and x == low):
        raise _bad(name, value, accepted, example)
    return x


def env_path(name: str) -> Path | None:
    """A directory path from ``name`` (``~`` expanded); unset or empty: None; blank: ConfigError."""
    value = env(name)
    if value is None or value == "":
        return None
    if not value.strip():
        raise _bad(name, value, "a directory path", "~/.cache/rtxpack")
    return Path(value).expanduser()


# ---- sizes ----------------------------------------------------------------------------------------
_UNITS = {
    "": 1, "b": 1,
    "k": 1 << 10, "kib": 1 << 10, "kb": 10**3,
    "m": 1 << 20, "mib": 1 << 20, "mb": 10**6,
    "g": 1 << 30, "gib": 1 << 30, "gb": 10**9,
    "t": 1 << 40, "tib": 1 << 40, "tb": 10**12,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int) -> int:
    """Bytes in ``"2GiB"``, ``"500M"``, ``"1.5G"``, ``"10MB"`` or ``"1024"``.

    Bare ``K``/``M``/``G``/``T`` and ``KiB``... are powers of 1024; ``KB``/``MB``/``GB``/``TB`` are
    powers of 1000 (IEC). Anything else raises :class:`ConfigError`.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ConfigError(f"size {text} is negative", fix="give a size such as 500M or 2GiB", value=text)
        return text
    m = _SIZE_RE.match(str(text))
    unit = m.group(2).lower() if m else None
    if not m or unit not in _UNITS:
        raise ConfigError(
            f"{text!r} is not a size",
            fix="give a size such as 1024, 500M, 2GiB or 10GB",
            value=str(text),
        )
    return int(float(m.group(1)) * _UNITS[unit])


# ---- the variables --------------------------------------------------------------------------------
def cache_dir() -> Path:
    """Root of the local store: ``RTXPACK_CACHE_DIR`` or platformdirs' user cache dir."""
    override = env_path("RTXPACK_CACHE_DIR")
    if override is not None:
        return override
    import platformdirs

    return Path(platformdirs.user_cache_dir("rtxpack", appauthor=False))


def offline() -> bool:
    """``RTXPACK_OFFLINE=1``: never touch the network."""
    return env_flag("RTXPACK_OFFLINE")


def debug() -> bool:
    """``RTXPACK_DEBUG=1``: show tracebacks on the CLI."""
    return env_flag("RTXPACK_DEBUG")


def device_override() -> str | None:
    """``RTXPACK_DEVICE``: a compute capability (``8.9``) or a JSON device description (parsed and
    validated by :func:`rtxpack.core.device.parse_override`)."""
    value = env("RTXPACK_DEVICE")
    return value if value and value.strip() else None


def connect_timeout() -> float:
    """``RTXPACK_CONNECT_TIMEOUT``: seconds to wait for a TCP/TLS connection, (0, 3600], default 10."""
    return env_number("RTXPACK_CONNECT_TIMEOUT", CONNECT_TIMEOUT, low=0.0, high=MAX_TIMEOUT, low_open=True)


def read_timeout() -> float:
    """``RTXPACK_READ_TIMEOUT``: seconds one socket read may wait, (0, 3600], default 30."""
    return env_number("RTXPACK_READ_TIMEOUT", READ_TIMEOUT, low=0.0, high=MAX_TIMEOUT, low_open=True)


def download_deadline() -> float:
    """``RTXPACK_DOWNLOAD_DEADLINE``: seconds one artifact or manifest fetch may take in all (every
    attempt, source, backoff and Retry-After wait included; also the longest wait for another
    process fetching the same blob), (0, 604800], default 3600. The per-read timeout alone does
    not bound a server that trickles bytes."""
    return env_number("RTXPACK_DOWNLOAD_DEADLINE", DOWNLOAD_DEADLINE, low=0.0, high=MAX_DEADLINE, low_open=True)


def max_retries() -> int:
    """``RTXPACK_RETRIES``: retries per source after the first attempt, an integer 0..100, default 3."""
    return int(env_number("RTXPACK_RETRIES", 3, low=0, high=100, integer=True, unit=""))


def retry_backoff() -> float:
    """``RTXPACK_RETRY_BACKOFF``: first retry delay in seconds (doubles per retry, capped at 8 s), [0, 60]."""
    return env_number("RTXPACK_RETRY_BACKOFF", 0.5, low=0.0, high=60.0)


def trusted_keys() -> list[Path]:
    """``RTXPACK_TRUSTED_KEYS``: public key files separated by ``os.pathsep``."""
    value = env("RTXPACK_TRUSTED_KEYS")
    if not value:
        return []
    return [Path(p.strip()).expanduser() for p in value.split(os.pathsep) if p.strip()]


def require_signed() -> bool:
    return env_flag("RTXPACK_REQUIRE_SIGNED")


def max_manifest_age_days() -> float | None:
    """``RTXPACK_MAX_MANIFEST_AGE_DAYS``: refuse a manifest signed longer ago than this many days,
    (0, 36500]; unset: no limit beyond its ``expires``."""
    value = env_number("RTXPACK_MAX_MANIFEST_AGE_DAYS", -1.0, low=0.0, high=36500.0, low_open=True, unit="days")
    return None if value < 0 else value


def toolchains_dir() -> Path:
    """Where the farm keeps one virtual environment per backend toolchain."""
    override = env_path("RTXPACK_TOOLCHAINS_DIR")
    return override if override is not None else cache_dir() / "toolchains"


def cache_max_size() -> int | None:
    """``RTXPACK_CACHE_MAX_SIZE``: default size limit for ``rtxpack cache prune`` (e.g. ``20GiB``)."""
    value = env("RTXPACK_CACHE_MAX_SIZE")
    if not value or not value.strip():
        return None
    try:
        return parse_size(value)
    except ConfigError:
        raise _bad("RTXPACK_CACHE_MAX_SIZE", value, "a size such as 1024, 500M, 2GiB or 10GB", "20GiB") from None


#: every variable above, for the docs and the tests (name -> one-line meaning)
VARIABLES = {
    "RTXPACK_CACHE_DIR": "local store directory",
    "RTXPACK_OFFLINE": "1: no network at all",
    "RTXPACK_DEBUG": "1: tracebacks on the CLI",
    "RTXPACK_DEVICE": "8.9 or detect --json's JSON: resolve for another GPU",
    "RTXPACK_CONNECT_TIMEOUT": "seconds, (0, 3600], default 10",
    "RTXPACK_READ_TIMEOUT": "seconds per socket read, (0, 3600], default 30",
    "RTXPACK_DOWNLOAD_DEADLINE": "seconds per artifact/manifest fetch in all, (0, 604800], default 3600",
    "RTXPACK_RETRIES": "integer 0..100, default 3",
    "RTXPACK_RETRY_BACKOFF": "seconds, [0, 60], default 0.5",
    "RTXPACK_TRUSTED_KEYS": "public key files separated by os.pathsep",
    "RTXPACK_REQUIRE_SIGNED": "1: refuse unsigned repositories",
    "RTXPACK_MAX_MANIFEST_AGE_DAYS": "refuse manifests signed longer ago, (0, 36500]",
    "RTXPACK_TOOLCHAINS_DIR": "the farm's toolchain venvs",
    "RTXPACK_CACHE_MAX_SIZE": "default limit of `cache prune`, e.g. 20GiB",
}
