"""IMEX, the memory export service of a multi-node NVLink domain (GB200/GB300 NVL72), as the
node shows it: the driver's IMEX channel device and its channel nodes.

NVIDIA's IMEX guide ("IMEX Channels"): the driver registers the character device
`nvidia-caps-imex-channels` (its major in /proc/devices); the administrator creates
`/dev/nvidia-caps-imex-channels/channelN` with that major and minor N, since the nodes "will
not persist through a reboot"; without them CUDA's fabric-memory calls fail with an
insufficient-permission error. The daemon itself (`nvidia-imex`) is found among the node's
processes like any service (checks/host/services.judge_service).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

CHANNEL_DEVICE = "nvidia-caps-imex-channels"


@dataclass(frozen=True)
class Channel:
    """One expected channel node: (major, minor) when it is a character device, else why not."""

    minor: int
    device: tuple[int, int] | None = None
    problem: str = ""


@dataclass(frozen=True)
class ImexView:
    major: int | None  # the channel device's major, None when the driver registered none
    channels: tuple[Channel, ...] = field(default_factory=tuple)


def read(devices: Path, channels_dir: Path, minors: Iterable[int]) -> ImexView:
    """The channel device's major from /proc/devices and each wanted channel node. An
    unreadable /proc/devices is an OSError for the caller (the node's word, errno kept)."""
    major = _major(devices.read_text(encoding="ascii", errors="replace"))
    return ImexView(major, tuple(_channel(channels_dir, minor) for minor in minors))


def _major(devices: str) -> int | None:
    """`234 nvidia-caps-imex-channels` under "Character devices:" (proc(5), /proc/devices)."""
    in_char = False
    for line in devices.splitlines():
        if line.strip().endswith(":"):
            in_char = line.strip() == "Character devices:"
            continue
        parts = line.split()
        if in_char and len(parts) == 2 and parts[1] == CHANNEL_DEVICE and parts[0].isdigit():
            return int(parts[0])
    return None


def _channel(channels_dir: Path, minor: int) -> Channel:
    path = channels_dir / f"channel{minor}"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return Channel(minor, problem="missing")
    except OSError as exc:
        return Channel(minor, problem=exc.strerror or str(exc))
    if not stat.S_ISCHR(st.st_mode):
        return Channel(minor, problem="not a character device")
    return Channel(minor, device=(os.major(st.st_rdev), os.minor(st.st_rdev)))
