#!/usr/bin/env python3
"""`make cluster`: a simulated GPU cluster on this machine, to try GPU scheduling without GPUs.

A real Nomad server and three Nomad clients on 127.0.0.1 (their own data
dirs, ports and node names), each client running this plugin on a different
simulated node: h100 (8 x H100), a100 (8 x A100 with mixed MIG), gh200 (one
GH200). Prints how to reach the UI and the API, then runs until Ctrl-C (or
SIGTERM), which stops every agent, plugin and task it started.
docs/cluster.md explains what to try.

Usage: scripts/cluster.py [--for-test]   (--for-test: no how-to text, for tests/test_cluster.py)
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from e2e.agent import AgentError, leftover_pids  # noqa: E402
from e2e.cluster import LOG_ROOT, Cluster  # noqa: E402

JOBS = ROOT / "tests" / "e2e" / "jobs"


def _how_to(cluster: Cluster, started: float) -> str:
    addr = cluster.api.addr
    lines = [f"\nSimulated GPU cluster up in {time.monotonic() - started:.0f}s: a Nomad server and "
             f"{len(cluster.nodes)} clients on 127.0.0.1 (the GPUs are simulated; no GPU is used).", ""]
    for node in cluster.nodes:
        groups = cluster.api.gpu_groups(cluster.node_ids[node.name])
        count = sum(len(g["Instances"]) for g in groups)
        lines.append(f"  node {node.name:<6} {cluster.node_ids[node.name][:8]}  {count:>2} devices in "
                     f"{len(groups)} group(s): {node.what}")
    nomad = ROOT / "build" / "bin" / "nomad"
    lines += [
        "",
        f"  UI:   {addr}/ui/",
        f"  API:  {addr}/v1/nodes",
        f"  CLI:  export NOMAD_ADDR={addr}",
        f"        {nomad} node status -verbose <node id>",
        f"        {nomad} job run {JOBS / 'cluster-8gpu-hopper.nomad.hcl'}",
        f"  logs: {LOG_ROOT}/<agent>.log",
        "",
        "Ctrl-C stops everything.",
    ]
    return "\n".join(lines)


def main() -> int:
    for_test = "--for-test" in sys.argv[1:]
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    started = time.monotonic()
    try:
        cluster = Cluster(cancel=stop)
    except AgentError as exc:
        print(f"cluster: {exc}", file=sys.stderr)
        return 1
    print(f"cluster: starting a Nomad server and {len(cluster.nodes)} clients under {cluster.root} "
          f"(logs in {LOG_ROOT})", flush=True)
    rc = 0
    try:
        # On this (the main) thread: each agent gets SIGTERM if the thread that
        # started it dies (PR_SET_PDEATHSIG), and a signal cancels the waits.
        try:
            cluster.start()
        except AgentError as exc:
            if not stop.is_set():
                print(f"cluster: {exc}", file=sys.stderr, flush=True)
                rc = 1
        if not stop.is_set() and rc == 0:
            # Lines tests/test_cluster.py reads.
            print(f"cluster: ready NOMAD_ADDR={cluster.api.addr} root={cluster.root}", flush=True)
            for name, node_id in cluster.node_ids.items():
                print(f"cluster: node {name}={node_id}", flush=True)
            if not for_test:
                print(_how_to(cluster, started), flush=True)
            while not stop.is_set():
                gone = cluster.gone()
                if gone:
                    print(f"cluster: {gone}", file=sys.stderr, flush=True)
                    rc = 1
                    break
                stop.wait(1.0)
    finally:
        # A second Ctrl-C while stopping changes nothing: every wait in stop() is bounded.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        print("\ncluster: stopping (jobs, clients, server)", flush=True)
        survivors = cluster.stop()
        if survivors:
            print(f"cluster: killed processes still running after the agents stopped: {survivors}", flush=True)
        left = leftover_pids(cluster.root)
        if left:
            print(f"cluster: processes of the cluster still running: {left}", file=sys.stderr, flush=True)
            rc = 1
        else:
            print("cluster: stopped; no process of the cluster is left", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
