"""Rehearse the integration suite's real-cluster mode: run it twice in a row against one
long-lived API server, as it must pass on a real cluster (`make test-real-rehearsal`).

The server is the emulator as a separate process, with PodGC at the real default and nothing
reset between the runs: Events, records and Calico objects of the first run are still there when
the second starts, exactly what broke a second run on a real cluster. With CAPO_TEST_KUBECONFIG set
the same two runs go to that cluster instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kube_emulator.testing import EmulatorProcess  # noqa: E402


def run_suite(kubeconfig: str, round_: int, extra: list[str]) -> int:
    env = {**os.environ, "CAPO_TEST_KUBECONFIG": kubeconfig}
    env.setdefault("CAPO_TEST_WEBHOOK_HOST", "127.0.0.1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/integration", *extra]
    print(f"--- real-cluster mode, run {round_} of 2: {' '.join(cmd[2:])}", flush=True)
    return subprocess.call(cmd, cwd=ROOT, env=env)


def main(argv: list[str]) -> int:
    given = os.environ.get("CAPO_TEST_KUBECONFIG")
    if given:
        return max(run_suite(given, i, argv) for i in (1, 2))
    with tempfile.TemporaryDirectory(prefix="capo-rehearsal-") as tmp:
        log = Path(tmp) / "emulator.log"
        # The emulator's own scheduler has no nodes to use: the suite binds its pods to a Node it
        # creates, plays kubelet for them and assigns IPs from its own test pool.
        with EmulatorProcess(log_file=str(log), nodes=0) as emu:
            codes = [run_suite(emu.kubeconfig_path, i, argv) for i in (1, 2)]
        print(f"--- emulator log: {log.stat().st_size} bytes; exit codes {codes}", flush=True)
        return max(codes)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
