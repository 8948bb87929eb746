"""Finding the config file and reading it the way a root-run tool must.

`read_config` does one read and keeps what it found (the parsed TOML, no file, or why the
file cannot be used) as data, so the hook can have it read by its first look
(nodecheck.run.firstlook, a child that cannot hold the hook when the file's filesystem
hangs) and then validate it twice from memory: once for what logging needs
(config.salvage_config), once in full (config.load_config).
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_PATH = Path("/etc/nodecheck/nodecheck.toml")
MAX_CONFIG_BYTES = 1 << 20


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file and key."""


@dataclass(frozen=True)
class ConfigRead:
    """One read of the config file."""

    path: Path
    required: bool  # the operator named the file: its absence is an error
    data: Mapping[str, Any] | None  # the parsed TOML; None when the file does not exist
    error: str = ""  # why the file cannot be used (a ConfigError's message)


def find_config_path(explicit: str | None, env: Mapping[str, str]) -> tuple[Path, bool]:
    """Return (path, required): required when the operator named the file."""
    if explicit:
        return Path(explicit), True
    if env.get("NODECHECK_CONFIG"):
        return Path(env["NODECHECK_CONFIG"]), True
    slurm_conf = env.get("SLURM_CONF")
    if slurm_conf:
        beside = Path(slurm_conf).parent / "nodecheck.toml"
        if beside.is_file():
            return beside, True
    return DEFAULT_PATH, False


def read_config(explicit: str | None, env: Mapping[str, str]) -> ConfigRead:
    """Find the config file and read it; never raises for the file's own problems."""
    path, required = find_config_path(explicit, env)
    try:
        return ConfigRead(path, required, read_toml(path))
    except FileNotFoundError:
        return ConfigRead(path, required, None)
    except ConfigError as exc:
        return ConfigRead(path, required, None, str(exc))


def read_toml(path: Path) -> dict[str, Any]:
    """The config file's TOML, read the way a root-run tool must: only a regular file (a
    FIFO would block the prolog forever, so open without blocking and look before reading)
    that others cannot write, of sane size, in UTF-8. FileNotFoundError when there is none;
    every other problem is a ConfigError naming the file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ConfigError(f"{path}: cannot open config: {exc.strerror}") from exc
    try:
        refuse_unsafe_file(path, os.fstat(fd))
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as fh:
        try:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: config larger than {MAX_CONFIG_BYTES} bytes")
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def refuse_unsafe_file(path: Path, st: os.stat_result) -> None:
    """A root-run tool must not take orders from a file others can write."""
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{path}: not a regular file")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(f"{path}: writable by group or others (mode {st.st_mode & 0o777:o})")
    if st.st_uid not in (0, os.geteuid()):
        raise ConfigError(f"{path}: owned by uid {st.st_uid}, not root or the running user")
