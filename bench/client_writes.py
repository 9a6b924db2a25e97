"""The operator's CPU per API write: the generated client methods against its own lean writes.

Method (docs/performance.md, "Delete path"). One emulator process holds an IPReservation like the
one the delete benchmark builds up (--entries host CIDRs, each with its pending annotation). In one
process and one run, appends of one IP (with its pending annotation) alternate in blocks between
(a) `before`: `CustomObjectsApi.patch_cluster_custom_object`, the response parsed into a dict and
the pending annotations' size summed with one `pending.size` call per entry, as the operator did;
(b) `generated`: the same call with `pending.total_size`; (c) `lean`: `CalicoStore.append`'s own
PATCH (`call_api`, annotations decoded with msgspec, `pending.total_size`). The client process's
CPU time per append (`time.process_time`, user and system) is the operator's share; the wall time
includes the emulator's and varies with the machine's load. Prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kubernetes.aio import client, config  # noqa: E402

from capo_operator.decisions import pending  # noqa: E402
from capo_operator.kube.calico import JSON_PATCH, PLURAL, CalicoGroup, CalicoStore  # noqa: E402
from kube_emulator.testing import EmulatorProcess  # noqa: E402

NAME = "capo-bench"
GROUP = CalicoGroup.CRD
# The size of a real pending annotation's value (pending.encode of a StatefulSet pod's record).
VALUE = (
    '[1,"10.244.0.17","apps","redis-0","2d1c5b1e-9f0a-4c11-8f4e-aa0f3b6c9d21","node-1","apps/v1",'
    '"StatefulSet","redis","7f0c9a2e-1b3d-4e5f-8a6b-c7d8e9f0a1b2","delete",1764600000,3600,"default"]'
)


def ip_for(i: int) -> str:
    return f"10.{100 + i // 65536}.{(i // 256) % 256}.{i % 256}"


def patch_for(ip: str) -> list[dict[str, Any]]:
    key = pending.key(ip).replace("~", "~0").replace("/", "~1")
    return [
        {"op": "add", "path": "/spec/reservedCIDRs/-", "value": f"{ip}/32"},
        {"op": "add", "path": f"/metadata/annotations/{key}", "value": VALUE},
    ]


async def run(entries: int, appends: int, block: int) -> dict[str, Any]:
    with EmulatorProcess(nodes=1, log_level="warning") as emu:
        cfg = client.Configuration()
        await config.load_kube_config(config_file=str(emu.kubeconfig_path), client_configuration=cfg)
        api = client.ApiClient(cfg)
        try:
            custom = client.CustomObjectsApi(api)
            seed = [ip_for(i) for i in range(entries)]
            body = {
                "apiVersion": GROUP.api_version,
                "kind": "IPReservation",
                "metadata": {
                    "name": NAME,
                    "annotations": {"capo.io/managed-by": "capo-operator"}
                    | {pending.key(ip): VALUE for ip in seed},
                },
                "spec": {"reservedCIDRs": [f"{ip}/32" for ip in seed]},
            }
            await custom.create_cluster_custom_object(GROUP.value, GROUP.version, PLURAL, body)
            store = CalicoStore(api, name=NAME, group=GROUP)

            async def before(ip: str) -> None:
                obj = await custom.patch_cluster_custom_object(
                    GROUP.value, GROUP.version, PLURAL, NAME, patch_for(ip), _content_type=JSON_PATCH
                )
                annotations = cast(dict[str, Any], obj)["metadata"]["annotations"]  # summed as it was
                store.pending_bytes = sum(
                    pending.size(k, v)
                    for k, v in annotations.items()
                    if isinstance(k, str) and isinstance(v, str) and pending.is_key(k)
                )

            async def generated(ip: str) -> None:
                obj = await custom.patch_cluster_custom_object(
                    GROUP.value, GROUP.version, PLURAL, NAME, patch_for(ip), _content_type=JSON_PATCH
                )
                store._saw(obj)  # pending.total_size

            async def lean(ip: str) -> None:
                await store._json_patch(patch_for(ip))

            ways = {"before": before, "generated": generated, "lean": lean}
            cpu: dict[str, list[float]] = {k: [] for k in ways}
            wall: dict[str, list[float]] = {k: [] for k in ways}
            n = entries
            for _ in range(2):  # warm both paths (connections, caches)
                for fn in ways.values():
                    await fn(ip_for(n))
                    n += 1
            for _ in range(appends // (len(ways) * block)):
                for name, fn in ways.items():
                    for _ in range(block):
                        c0, w0 = time.process_time(), time.perf_counter()
                        await fn(ip_for(n))
                        cpu[name].append(time.process_time() - c0)
                        wall[name].append(time.perf_counter() - w0)
                        n += 1
            events = await event_costs(api, appends // 2, block)
        finally:
            await api.close()
    result: dict[str, Any] = {"entries_at_start": entries, "entries_at_end": n, "events": events}
    for name in ways:
        result[name] = {
            "appends": len(cpu[name]),
            "cpu_ms_mean": round(statistics.fmean(cpu[name]) * 1000, 3),
            "cpu_ms_median": round(statistics.median(cpu[name]) * 1000, 3),
            "wall_ms_median": round(statistics.median(wall[name]) * 1000, 3),
        }
    for name in ("generated", "lean"):
        result[f"cpu_ratio_{name}_to_before"] = round(
            result[name]["cpu_ms_mean"] / result["before"]["cpu_ms_mean"], 3
        )
    return result


async def event_costs(api: client.ApiClient, count: int, block: int) -> dict[str, Any]:
    """The same Event posted through the generated CoreV1Api (models built, call validated, answer
    parsed), as EventRecorder did, and through EventRecorder._send (a dict via `send_json`)."""
    from datetime import UTC, datetime

    from capo_operator.kube.events import COMPONENT, EventRecorder, ObjectRef

    core = client.CoreV1Api(api)
    recorder = EventRecorder(api, host="bench")
    ref = ObjectRef("Pod", "redis-0", "default", "2d1c5b1e-9f0a-4c11-8f4e-aa0f3b6c9d21")
    message = "Reserved IP 10.244.0.17 of pod default/redis-0 for 40m (delete)"

    async def generated() -> None:
        now = datetime.now(UTC)
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name="redis-0."),
            involved_object=client.V1ObjectReference(
                api_version="v1", kind="Pod", name=ref.name, namespace=ref.namespace, uid=ref.uid
            ),
            reason="IPReserved",
            message=message,
            type="Normal",
            source=client.V1EventSource(component=COMPONENT, host="bench"),
            reporting_component=COMPONENT,
            reporting_instance="bench",
            first_timestamp=now,
            last_timestamp=now,
            event_time=now,
            action="IPReserved",
            count=1,
        )
        await core.create_namespaced_event("default", body)

    async def lean() -> None:
        await recorder._send(ref, "Normal", "IPReserved", message)

    ways = {"generated": generated, "lean": lean}
    cpu: dict[str, list[float]] = {k: [] for k in ways}
    for fn in ways.values():
        await fn()
    for _ in range(count // (len(ways) * block)):
        for name, fn in ways.items():
            for _ in range(block):
                c0 = time.process_time()
                await fn()
                cpu[name].append(time.process_time() - c0)
    out: dict[str, Any] = {
        name: {"posts": len(v), "cpu_ms_mean": round(statistics.fmean(v) * 1000, 3)}
        for name, v in cpu.items()
    }
    ratio = out["lean"]["cpu_ms_mean"] / out["generated"]["cpu_ms_mean"]
    out["cpu_ratio_lean_to_generated"] = round(ratio, 3)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entries", type=int, default=300)
    p.add_argument("--appends", type=int, default=600, help="in all, a third per path")
    p.add_argument("--block", type=int, default=20, help="appends in a row before switching path")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    result = asyncio.run(run(a.entries, a.appends, a.block))
    text = json.dumps(result, indent=2)
    print(text)
    if a.json:
        a.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
