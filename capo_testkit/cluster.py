"""One cluster to test against: the in-process emulator, or a real one from CAPO_TEST_KUBECONFIG.

Tests speak only through this class, so the same test runs on both. On a real cluster no kubelet
runs the test pods: they are bound to a Node object this class creates for the run (no kubelet
behind it; a pod bound to a missing Node would be force-deleted by PodGC after 40 s, and the
pods tolerate the NoExecute taints such a Node gets), and this class plays the kubelet and Calico
for them (assigns the lowest free IP of a test pool that is in no
IPReservation, writes the status, issues the final DELETE of a terminating pod).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import os
import secrets
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import yaml

from capo_operator.kube import ledger as fmt  # the operator's own decoder reads what it wrote
from capo_testkit.kube import JSON_PATCH, ApiError, Kube, Obj, Response, path_for, pods_path
from capo_testkit.wait import eventually

ROOT = Path(__file__).resolve().parents[1]
RECORD_CRD = ROOT / "manifests" / "crd" / "capo.io_reservedips.yaml"
CALICO_DIR = ROOT / "third_party" / "calico"
RESERVATION = "capo-reserved-ips"
RECORDS = ("capo.io", "v1", "reservedips")
NS_LABEL = "ip-reserve"
STS_LABEL = "statefulset.kubernetes.io/pod-name"
NO_SCHEDULER = "capo-test-no-scheduler"
# Real-cluster mode: every namespace, Node and webhook scope of one run carries this label.
RUN_LABEL = "capo.io/test-run"
# No kubelet runs the test Node: it turns NotReady/Unreachable, and its NoExecute taints would
# evict the test pods after the default 300 s toleration. The pods tolerate them for good.
TOLERATE_NO_EXECUTE = [{"operator": "Exists", "effect": "NoExecute"}]
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"


def real_kubeconfig() -> str | None:
    return os.environ.get("CAPO_TEST_KUBECONFIG") or None


def webhook_host() -> str:
    return os.environ.get("CAPO_TEST_WEBHOOK_HOST") or "127.0.0.1"


def pod_ips(pod: Obj) -> list[str]:
    status = pod.get("status") or {}
    ips = [p["ip"] for p in status.get("podIPs") or [] if p.get("ip")]
    if not ips and status.get("podIP"):
        ips = [status["podIP"]]
    return ips


def pod_ip(pod: Obj) -> str:
    ips = pod_ips(pod)
    assert ips, f"pod {pod['metadata']['name']} has no IP: status={pod.get('status')}"
    return ips[0]


def host_ip(cidr: str) -> str:
    return str(ipaddress.ip_interface(cidr).ip) if "/" in cidr else str(ipaddress.ip_address(cidr))


class Cluster:
    """Use `async with Cluster.open(...) as cluster:`; everything it created is removed on exit."""

    def __init__(self, kube: Kube, kubeconfig: Path, *, emulator: Any | None, run_id: str) -> None:
        self.kube = kube
        self.kubeconfig = kubeconfig
        self.emulator = emulator  # kube_emulator.testing.Emulator, or None on a real cluster
        self.run_id = run_id
        self.operator_namespace = "capo-system" if emulator else f"capo-test-{run_id}"
        self.webhook_config_name = "capo-operator" if emulator else f"capo-operator-test-{run_id}"
        # A real cluster may run capo already: the test operators own objects of their own.
        self.reservation_name = RESERVATION if emulator else f"capo-test-{run_id}"
        self.namespaces: list[str] = []
        # Real-cluster mode: test pods are bound to a Node object of this run, so PodGC (which
        # force-deletes pods of nodes that do not exist, after ~40 s) leaves them alone.
        self.node_name = f"capo-test-node-{run_id}"
        # The API server's clock when this run began: older Events are not this run's.
        self.started_at = ""
        self.calico_group = ("crd.projectcalico.org", "v1")
        # Real-cluster mode: the pools this class assigns from (the emulator has its own).
        self.pool4 = ipaddress.ip_network(os.environ.get("CAPO_TEST_POD_CIDR", "10.255.0.0/24"))
        self.pool6 = ipaddress.ip_network(os.environ.get("CAPO_TEST_POD_CIDR_V6", "fd00:ca90::/120"))
        self.dual_stack = False
        self._ip_lock = asyncio.Lock()

    @property
    def is_emulator(self) -> bool:
        return self.emulator is not None

    @property
    def control(self) -> Any:
        """The emulator's EmulatorControl (fault injection, kubelet helpers)."""
        assert self.emulator is not None, "emulator-only helper used on a real cluster"
        return self.emulator.control

    # -- opening ------------------------------------------------------------------------------

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        *,
        calico: str = "crd",
        calico_variant: str = "latest",
        dual_stack: bool = False,
        kubelet_delay: float = 0.2,
        nodes: int = 2,
        force_emulator: bool = False,
    ) -> AsyncIterator[Cluster]:
        real = None if force_emulator else real_kubeconfig()
        run_id = secrets.token_hex(3)
        if real:
            kube = await Kube.from_kubeconfig(real)
            cluster = cls(kube, Path(real), emulator=None, run_id=run_id)
            cluster.dual_stack = dual_stack
            try:
                await cluster._prepare()
                yield cluster
            finally:
                await cluster._cleanup_real()
                await kube.close()
            return
        from kube_emulator.testing import Emulator

        options: dict[str, Any] = {
            "calico": calico,
            "calico_variant": calico_variant,
            "kubelet_delay": kubelet_delay,
            "nodes": nodes,
            "pod_cidr": "10.244.0.0/24",
        }
        if dual_stack:
            options["pod_cidr_v6"] = "fd00:10:244::/120"
        async with Emulator(**options) as emu:
            kube = await Kube.from_kubeconfig(emu.kubeconfig_path)
            cluster = cls(kube, Path(emu.kubeconfig_path), emulator=emu, run_id=run_id)
            cluster.dual_stack = dual_stack
            try:
                await cluster._prepare()
                yield cluster
            finally:
                await kube.close()

    async def _prepare(self) -> None:
        await self.install_crds()
        resp = await self.kube.call(
            "POST",
            "/api/v1/namespaces",
            {"metadata": {"name": self.operator_namespace, "labels": self._run_labels()}},
            ok=(409,),
        )
        self.started_at = ((resp.body or {}).get("metadata") or {}).get("creationTimestamp") or ""
        self.calico_group = await self.detect_calico_group()
        if not self.is_emulator:
            await self._create_node()

    def run_namespace_selector(self) -> dict[str, Any]:
        """The operator's `namespaceSelector` that confines it to this run's namespaces."""
        return {"matchLabels": {RUN_LABEL: self.run_id}}

    def _run_labels(self) -> dict[str, str]:
        return {} if self.is_emulator else {RUN_LABEL: self.run_id}

    async def _create_node(self) -> None:
        node: Obj = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.node_name, "labels": {RUN_LABEL: self.run_id}},
            # Nothing real is ever scheduled here: the test pods name the node themselves.
            "spec": {"unschedulable": True, "taints": [{"key": RUN_LABEL, "effect": "NoSchedule"}]},
        }
        await self.kube.create("/api/v1/nodes", node)

    async def _served(self, group: str, version: str, plural: str) -> bool:
        resp = await self.kube.call("GET", f"/apis/{group}/{version}", ok=(404, 503))
        if resp.status != 200:
            return False
        return any(r.get("name") == plural for r in (resp.body or {}).get("resources") or [])

    async def detect_calico_group(self) -> tuple[str, str]:
        # The operator's own rule (DESIGN 4): crd.projectcalico.org/v1 when served, else v3.
        if await self._served("crd.projectcalico.org", "v1", "ipreservations"):
            return ("crd.projectcalico.org", "v1")
        return ("projectcalico.org", "v3")

    async def install_crds(self) -> None:
        """The ReservedIP CRD (always) and, on a real cluster without Calico, Calico's CRDs."""
        crds: list[Obj] = [yaml.safe_load(RECORD_CRD.read_text())]
        if not self.is_emulator and not (
            await self._served("crd.projectcalico.org", "v1", "ipreservations")
            or await self._served("projectcalico.org", "v3", "ipreservations")
        ):
            crds.append(
                yaml.safe_load((CALICO_DIR / "crd.projectcalico.org_ipreservations.yaml").read_text())
            )
        for crd in crds:
            await self.kube.call(
                "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd, ok=(409,)
            )
            group, plural = crd["spec"]["group"], crd["spec"]["names"]["plural"]
            version = crd["spec"]["versions"][0]["name"]

            async def served(g: str = group, v: str = version, p: str = plural) -> bool:
                return await self._served(g, v, p)

            await eventually(
                served,
                bool,
                within=30,
                what=f"{plural}.{group} to be served",
            )

    # -- webhook configuration ------------------------------------------------------------------

    def shipped_webhook_configuration(self, kind: str = "ValidatingWebhookConfiguration") -> Obj:
        """The webhook configuration of `kind` the project ships (kustomize output when possible)."""
        documents: list[Any] = []
        default = ROOT / "manifests" / "default" / "kustomization.yaml"
        if default.exists():
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                out = subprocess.run(
                    ["kubectl", "kustomize", str(default.parent)],
                    capture_output=True, text=True, timeout=60, check=True,
                ).stdout  # fmt: skip
                documents = list(yaml.safe_load_all(out))
        if not any(d and d.get("kind") == kind for d in documents):
            for path in sorted((ROOT / "manifests" / "webhook").glob("*.yaml")):
                documents.extend(yaml.safe_load_all(path.read_text()))
        for doc in documents:
            if doc and doc.get("kind") == kind:
                return dict(doc)
        raise AssertionError(f"no {kind} found under manifests/")

    async def install_webhook(
        self, url_base: str, ca_bundle: str, *, kind: str = "ValidatingWebhookConfiguration"
    ) -> Obj:
        """Install the shipped configuration pointing at `url_base` (https://host:port)."""
        config = self.shipped_webhook_configuration(kind)
        config["metadata"] = {
            "name": self.webhook_config_name,
            "labels": config["metadata"].get("labels", {}),
        }
        for hook in config["webhooks"]:
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": f"{url_base}{path}", "caBundle": ca_bundle}
            selector = hook.setdefault("namespaceSelector", {})
            for expr in selector.get("matchExpressions") or []:
                if expr["key"] == "kubernetes.io/metadata.name" and "capo-system" in expr["values"]:
                    expr["values"] = [
                        v if v != "capo-system" else self.operator_namespace for v in expr["values"]
                    ]
            if not self.is_emulator:
                # Only this run's namespaces: the cluster's own ip-reserve namespaces are not ours.
                selector.setdefault("matchExpressions", []).append(
                    {"key": RUN_LABEL, "operator": "In", "values": [self.run_id]}
                )
        path = path_for("admissionregistration.k8s.io", "v1", kind.lower() + "s")
        await self.kube.delete(f"{path}/{self.webhook_config_name}", missing_ok=True)
        return await self.kube.create(path, config)

    async def remove_webhook(self, kind: str = "ValidatingWebhookConfiguration") -> None:
        path = path_for("admissionregistration.k8s.io", "v1", kind.lower() + "s")
        await self.kube.delete(f"{path}/{self.webhook_config_name}", missing_ok=True)

    # -- namespaces ---------------------------------------------------------------------------

    async def create_namespace(self, name: str, *, enabled: bool = True, value: str = "enabled") -> str:
        """Create a namespace (labelled ip-reserve=<value> when enabled); returns its real name."""
        real_name = name if self.is_emulator else f"{name}-{self.run_id}"
        labels = {NS_LABEL: value} if enabled else {}
        labels.update(self._run_labels())
        await self.kube.create("/api/v1/namespaces", {"metadata": {"name": real_name, "labels": labels}})
        self.namespaces.append(real_name)
        return real_name

    # -- pods -----------------------------------------------------------------------------------

    def pod_manifest(
        self,
        namespace: str,
        name: str,
        *,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        host_network: bool = False,
        schedulable: bool = True,
        owner: Obj | None = None,
        stateful: bool = True,
    ) -> Obj:
        all_labels = {"app": name.rsplit("-", 1)[0]}
        if stateful:
            all_labels[STS_LABEL] = name
        all_labels.update(labels or {})
        spec: Obj = {
            "containers": [{"name": "app", "image": PAUSE_IMAGE}],
            "terminationGracePeriodSeconds": 30,
        }
        if not self.is_emulator:
            spec["tolerations"] = TOLERATE_NO_EXECUTE
        if host_network:
            spec["hostNetwork"] = True
        if not schedulable:
            spec["schedulerName"] = NO_SCHEDULER
        elif not self.is_emulator:
            spec["nodeName"] = self.node_name
        metadata: Obj = {"name": name, "namespace": namespace, "labels": all_labels}
        if annotations:
            metadata["annotations"] = annotations
        if owner:
            metadata["ownerReferences"] = [owner]
        return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}

    async def create_pod(self, namespace: str, name: str, *, wait: bool = True, **options: Any) -> Obj:
        """Create a pod; by default wait until it runs with an IP (or, unschedulable, exists)."""
        manifest = self.pod_manifest(namespace, name, **options)
        pod = await self.kube.create(pods_path(namespace), manifest)
        if not self.is_emulator and options.get("schedulable", True):
            await self._start_real_pod(pod)
        if not wait or not options.get("schedulable", True):
            return await self.get_pod(namespace, name) or pod
        return await self.wait_running(namespace, name)

    async def wait_running(self, namespace: str, name: str, within: float = 20) -> Obj:
        pod = await eventually(
            lambda: self.get_pod(namespace, name),
            lambda p: (
                p is not None and (p.get("status") or {}).get("phase") == "Running" and bool(pod_ips(p))
            ),
            within=within,
            interval=0.05,
            what=f"pod {namespace}/{name} to run with an IP",
        )
        assert pod is not None
        return pod

    async def get_pod(self, namespace: str, name: str) -> Obj | None:
        return await self.kube.get_or_none(pods_path(namespace, name))

    async def list_pods(self, namespace: str | None = None) -> list[Obj]:
        return await self.kube.list(pods_path(namespace) if namespace else "/api/v1/pods")

    async def wait_gone(self, namespace: str, name: str, uid: str | None = None, within: float = 20) -> None:
        async def gone() -> bool:
            pod = await self.get_pod(namespace, name)
            return pod is None or (uid is not None and pod["metadata"]["uid"] != uid)

        await eventually(gone, bool, within=within, interval=0.05, what=f"pod {namespace}/{name} to be gone")

    async def delete_pod(
        self, namespace: str, name: str, *, dry_run: bool = False, wait: bool = True
    ) -> Response:
        """kubectl delete pod: graceful; the kubelet (emulated or ours) does the final DELETE."""
        before = await self.get_pod(namespace, name)
        resp = await self.kube.delete(pods_path(namespace, name), dry_run=dry_run)
        if dry_run:
            return resp
        if not self.is_emulator and before is not None:
            await self._kubelet_final_delete(namespace, name)
        if wait and before is not None:
            await self.wait_gone(namespace, name, before["metadata"]["uid"])
        return resp

    async def delete_collection(self, namespace: str, label_selector: str) -> Response:
        before = await self.list_pods(namespace)
        resp = await self.kube.delete(pods_path(namespace), label_selector=label_selector)
        if not self.is_emulator:
            for pod in await self.list_pods(namespace):
                if pod["metadata"].get("deletionTimestamp"):
                    await self._kubelet_final_delete(namespace, pod["metadata"]["name"])
        for pod in resp.body.get("items") or []:
            uid = pod["metadata"]["uid"]
            if any(p["metadata"]["uid"] == uid for p in before):
                await self.wait_gone(namespace, pod["metadata"]["name"], uid)
        return resp

    async def evict_pod(
        self, namespace: str, name: str, *, dry_run: bool = False, wait: bool = True
    ) -> Response:
        """POST pods/<name>/eviction as `kubectl drain` does (dry run inside the Eviction's options,
        as `kubectl drain --dry-run=server` sends it)."""
        before = await self.get_pod(namespace, name)
        eviction: Obj = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": name, "namespace": namespace},
        }
        if dry_run:
            eviction["deleteOptions"] = {"dryRun": ["All"]}
        resp = await self.kube.call("POST", pods_path(namespace, name, "eviction"), eviction)
        if dry_run:
            return resp
        if not self.is_emulator:
            await self._kubelet_final_delete(namespace, name)
        if wait and before is not None:
            await self.wait_gone(namespace, name, before["metadata"]["uid"])
        return resp

    async def kubelet_evict(self, namespace: str, name: str) -> Obj:
        """Node-pressure eviction: the pod turns Failed/Evicted, IPs kept in status, no API delete."""
        if self.is_emulator:
            result: Obj = await self.control.kubelet_evict(namespace, name)
            return result
        message = "The node was low on resource: memory."
        return await self.kube.patch(
            pods_path(namespace, name, "status"),
            {
                "status": {
                    "phase": "Failed",
                    "reason": "Evicted",
                    "message": message,
                    "conditions": [
                        {"type": "Ready", "status": "False", "reason": "PodFailed"},
                        {"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet",
                         "message": message},
                    ],
                }
            },
        )  # fmt: skip

    # -- real-cluster kubelet and IPAM ------------------------------------------------------------

    async def _kubelet_final_delete(self, namespace: str, name: str) -> None:
        pod = await self.get_pod(namespace, name)
        if pod is None or not pod["metadata"].get("deletionTimestamp"):
            return
        await self.kube.delete(pods_path(namespace, name), grace_period=0, missing_ok=True)

    async def _start_real_pod(self, pod: Obj) -> None:
        namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        if pod["spec"].get("hostNetwork"):
            ips = ["172.31.255.1"]
        else:
            async with self._ip_lock:
                ips = await self._allocate()
                await self._write_running(namespace, name, ips)
            return
        await self._write_running(namespace, name, ips)

    async def _write_running(self, namespace: str, name: str, ips: list[str]) -> None:
        status = {
            "phase": "Running",
            "podIP": ips[0],
            "podIPs": [{"ip": ip} for ip in ips],
            "hostIP": "172.31.255.1",
            "conditions": [{"type": "Ready", "status": "True"}],
        }
        await self.kube.patch(pods_path(namespace, name, "status"), {"status": status})

    async def _allocate(self) -> list[str]:
        used: set[str] = set()
        for pod in await self.list_pods():
            if (pod.get("status") or {}).get("phase") not in ("Failed", "Succeeded"):
                used.update(pod_ips(pod))
        reserved = await self.reserved_networks()
        out = []
        pools = [self.pool4] + ([self.pool6] if self.dual_stack else [])
        for pool in pools:
            for ip in pool.hosts():
                if str(ip) not in used and not any(
                    ip in net for net in reserved if net.version == ip.version
                ):
                    out.append(str(ip))
                    break
            else:
                raise AssertionError(f"test pool {pool} is exhausted")
        return out

    # -- what the operator wrote ----------------------------------------------------------------

    async def reservation(self) -> Obj | None:
        group, version = self.calico_group
        return await self.kube.get_or_none(
            path_for(group, version, "ipreservations", name=self.reservation_name)
        )

    async def reserved_ips(self) -> set[str]:
        """The IPs in the operator's IPReservation (entries are host CIDRs)."""
        obj = await self.reservation()
        entries = ((obj or {}).get("spec") or {}).get("reservedCIDRs") or []
        return {host_ip(e) for e in entries}

    async def reserved_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        nets = []
        for group, version in (("crd.projectcalico.org", "v1"), ("projectcalico.org", "v3")):
            try:
                items = await self.kube.list(path_for(group, version, "ipreservations"))
            except ApiError:
                continue
            for item in items:
                for entry in (item.get("spec") or {}).get("reservedCIDRs") or []:
                    with contextlib.suppress(ValueError):
                        nets.append(ipaddress.ip_network(entry, strict=False))
        return nets

    async def records(self) -> dict[str, Obj]:
        """ReservedIP records by IP; on a real cluster only those of this run's operators (labelled
        with this run's IPReservation) for pods of this run's namespaces."""
        if self.is_emulator:
            items = await self.kube.list(path_for(*RECORDS))
        else:
            selector = f"capo.io/reservation={self.reservation_name}"
            items = await self.kube.list(path_for(*RECORDS), label_selector=selector)
        out = {}
        for item in items:
            spec = item.get("spec") or {}
            ns = (spec.get("pod") or {}).get("namespace")
            if self.is_emulator or ns in self.namespaces:
                out[str(spec.get("ip"))] = item
        return out

    async def events(self, namespace: str | None = None, reason: str | None = None) -> list[Obj]:
        """Events, by reason. On a real cluster only this run's: about objects in its namespaces, or
        about a ReservedIP of a pod in its namespaces, and not older than the run (Events live an
        hour, and a run before this one used the same IPs)."""
        path = path_for("", "v1", "events", namespace) if namespace else "/api/v1/events"
        items = await self.kube.list(path)
        return [
            e
            for e in items
            if (reason is None or e.get("reason") == reason) and (self.is_emulator or self._ours(e))
        ]

    def _ours(self, event: Obj) -> bool:
        when = event.get("eventTime") or event.get("firstTimestamp") or event.get("lastTimestamp") or ""
        if not when or when[:19] < self.started_at[:19]:  # RFC 3339 in UTC: compares as text
            return False
        involved = event.get("involvedObject") or {}
        own = [*self.namespaces, self.operator_namespace]
        if involved.get("namespace") in own:
            return True
        message = str(event.get("message") or "")
        return involved.get("kind") == "ReservedIP" and any(f" {ns}/" in message for ns in self.namespaces)

    async def lease_holder(self, name: str = "capo") -> str | None:
        lease = await self.kube.get_or_none(
            path_for("coordination.k8s.io", "v1", "leases", self.operator_namespace, name)
        )
        return ((lease or {}).get("spec") or {}).get("holderIdentity") or None

    async def ledger(self) -> str:
        """The IPs the ledger lists, space-separated (format 2: the index and its shards; format 1:
        the JSON text itself)."""

        def path(name: str) -> str:
            return path_for("", "v1", "configmaps", self.operator_namespace, name)

        data = ((await self.kube.get_or_none(path(fmt.NAME))) or {}).get("data") or {}
        if fmt.INDEX_KEY not in data:
            return str(data.get(fmt.DATA_KEY, ""))
        ips: list[str] = []
        for i in range(json.loads(data[fmt.INDEX_KEY])["shards"]):
            cm = await self.kube.get_or_none(path(fmt.shard_name(fmt.NAME, i)))
            if cm is not None:
                payload = base64.b64decode(cm["binaryData"][fmt.PAYLOAD_KEY])
                ips.extend(fmt.decode_shard(cm["data"][fmt.META_KEY], payload).entries)
        return " ".join(sorted(ips))

    async def delete_record(self, ip: str) -> None:
        items = await self.records()
        await self.kube.delete(path_for(*RECORDS, name=items[ip]["metadata"]["name"]))

    async def set_record_expiry(self, ip: str, expires_at: str) -> None:
        items = await self.records()
        await self.kube.patch(
            path_for(*RECORDS, name=items[ip]["metadata"]["name"]),
            [{"op": "replace", "path": "/spec/expiresAt", "value": expires_at}],
            content_type=JSON_PATCH,
        )

    # -- cleanup (real cluster) ------------------------------------------------------------------

    async def _cleanup_real(self) -> None:
        """Remove what this run created; cleanup deletions must not be reserved, so the webhook
        configuration goes first."""
        with contextlib.suppress(Exception):
            await self.remove_webhook()
        with contextlib.suppress(Exception):
            await self.remove_webhook("MutatingWebhookConfiguration")
        for ns in self.namespaces:
            with contextlib.suppress(Exception):
                for pod in await self.list_pods(ns):
                    await self.kube.delete(
                        pods_path(ns, pod["metadata"]["name"]), grace_period=0, missing_ok=True
                    )
        await self._remove_records()
        with contextlib.suppress(Exception):
            group, version = self.calico_group
            await self.kube.delete(
                path_for(group, version, "ipreservations", name=self.reservation_name), missing_ok=True
            )
        for ns in [*self.namespaces, self.operator_namespace]:
            with contextlib.suppress(Exception):
                await self.kube.delete(f"/api/v1/namespaces/{ns}", missing_ok=True)
        with contextlib.suppress(Exception):
            await self.kube.delete(f"/api/v1/nodes/{self.node_name}", missing_ok=True)
        # A record written after the sweep above (records follow reservations asynchronously).
        await self._remove_records()

    async def _remove_records(self) -> None:
        """This run's records: labelled with its IPReservation, or of a pod in its namespaces."""
        items = dict(await self._safe_records())
        with contextlib.suppress(Exception):
            selector = f"capo.io/reservation={self.reservation_name}"
            for item in await self.kube.list(path_for(*RECORDS), label_selector=selector):
                items[str(item["metadata"]["name"])] = item
        for item in items.values():
            path = path_for(*RECORDS, name=item["metadata"]["name"])
            with contextlib.suppress(Exception):
                # The records' finalizer waits for a leader, and the operators are stopped by now.
                await self.kube.patch(path, {"metadata": {"finalizers": None}})
            with contextlib.suppress(Exception):
                await self.kube.delete(path, missing_ok=True)

    async def _safe_records(self) -> dict[str, Obj]:
        try:
            return await self.records()
        except Exception:
            return {}


def now_plus(seconds: float) -> str:
    """An RFC 3339 UTC timestamp `seconds` from now, as records hold them."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + seconds))
