"""Real pod deletions and evictions on a kind cluster with Calico (skipped without Docker/kind)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from conftest import kubectl, kubectl_json, kubectl_stdin, wait_for

pytestmark = pytest.mark.e2e

STATEFULSET = """
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: web, namespace: {ns}}}
spec:
  serviceName: web
  replicas: 3
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: pause
          image: registry.k8s.io/pause:3.10
"""


@pytest.fixture
def namespace(cluster: str) -> Any:
    ns = f"e2e-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", ns)
    kubectl("label", "namespace", ns, "ip-reserve=enabled")
    kubectl_stdin(STATEFULSET.format(ns=ns), "apply", "-f", "-")
    wait_for(
        "3 ready pods",
        lambda: kubectl_json("-n", ns, "get", "sts", "web").get("status", {}).get("readyReplicas") == 3,
        timeout=300,
    )
    yield ns
    kubectl("delete", "namespace", ns, "--wait=false", check=False)


def reserved_cidrs() -> list[str]:
    obj = kubectl_json("get", "ipreservations.crd.projectcalico.org", "capo-reserved-ips")
    return list(obj["spec"].get("reservedCIDRs") or [])


def pod_ip(ns: str, name: str) -> str:
    return str(kubectl_json("-n", ns, "get", "pod", name)["status"]["podIP"])


def test_deleted_pod_ip_is_reserved_and_not_reused(namespace: str) -> None:
    ip = pod_ip(namespace, "web-0")
    kubectl("-n", namespace, "delete", "pod", "web-0", "--wait=true")
    wait_for("the IP in the IPReservation", lambda: f"{ip}/32" in reserved_cidrs())
    record = kubectl_json("get", "reservedips.capo.io", ip)
    assert (record["spec"]["pod"]["namespace"], record["spec"]["pod"]["name"]) == (namespace, "web-0")
    assert record["spec"]["trigger"] == "delete"
    # The StatefulSet re-creates web-0: it must get another IP while the old one is held.
    wait_for(
        "web-0 back",
        lambda: kubectl_json("-n", namespace, "get", "pod", "web-0").get("status", {}).get("podIP"),
    )
    assert pod_ip(namespace, "web-0") != ip


def test_evicted_pod_ip_is_reserved(namespace: str) -> None:
    ip = pod_ip(namespace, "web-1")
    eviction = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": "web-1", "namespace": namespace},
    }
    kubectl_stdin(
        json.dumps(eviction),
        "create",
        "--raw",
        f"/api/v1/namespaces/{namespace}/pods/web-1/eviction",
        "-f",
        "-",
    )
    wait_for("the evicted pod's IP reserved", lambda: f"{ip}/32" in reserved_cidrs())
    assert kubectl_json("get", "reservedips.capo.io", ip)["spec"]["trigger"] == "eviction"


def test_unlabelled_namespace_is_left_alone(cluster: str) -> None:
    ns = f"e2e-off-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", ns)
    try:
        kubectl(
            "-n",
            ns,
            "run",
            "solo",
            "--image=registry.k8s.io/pause:3.10",
            "--labels=statefulset.kubernetes.io/pod-name=solo",
        )
        wait_for(
            "pod IP", lambda: kubectl_json("-n", ns, "get", "pod", "solo").get("status", {}).get("podIP")
        )
        ip = pod_ip(ns, "solo")
        kubectl("-n", ns, "delete", "pod", "solo", "--wait=true")
        assert f"{ip}/32" not in reserved_cidrs()
    finally:
        kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_releasing_a_record_frees_the_ip(namespace: str) -> None:
    ip = pod_ip(namespace, "web-2")
    kubectl("-n", namespace, "delete", "pod", "web-2", "--wait=true")
    wait_for("reserved", lambda: f"{ip}/32" in reserved_cidrs())
    kubectl("delete", "reservedips.capo.io", ip)
    wait_for("released", lambda: f"{ip}/32" not in reserved_cidrs(), timeout=60)


STICKY_STATEFULSET = """
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: redis, namespace: {ns}}}
spec:
  serviceName: redis
  replicas: 2
  selector: {{matchLabels: {{app: redis}}}}
  template:
    metadata:
      labels: {{app: redis}}
      annotations: {{capo.io/sticky: "true", capo.io/release-policy: "{policy}"}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: pause
          image: registry.k8s.io/pause:3.10
"""


def test_sticky_statefulset_pod_gets_its_ip_back_with_real_calico(cluster: str) -> None:
    """The mutating webhook and Calico's ipAddrs with real Calico IPAM: redis-0 recreated by its
    StatefulSet comes back with its own IP, the hold is handed over (reclaimed), and while it was
    held a new pod of another workload did not get it."""
    ns = f"e2e-sticky-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", ns)
    kubectl("label", "namespace", ns, "ip-reserve=enabled")
    try:
        kubectl_stdin(STICKY_STATEFULSET.format(ns=ns, policy="ttl"), "apply", "-f", "-")
        wait_for(
            "2 ready pods",
            lambda: kubectl_json("-n", ns, "get", "sts", "redis").get("status", {}).get("readyReplicas") == 2,
            timeout=300,
        )
        ip = pod_ip(ns, "redis-0")
        # Scaled to 0, redis-0 is deleted and not recreated yet: its IP is held meanwhile, and a
        # pod of another workload must not get it.
        kubectl("-n", ns, "scale", "sts", "redis", "--replicas=0")
        wait_for("redis-0 gone", lambda: not kubectl("-n", ns, "get", "pod", "redis-0", check=False).strip())
        wait_for("the IP held", lambda: f"{ip}/32" in reserved_cidrs())
        assert kubectl_json("get", "reservedips.capo.io", ip)["spec"]["sticky"] is True
        kubectl("-n", ns, "run", "other", "--image=registry.k8s.io/pause:3.10")
        wait_for(
            "other pod IP",
            lambda: kubectl_json("-n", ns, "get", "pod", "other").get("status", {}).get("podIP"),
        )
        assert pod_ip(ns, "other") != ip
        kubectl("-n", ns, "scale", "sts", "redis", "--replicas=2")
        wait_for(
            "redis-0 back with an IP",
            lambda: kubectl_json("-n", ns, "get", "pod", "redis-0").get("status", {}).get("podIP"),
            timeout=300,
        )
        assert pod_ip(ns, "redis-0") == ip
        wait_for("the hold handed over", lambda: f"{ip}/32" not in reserved_cidrs(), timeout=60)
    finally:
        kubectl("delete", "namespace", ns, "--wait=false", check=False)
