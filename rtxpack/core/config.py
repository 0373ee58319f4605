"""Every environment variable rtxpack reads, read here, at call time (so tests can set them)."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env(name: str, default: str | None = None) -> str | None:
    """The value of environment variable ``name`` (the one helper every reader goes through)."""
    value = os.environ.get(name)
    return default if value is None else value


def env_flag(name: str, default: bool = False) -> bool:
    value = env(name)
    if value is None:
        return default
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ConfigError(f"{name}={value!r} is not a boolean", fix=f"set {name}=1 or {name}=0", variable=name)


def env_float(name: str, default: float) -> float:
    value = env(name)
    if value is None or value.strip() == "":
        return default
    try:
        return float(value)
    except ValueError as e:
        raise ConfigError(f"{name}={value!r} is not a number", fix=f"set {name} to a number of seconds", variable=name) from e


def cache_dir() -> Path:
    """Root of the local store: ``RTXPACK_CACHE_DIR`` or platformdirs' user cache dir."""
    override = env("RTXPACK_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("rtxpack", appauthor=False))


def offline() -> bool:
    """``RTXPACK_OFFLINE=1``: never touch the network."""
    return env_flag("RTXPACK_OFFLINE")


def debug() -> bool:
    """``RTXPACK_DEBUG=1``: show tracebacks on the CLI."""
    return env_flag("RTXPACK_DEBUG")


def device_override() -> str | None:
    """``RTXPACK_DEVICE``: a compute capability (``8.9``) or a JSON device description."""
    value = env("RTXPACK_DEVICE")
    return value if value and value.strip() else None


def connect_timeout() -> float:
    return env_float("RTXPACK_CONNECT_TIMEOUT", 10.0)


def read_timeout() -> float:
    return env_float("RTXPACK_READ_TIMEOUT", 30.0)


def max_retries() -> int:
    return int(env_float("RTXPACK_RETRIES", 3))


def trusted_keys() -> list[Path]:
    """``RTXPACK_TRUSTED_KEYS``: public key files separated by ``os.pathsep``."""
    value = env("RTXPACK_TRUSTED_KEYS")
    if not value:
        return []
    return [Path(p).expanduser() for p in value.split(os.pathsep) if p.strip()]


def require_signed() -> bool:
    return env_flag("RTXPACK_REQUIRE_SIGNED")


def toolchains_dir() -> Path:
    """Where the farm keeps one virtual environment per backend toolchain."""
    override = env("RTXPACK_TOOLCHAINS_DIR")
    return Path(override).expanduser() if override else cache_dir() / "toolchains"


def retry_backoff() -> float:
    """``RTXPACK_RETRY_BACKOFF``: first retry delay in seconds (doubles per retry, capped at 8 s)."""
    return max(0.0, env_float("RTXPACK_RETRY_BACKOFF", 0.5))


def cache_max_size() -> str | None:
    """``RTXPACK_CACHE_MAX_SIZE``: default size limit for ``rtxpack cache prune`` (e.g. ``20GiB``)."""
    value = env("RTXPACK_CACHE_MAX_SIZE")
    return value if value and value.strip() else None
