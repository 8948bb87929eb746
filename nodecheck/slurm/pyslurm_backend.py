"""Slurm backend over pyslurm (checked against pyslurm 25.11.2's source and a live Slurm 26.05).

pyslurm must be built against the running Slurm's major.minor, so it is an optional extra.
`pyslurm_unusable_reason` says why it cannot be used, or None.

The pyslurm calls used (pyslurm >= 23.2 "new" API, unchanged in 25.11):
- `pyslurm.Node.load(name) -> Node`      (slurm_load_node_single; RPCError if unknown)
- `pyslurm.Nodes.load() -> Nodes`         (a multi-cluster map: `.values()` yields Node)
- `pyslurm.Node(name).modify(pyslurm.Node(state="DRAIN", reason=...))`  (slurm_update_node)
- `Node.state` "IDLE+DRAIN" (slurm_node_state_string_complete, as scontrol prints it),
  `Node.reason` / `Node.reason_user` str or None, `Node.reason_time` epoch int or None,
  `Node.partitions` list[str]
- errors: `pyslurm.PyslurmError`, of which `pyslurm.RPCError` (with .errno) is a subclass
- `pyslurm.slurm_api_version()` -> (major, minor, micro) of the slurm.h it was COMPILED against
  (SLURM_VERSION_NUMBER); the C function of the same name in libslurm returns the libtool ABI
  number instead (45.0.0 on 26.05), so the loaded library's release is read another way.
- `pyslurm.slurm_init(conf)` / `pyslurm.slurm_fini()`; `import pyslurm` calls slurm_init()
  itself unless PYSLURM_DISABLE_AUTO_INIT is set. libslurm calls exit() (fatal) when it finds
  no slurm.conf, after retrying a missing $SLURM_CONF for 60 s, so we never let it guess.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

from nodecheck.core.bounded import run_command
from nodecheck.core.node import NodeInfo
from nodecheck.slurm import (
    SlurmError,
    call_timeout,
    checked_node_name,
    checked_reason,
    format_reason_time,
)
from nodecheck.slurm.claims import Claim, PartitionInfo

# Where libslurm looks when neither the caller nor $SLURM_CONF names a file: Debian's and most
# packages' compiled-in default, then the copy slurmd keeps on a configless node.
DEFAULT_CONF_CANDIDATES = ("/etc/slurm/slurm.conf", "/run/slurm/conf/slurm.conf")

_NOT_INITIALISED = object()
_initialised_with: object = _NOT_INITIALISED  # the conf path slurm_init() was last given


def _fmt(version: tuple[int, ...]) -> str:
    """(26, 5, 5) -> "26.05.5", as Slurm writes its versions."""
    return ".".join(f"{v:02d}" if i == 1 else str(v) for i, v in enumerate(version))


@contextlib.contextmanager
def _quiet_pyslurm_import() -> Iterator[None]:
    """Import pyslurm without its side effects on this process.

    - PYSLURM_DISABLE_AUTO_INIT: `import pyslurm` would otherwise call slurm_init() with no
      config path, and libslurm exits the whole process when it finds no slurm.conf.
    - pyslurm sets RTLD_GLOBAL|RTLD_DEEPBIND as the interpreter's dlopen flags for good; put
      the old flags back so extension modules imported later load the normal way.
    """
    old_env = os.environ.get("PYSLURM_DISABLE_AUTO_INIT")
    old_flags = sys.getdlopenflags()
    os.environ["PYSLURM_DISABLE_AUTO_INIT"] = "1"
    try:
        yield
    finally:
        sys.setdlopenflags(old_flags)
        if old_env is None:
            os.environ.pop("PYSLURM_DISABLE_AUTO_INIT", None)
        else:
            os.environ["PYSLURM_DISABLE_AUTO_INIT"] = old_env


def _import_pyslurm() -> Any:
    with _quiet_pyslurm_import():
        import pyslurm
    return pyslurm


def _loaded_libslurm_paths() -> list[str]:
    """The libslurm files mapped into this process (pyslurm links libslurmfull.so)."""
    paths: list[str] = []
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)  # addr perms offset dev inode [path]
                path = fields[5].strip() if len(fields) == 6 else ""
                name = os.path.basename(path)
                if name.startswith(("libslurmfull", "libslurm.so")) and path not in paths:
                    paths.append(path)
    except OSError:
        pass
    return sorted(paths, key=lambda p: "libslurmfull" not in p)  # pyslurm's own first


# libslurm's only release-number export is print_slurm_version(), which printf()s
# "slurm[-wlm] 26.05.5" (slurm_api_version() returns the libtool ABI number, e.g. 45.0.0).
# A throw-away child prints it, so this process's stdout is never touched.
_PRINT_VERSION = "import ctypes, sys; ctypes.CDLL(sys.argv[1]).print_slurm_version()"


def _library_release(path: str) -> tuple[int, int, int] | None:
    """The release libslurm at `path` prints, within the run's call deadline (None: unknown,
    which makes pyslurm unusable and the scontrol backend the choice)."""
    timeout = call_timeout(15.0)
    if timeout <= 0 or not sys.executable:
        return None
    return _cached_library_release(path, timeout)


@functools.lru_cache(maxsize=8)
def _cached_library_release(path: str, timeout: float) -> tuple[int, int, int] | None:
    try:
        out = run_command(
            [sys.executable, "-I", "-c", _PRINT_VERSION, path],
            timeout,
            {"PATH": "/usr/bin:/bin", "LC_ALL": "C"},
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", out)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def running_libslurm_version() -> tuple[int, int, int] | None:
    """Release of the libslurm this process actually loaded (after importing pyslurm)."""
    for path in _loaded_libslurm_paths():
        release = _library_release(path)
        if release:
            return release
    return None


def pyslurm_versions() -> dict[str, str]:
    """What pyslurm says about itself and the Slurm it runs with (for logs and the reason
    string). Keys: pyslurm, built_for_slurm, libslurm. Empty when pyslurm does not import."""
    try:
        pyslurm = _import_pyslurm()
    except Exception:
        return {}
    out = {"pyslurm": str(getattr(pyslurm, "__version__", "?"))}
    with contextlib.suppress(Exception):
        out["built_for_slurm"] = _fmt(tuple(pyslurm.slurm_api_version()))
    running = running_libslurm_version()
    if running:
        out["libslurm"] = _fmt(running)
    return out


def pyslurm_unusable_reason() -> str | None:
    """None when pyslurm imports, has the Node API, and was compiled against the same Slurm
    major.minor as the libslurm it loaded; otherwise why not.

    pyslurm's own release number (25.11.x) names the Slurm series its sources target; what
    decides whether its compiled structs match the library is the slurm.h it was built
    against (`pyslurm.slurm_api_version()`), so that is what must equal the running
    libslurm's major.minor. A build whose release series differs from its headers (a site's
    forced build, like tools/pyslurm-sid) is accepted and shows in `pyslurm_versions()`.
    """
    try:
        pyslurm = _import_pyslurm()
    except Exception as exc:  # ImportError, or an undefined libslurm symbol at load time
        return f"import failed: {type(exc).__name__}: {exc}"
    version = str(getattr(pyslurm, "__version__", "?"))
    for attr in ("Node", "Nodes", "PyslurmError", "RPCError", "slurm_init", "slurm_api_version"):
        if not hasattr(pyslurm, attr):
            return f"pyslurm {version} lacks pyslurm.{attr} (need the >= 23.2 API)"
    try:
        built = tuple(int(v) for v in pyslurm.slurm_api_version())[:3]
    except Exception as exc:
        return f"pyslurm {version}: slurm_api_version() failed: {exc}"
    running = running_libslurm_version()
    if running is None:
        return f"pyslurm {version}: cannot tell which libslurm version this process loaded"
    if built[:2] != running[:2]:
        return (
            f"pyslurm {version} was built against Slurm {_fmt(built)} but the loaded libslurm "
            f"is {_fmt(running)}: rebuild pyslurm for this Slurm"
        )
    return None


def resolve_slurm_conf(slurm_conf: str | None) -> str | None:
    """The slurm.conf libslurm should read: the given one, else $SLURM_CONF, else a default
    that exists (None = let libslurm use its compiled-in default). Raises SlurmError where
    libslurm would kill the process instead (missing file)."""
    conf = slurm_conf or os.environ.get("SLURM_CONF") or None
    if conf is not None:
        if not os.path.isfile(conf):
            raise SlurmError(f"slurm.conf {conf!r} does not exist (libslurm would exit)")
        return conf
    if any(os.path.isfile(p) for p in DEFAULT_CONF_CANDIDATES):
        return None
    raise SlurmError(
        "no slurm.conf: neither slurm_conf, $SLURM_CONF nor "
        f"{' / '.join(DEFAULT_CONF_CANDIDATES)} (libslurm would exit)"
    )


def _states(node: Any) -> tuple[str, ...]:
    raw = str(getattr(node, "state", "") or "")
    return tuple(s for s in raw.upper().replace(",", "+").split("+") if s)


def _reason_time(epoch: Any) -> str:
    """scontrol prints reason times as local ISO time without zone; do the same."""
    if not epoch:
        return ""
    try:
        return format_reason_time(int(epoch))
    except (TypeError, ValueError, OverflowError, OSError):
        return str(epoch)


def _to_info(node: Any) -> NodeInfo:
    return NodeInfo(
        name=str(node.name),
        states=_states(node),
        reason=str(node.reason or ""),
        reason_user=str(node.reason_user or ""),
        reason_time=_reason_time(node.reason_time),
        partitions=tuple(str(p) for p in (node.partitions or ())),
    )


class PyslurmBackend:
    name = "pyslurm"

    def __init__(
        self, slurm_conf: str | None = None, scontrol_path: str = "/usr/bin/scontrol"
    ) -> None:
        global _initialised_with
        conf = resolve_slurm_conf(slurm_conf)
        pyslurm = _import_pyslurm()
        self._pyslurm = pyslurm
        self._errors: tuple[type[BaseException], ...] = (pyslurm.PyslurmError, ValueError)
        if _initialised_with != conf:
            # libslurm keeps one global config: drop whatever it holds (harmless when
            # nothing was loaded), then read ours.
            pyslurm.slurm_fini()
            pyslurm.slurm_init(conf)
            _initialised_with = conf
        self.slurm_conf = conf
        self.calls = 0  # RPCs made through pyslurm (bench/scale.py)
        self.last_read: dict[str, NodeInfo] = {}
        # The breaker's slots are reservations, made through scontrol (claims.py): the
        # refusal of a taken name is what they rest on, and scontrol's is the one checked
        # on every release in the contract suite.
        from nodecheck.slurm.scontrol import ScontrolBackend

        self._cli = ScontrolBackend(scontrol_path, conf)

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        # A libslurm RPC cannot be interrupted from Python: never start one the run's budget
        # has no room for (libslurm's own MessageTimeout bounds the one that starts).
        if call_timeout(10.0) <= 0:
            raise SlurmError(f"pyslurm {what}: not attempted, the run's time budget is spent")
        self.calls += 1
        try:
            return fn(*args)
        except self._errors as exc:
            raise SlurmError(f"pyslurm {what}: {exc}") from exc

    def node_info(self, node: str) -> NodeInfo:
        info = _to_info(self._call("load node", self._pyslurm.Node.load, checked_node_name(node)))
        self.last_read[info.name] = info
        return info

    def list_nodes(self) -> list[NodeInfo]:
        nodes = self._call("load nodes", self._pyslurm.Nodes.load)
        infos = [_to_info(n) for n in nodes.values()]
        self.last_read.update((n.name, n) for n in infos)
        return infos

    def _modify(self, node: str, **changes: Any) -> None:
        target = self._pyslurm.Node(checked_node_name(node))
        self._call("modify node", target.modify, self._pyslurm.Node(**changes))

    def drain(self, node: str, reason: str) -> None:
        self._modify(node, state="DRAIN", reason=checked_reason(reason))

    def resume(self, node: str) -> None:
        self._modify(node, state="RESUME")

    # The circuit breaker's slots: through scontrol (see __init__).

    @property
    def bytes_read(self) -> int:
        return self._cli.bytes_read

    def claims(self) -> list[Claim]:
        return self._cli.claims()

    def claim(self, name: str, node: str, minutes: int) -> bool:
        return self._cli.claim(name, node, minutes)

    def release(self, name: str) -> None:
        self._cli.release(name)

    def partition(self, name: str) -> PartitionInfo:
        return self._cli.partition(name)

    def partitions(self) -> list[PartitionInfo]:
        return self._cli.partitions()
