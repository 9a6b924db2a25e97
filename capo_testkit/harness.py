"""Everything a scenario needs around the cluster: certificate, webhook "Service", operators."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from capo_testkit import identity
from capo_testkit.certs import ServingCert, make_serving_cert
from capo_testkit.cluster import Cluster, webhook_host
from capo_testkit.kube import Obj
from capo_testkit.metrics import Metrics
from capo_testkit.operator import OperatorProcess, free_port
from capo_testkit.proxy import WebhookProxy
from capo_testkit.wait import eventually


class Harness:
    def __init__(self, cluster: Cluster, workdir: Path, cert: ServingCert, proxy: WebhookProxy) -> None:
        self.cluster = cluster
        self.workdir = workdir
        self.cert = cert
        self.proxy = proxy
        self.operators: list[OperatorProcess] = []
        # Every operator runs as the shipped ServiceAccount, with the shipped RBAC, from a token
        # file (rewritten by rotate_token(), as the kubelet rewrites a projected token).
        self.rbac: list[Obj] = []
        self.token_file = workdir / "operator-token"
        self.operator_kubeconfig = workdir / "operator.kubeconfig"

    async def _install_identity(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        await self.set_rbac(identity.rbac_for(self.cluster))
        await self.rotate_token()
        identity.token_kubeconfig(self.cluster.kubeconfig, self.token_file, self.operator_kubeconfig)

    async def set_rbac(self, docs: list[Obj]) -> None:
        """Apply these RBAC objects (the shipped ones, or a changed copy) for the operators."""
        await identity.apply_rbac(self.cluster, docs)
        self.rbac = docs

    async def rotate_token(self, seconds: int = identity.TOKEN_SECONDS) -> str:
        """A new ServiceAccount token in the operators' token file."""
        token = await identity.request_token(self.cluster, seconds)
        self.token_file.write_text(token)
        return token

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, workdir: Path, **cluster_options: Any) -> AsyncIterator[Harness]:
        host = webhook_host()
        cert = make_serving_cert(
            workdir / "certs", hosts=tuple(dict.fromkeys((host, "127.0.0.1", "localhost")))
        )
        # On a real cluster the apiserver must reach this machine; the emulator stays on loopback.
        async with Cluster.open(**cluster_options) as cluster:
            proxy = WebhookProxy("127.0.0.1" if cluster.is_emulator else "0.0.0.0")
            await proxy.start()
            harness = cls(cluster, workdir, cert, proxy)
            try:
                await harness._install_identity()
                await cluster.install_webhook(f"https://{host}:{proxy.port}", cert.ca_bundle)
                yield harness
            finally:
                # kill -9: the cluster is thrown away, and a graceful stop costs seconds per replica.
                await asyncio.gather(*(op.kill() for op in harness.operators))
                await proxy.close()
                if not cluster.is_emulator:
                    with contextlib.suppress(Exception):
                        await identity.delete_rbac(cluster, harness.rbac)

    async def install_sticky_webhook(self) -> None:
        """Also install the shipped MutatingWebhookConfiguration (sticky IPs), behind the same proxy."""
        host = webhook_host()
        await self.cluster.install_webhook(
            f"https://{host}:{self.proxy.port}", self.cert.ca_bundle, kind="MutatingWebhookConfiguration"
        )

    def add_operator(self, identity: str | None = None, **config: Any) -> OperatorProcess:
        """A replica (not started): own ports and config file, served behind the proxy."""
        identity = identity or f"capo-{len(self.operators)}"
        if not self.cluster.is_emulator:
            extra = dict(config.pop("extra", None) or {})
            extra.setdefault("ipReservationName", self.cluster.reservation_name)
            # The safety net watches pods cluster-wide: without this, a run's operators would reserve
            # the IPs of other workloads (or other runs) in namespaces labelled ip-reserve=enabled.
            extra.setdefault("namespaceSelector", self.cluster.run_namespace_selector())
            config["extra"] = extra
        op = OperatorProcess(
            workdir=self.workdir / "operators",
            identity=identity,
            kubeconfig=self.operator_kubeconfig,
            namespace=self.cluster.operator_namespace,
            cert_file=self.cert.cert_file,
            key_file=self.cert.key_file,
            webhook_port=free_port(),
            **config,
        )
        self.operators.append(op)
        self.proxy.backends.append(op.webhook_port)
        return op

    async def start_operators(self, count: int = 1, **config: Any) -> list[OperatorProcess]:
        """Start `count` replicas with the same config and wait until each is ready and one leads."""
        ops = [self.add_operator(**config) for _ in range(count)]
        for op in ops:
            op.start()
        await asyncio.gather(*(op.wait_ready() for op in ops))
        await self.wait_leader()
        return ops

    async def stop_all(self) -> None:
        """SIGTERM to every running replica at once (a graceful stop of the whole Deployment)."""
        await asyncio.gather(*(op.stop() for op in self.operators if op.running))

    async def wait_leader(self, within: float = 20) -> OperatorProcess:
        """The running replica that holds the Lease and says so in its metrics."""

        async def leader() -> OperatorProcess | None:
            holder = await self.cluster.lease_holder()
            for op in self.operators:
                if op.running and op.identity == holder:
                    m = await op.metrics()
                    if m.value("leader_election_master_status") == 1:
                        return op
            return None

        found = await eventually(
            leader, lambda op: op is not None, within=within, what="a leader", diagnostics=self.logs
        )
        assert found is not None
        return found

    async def metrics(self, op: OperatorProcess | None = None) -> Metrics:
        return await (op or self.operators[0]).metrics()

    async def total(self, name: str, /, **labels: str) -> float:
        """A counter summed over every running replica (each counts what it did itself)."""
        total = 0.0
        for op in self.operators:
            if op.running:
                total += (await op.metrics()).value(name, **labels)
        return total

    def logs(self, lines: int = 40) -> str:
        return "\n".join(op.log_tail(lines) for op in self.operators) or "(no operator was started)"

    # -- outcomes ---------------------------------------------------------------------------------

    async def wait_reserved(self, *ips: str, within: float = 10) -> dict[str, dict[str, Any]]:
        """Each IP is in the IPReservation and has its ReservedIP record; returns the records."""

        async def state() -> tuple[set[str], dict[str, dict[str, Any]]]:
            return await self.cluster.reserved_ips(), await self.cluster.records()

        _, records = await eventually(
            state,
            lambda s: all(ip in s[0] and ip in s[1] for ip in ips),
            within=within,
            what=f"IPs {list(ips)} to be reserved (IPReservation entry and ReservedIP record); "
            "value is (IPReservation IPs, records)",
            diagnostics=self.logs,
        )
        return {ip: records[ip] for ip in ips}

    async def wait_released(self, *ips: str, within: float = 15) -> None:
        async def state() -> tuple[set[str], set[str]]:
            return await self.cluster.reserved_ips(), set(await self.cluster.records())

        await eventually(
            state,
            lambda s: not any(ip in s[0] or ip in s[1] for ip in ips),
            within=within,
            what=f"IPs {list(ips)} to be released; value is (IPReservation IPs, record IPs)",
            diagnostics=self.logs,
        )

    async def wait_metric(
        self,
        name: str,
        expected: float,
        /,
        *,
        within: float = 10,
        op: OperatorProcess | None = None,
        **labels: str,
    ) -> None:
        """`name{labels}` reaches `expected` on `op` (default: summed over the running replicas)."""

        async def value() -> float:
            if op is not None:
                return (await op.metrics()).value(name, **labels)
            return await self.total(name, **labels)

        await eventually(
            value,
            lambda v: v == expected,
            within=within,
            what=f"metric {name}{labels or ''} == {expected}",
            diagnostics=self.logs,
        )
