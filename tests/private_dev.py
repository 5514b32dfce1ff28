"""Run a command where NVIDIA's real library cannot leave device nodes behind.

NVIDIA's libnvidia-ml, loaded as root on a machine without the kernel module, creates
/dev/nvidiactl (character device 195,255). The command runs in a private mount
namespace whose /dev is a fresh tmpfs holding only null, zero, full, random, urandom
and tty (bind mounts of the host's) and /dev/fd: whatever it creates there vanishes
with the namespace, and the host's /dev never sees it.
"""

from __future__ import annotations

import glob
import os
import shutil

import pytest

_SETUP = (
    'set -e; old=$(mktemp -d); mount --rbind /dev "$old"; mount -t tmpfs -o mode=755 nodev /dev; '
    'for n in null zero full random urandom tty; do touch /dev/$n; mount --bind "$old/$n" /dev/$n; done; '
    'ln -s /proc/self/fd /dev/fd; umount -l "$old"; rmdir "$old"; exec "$@"'
)


def wrap(argv: list[str]) -> list[str]:
    """`argv` run in a private mount namespace with its own /dev (needs root, as the library's node creation does)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.fail("loading NVIDIA's real library is tested as root with unshare(1) (util-linux), "
                    "in a private mount namespace with its own /dev", pytrace=False)
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _SETUP, "private-dev", *argv]


def host_nvidia_nodes() -> list[str]:
    return sorted(glob.glob("/dev/nvidia*"))
