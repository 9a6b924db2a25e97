"""Shared test kit of the integration suite, the demo and the benchmarks (not in the product wheel).

- `Cluster`: the emulator or a real cluster (`CAPO_TEST_KUBECONFIG`), pods, evictions, what the
  operator wrote (IPReservation, ReservedIP records, Events, Lease, ledger).
- `Harness`: a Cluster plus serving certificate, the shipped webhook configuration and operators.
- `OperatorProcess`: `python -m capo_operator run` as users run it.
- `eventually`/`stays`: polling with deadlines; `parse_metrics`: Prometheus text.
"""

from capo_testkit.certs import ServingCert, make_serving_cert
from capo_testkit.cluster import Cluster, now_plus, pod_ip, pod_ips, real_kubeconfig, webhook_host
from capo_testkit.harness import Harness
from capo_testkit.kube import ApiError, Kube, Response
from capo_testkit.metrics import Metrics, parse_metrics
from capo_testkit.operator import OperatorProcess, free_port, operator_config
from capo_testkit.proxy import WebhookProxy
from capo_testkit.wait import eventually, stays

__all__ = [
    "ApiError",
    "Cluster",
    "Harness",
    "Kube",
    "Metrics",
    "OperatorProcess",
    "Response",
    "ServingCert",
    "WebhookProxy",
    "eventually",
    "free_port",
    "make_serving_cert",
    "now_plus",
    "operator_config",
    "parse_metrics",
    "pod_ip",
    "pod_ips",
    "real_kubeconfig",
    "stays",
    "webhook_host",
]
