"""A stand-in MPS control daemon: serves a unix socket named `control` in a pipe directory.

    python tests/mps_standin.py PIPE_DIRECTORY [--type seqpacket|stream]

What the plugin checks of NVIDIA's `nvidia-cuda-mps-control -d` is that its
control socket accepts a connection; this serves one (accepting and closing
every connection) until it is killed. Killed with SIGKILL it leaves the socket
file behind, as a crashed daemon does: a connect then gets ECONNREFUSED. A new
one replaces a stale socket. It writes its pid to nvidia-cuda-mps-control.pid
as the real daemon does, and prints "ready" once it listens.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

KINDS = {"seqpacket": socket.SOCK_SEQPACKET, "stream": socket.SOCK_STREAM}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("pipe_directory")
    parser.add_argument("--type", choices=sorted(KINDS), default="seqpacket")
    args = parser.parse_args()
    os.makedirs(args.pipe_directory, exist_ok=True)
    path = os.path.join(args.pipe_directory, "control")
    try:
        os.unlink(path)  # a stale socket of a daemon that died
    except FileNotFoundError:
        pass
    server = socket.socket(socket.AF_UNIX, KINDS[args.type])
    server.bind(path)
    server.listen(16)
    with open(os.path.join(args.pipe_directory, "nvidia-cuda-mps-control.pid"), "w") as f:
        f.write(f"{os.getpid()}\n")
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        conn, _ = server.accept()
        conn.close()


if __name__ == "__main__":
    main()
