"""`make demo` runs by itself, narrates each case and ends with a correct summary."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.emulator_only
@pytest.mark.timeout(150)
async def test_demo_runs_and_summarises() -> None:
    env = {k: v for k, v in os.environ.items() if k != "CAPO_TEST_KUBECONFIG"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "demo", "--fast", "--no-colour",
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        out_bytes, _ = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    out = out_bytes.decode()
    assert proc.returncode == 0, out
    for trigger in ("delete", "eviction", "kubelet-eviction"):
        assert re.search(rf"RESERVED .* trigger={trigger}\b", out), f"no {trigger} reservation:\n{out}"
    for reason in ("dry-run", "opted-out", "selector-mismatch"):
        assert re.search(rf"SKIPPED .* reason={reason}\b", out), f"no {reason} skip:\n{out}"
    assert re.search(r"RELEASED .* reason=cap\b", out), out
    assert re.search(r"RELEASED .* reason=expired\b", out), out
    assert "(a released IP: allocatable again)" in out, out
    assert "!! this IP is reserved" not in out, out
    assert re.search(r"NEW POD .*redis-0 +got (\S+) +\(its own IP, given back: sticky", out), out
    assert re.search(r"RELEASED .* reason=reclaimed\b", out), out
    summary = re.search(r"demo ok: reserved (\d+), skipped (\d+) .* released (\d+) "
                        r"\(cap 1, expired (\d+), reclaimed 1\), "
                        r"reserved IPs handed to new pods while held: 0", out)  # fmt: skip
    assert summary is not None, out
    reserved, skipped, released, expired = map(int, summary.groups())
    assert (reserved, skipped, released, expired) == (5, 3, 5, 3), out
    # The demo leaves no process behind: the operators' log files are no longer written to.
    assert "interrupted" not in out
