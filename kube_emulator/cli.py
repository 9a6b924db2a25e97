"""``python -m kube_emulator``: run the emulator and print one JSON ready line to stdout."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from .apiserver import check_write_latency
from .server import CALICO_MODES, CALICO_VARIANTS, EmulatorServer, Options


def parse_args(argv: list[str] | None = None) -> Options:
    p = argparse.ArgumentParser(
        prog="python -m kube_emulator", description="A small Kubernetes API emulator."
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument(
        "--kubeconfig-out", default=None, help="where to write the kubeconfig (default: a temp file)"
    )
    p.add_argument("--pod-cidr", default="10.244.0.0/24")
    p.add_argument("--pod-cidr-v6", default=None)
    p.add_argument("--calico", choices=CALICO_MODES, default="crd")
    p.add_argument("--calico-variant", choices=CALICO_VARIANTS, default="latest")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--kubelet-delay", type=float, default=0.3)
    p.add_argument("--watch-history", type=int, default=2000)
    p.add_argument("--bookmark-interval", type=float, default=5.0)
    p.add_argument(
        "--podgc-orphan-delay",
        type=float,
        default=40.0,
        help="seconds a pod bound to a missing Node waits before PodGC force-deletes it (real: 40)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "--write-latency",
        type=float,
        default=0.0,
        help="seconds every write waits for its commit, like etcd's fsync (default 0); writes to one "
        "object are serialized. Also settable at run time: POST /_emulator/write-latency",
    )
    a = p.parse_args(argv)
    try:
        check_write_latency(a.write_latency)
    except ValueError as exc:
        p.error(str(exc))
    return Options(
        host=a.host,
        port=a.port,
        pod_cidr=a.pod_cidr,
        pod_cidr_v6=a.pod_cidr_v6,
        calico=a.calico,
        calico_variant=a.calico_variant,
        nodes=a.nodes,
        kubelet_delay=a.kubelet_delay,
        watch_history=a.watch_history,
        bookmark_interval=a.bookmark_interval,
        kubeconfig_out=a.kubeconfig_out,
        log_level=a.log_level,
        podgc_orphan_delay=a.podgc_orphan_delay,
        write_latency=a.write_latency,
    )


async def run(options: Options) -> None:
    server = EmulatorServer(options)
    await server.start()
    sys.stdout.write(server.ready_line() + "\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, options.log_level.upper()),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(run(options))
    return 0
