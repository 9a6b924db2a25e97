"""Assembles the emulator: storage, verbs, admission, allocator, kubelet, controllers and HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from . import control, rbac, tls
from .admission import Admission, ServiceMap
from .allocator import Allocator
from .apiserver import ApiServer, check_write_latency
from .auth import Auth
from .context import RequestContext, UserInfo
from .controllers import Controllers
from .faults import Faults
from .http_api import Api
from .kubelet import Kubelet
from .podgc import PodGC
from .resources import Registry, builtin_types
from .store import Store

log = logging.getLogger("kube_emulator")

CALICO_DIR = Path(__file__).resolve().parent.parent / "third_party" / "calico"
CALICO_VARIANTS = ("latest", "v3.32.1", "v3.31")
CALICO_MODES = ("crd", "v3", "both", "none")


@dataclass
class Options:
    host: str = "127.0.0.1"
    port: int = 0
    pod_cidr: str = "10.244.0.0/24"
    pod_cidr_v6: str | None = None
    calico: str = "crd"
    calico_variant: str = "latest"
    nodes: int = 3
    kubelet_delay: float = 0.3
    watch_history: int = 2000
    bookmark_interval: float = 5.0
    kubeconfig_out: str | None = None
    log_level: str = "info"
    # kube-controller-manager's PodGC quarantine for pods bound to a missing Node (real: 40 s).
    podgc_orphan_delay: float = 40.0
    write_latency: float = 0.0  # seconds each write waits for its "etcd commit"; see ApiServer


def calico_crd_files(mode: str, variant: str) -> list[Path]:
    if mode not in CALICO_MODES:
        raise ValueError(f"calico must be one of {CALICO_MODES}")
    if variant not in CALICO_VARIANTS:
        raise ValueError(f"calico_variant must be one of {CALICO_VARIANTS}")
    files = []
    if mode in ("crd", "both"):
        if variant == "latest":
            files.append(CALICO_DIR / "crd.projectcalico.org_ipreservations.yaml")
        else:
            files.append(CALICO_DIR / "variants" / f"{variant}_crd.projectcalico.org_ipreservations.yaml")
        files.append(CALICO_DIR / "crd.projectcalico.org_ippools.yaml")
    if mode in ("v3", "both"):
        files.append(CALICO_DIR / "projectcalico.org_ipreservations.yaml")
    return files


class Cluster:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.registry = Registry()
        self.store = Store(options.watch_history)
        for rt in builtin_types():
            self.registry.add(rt)
            self.store.bucket(rt.key)
        self.faults = Faults()
        self.services = ServiceMap()
        self.admission = Admission(self.store, self.faults, self.services)
        self.api = ApiServer(self.registry, self.store, self.admission)
        self.api.write_latency = check_write_latency(options.write_latency)
        cidrs = [options.pod_cidr] + ([options.pod_cidr_v6] if options.pod_cidr_v6 else [])
        self.allocator = Allocator(self.store, cidrs)
        self.kubelet = Kubelet(self)
        self.controllers = Controllers(self)
        self.podgc = PodGC(self)
        self.store.listeners.append(self.kubelet.on_event)
        self.store.listeners.append(self.controllers.on_event)
        self.store.listeners.append(self.podgc.on_event)
        self.auth = Auth(self)
        # Create-only resources answered by code, never stored: (storage key, subresource) -> handler.
        self.virtual: dict[tuple[tuple[str, str], str], Any] = {
            (("", "serviceaccounts"), "token"): self.auth.token_request,
            (("authorization.k8s.io", "selfsubjectaccessreviews"), ""): self.auth.self_subject_access_review,
            (("authentication.k8s.io", "selfsubjectreviews"), ""): self.auth.self_subject_review,
        }
        self.http = Api(self)

    async def seed(self) -> None:
        # The real server seeds as its loopback identity, in system:masters.
        ctx = RequestContext(user=UserInfo("system:apiserver", (rbac.MASTERS, "system:authenticated")))
        ns_rt = self.registry.get("", "v1", "namespaces")
        node_rt = self.registry.get("", "v1", "nodes")
        crd_rt = self.registry.get("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        assert ns_rt and node_rt and crd_rt
        for name in ("default", "kube-system", "kube-public", "kube-node-lease"):
            await self.api.create(ns_rt, None, {"metadata": {"name": name}}, ctx)
        for plural, obj in rbac.bootstrap_objects():
            rt = self.registry.get(rbac.GROUP, "v1", plural)
            assert rt is not None
            await self.api.create(rt, None, obj, ctx)
        for i in range(1, self.options.nodes + 1):
            name = f"node-{i}"
            node = _node(name, i)
            created = await self.api.create(node_rt, None, node, ctx)
            # Status is dropped on create (status subresource); the kubelet would report it.
            await self.api.update(node_rt, None, name, {**created, "status": node["status"]}, ctx, "status")
        for path in calico_crd_files(self.options.calico, self.options.calico_variant):
            with path.open() as fh:
                crd = yaml.safe_load(fh)
            await self.api.create(crd_rt, None, crd, ctx)

    async def stop(self) -> None:
        self.http.close_all_watches()
        await self.kubelet.stop()
        await self.controllers.stop()
        await self.podgc.stop()
        await self.admission.close()


def _node(name: str, index: int) -> dict[str, Any]:
    ip = f"172.18.0.{index + 1}"
    return {
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
            },
        },
        "spec": {"podCIDR": f"10.244.{index}.0/24"},
        "status": {
            "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "kubelet is posting ready status",
                }
            ],
            # Every field the API marks required (typed clients refuse a node without them).
            "nodeInfo": {
                "machineID": f"{index:032x}",
                "systemUUID": f"00000000-0000-0000-0000-{index:012x}",
                "bootID": f"00000000-0000-0000-0001-{index:012x}",
                "kernelVersion": "6.8.0-kube-emulator",
                "osImage": "Kube Emulator",
                "containerRuntimeVersion": "containerd://2.1.0",
                "kubeletVersion": "v1.36.0-kube-emulator",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        },
    }


class EmulatorServer:
    """The whole emulator listening on HTTPS; ``start()`` returns once it serves requests.

    ``kubeconfig_path`` is the admin kubeconfig (client certificate of ``kube-emulator-admin`` in
    ``system:masters``), for test set-up; ``pki`` holds the CA and that certificate as files too.
    """

    def __init__(self, options: Options) -> None:
        self.options = options
        self.cluster = Cluster(options)
        self.url = ""
        self.kubeconfig_path = ""
        self._tmpdir = tempfile.TemporaryDirectory(prefix="kube-emulator-")
        self.pki = tls.Pki(Path(self._tmpdir.name) / "pki")
        self._runner: web.AppRunner | None = None

    def make_app(self) -> web.Application:
        app = web.Application(
            middlewares=[self.cluster.auth.middleware, self.cluster.http.middleware],
            client_max_size=64 * 1024 * 1024,
        )
        control.add_routes(app, self.cluster)
        app.router.add_route("*", "/{tail:.*}", self.cluster.http.handle)
        return app

    async def start(self) -> str:
        await self.cluster.seed()
        self._runner = web.AppRunner(self.make_app(), handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self.options.host, self.options.port, ssl_context=self.pki.server_context()
        )
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        port = sockets[0].getsockname()[1]
        host = self.options.host
        self.url = f"https://{'[' + host + ']' if ':' in host else host}:{port}"
        path = self.options.kubeconfig_out or os.path.join(self._tmpdir.name, "kubeconfig")
        admin = tls.kubeconfig(self.url, self.pki.ca_pem, tls.cert_user(self.pki.admin))
        Path(path).touch(mode=0o600)
        Path(path).write_text(yaml.safe_dump(admin))
        self.kubeconfig_path = path
        log.info("kube emulator serving at %s (kubeconfig %s)", self.url, path)
        return self.url

    def ready_line(self) -> str:
        return json.dumps({"url": self.url, "kubeconfig": self.kubeconfig_path, "ca": str(self.pki.ca_file)})

    async def stop(self) -> None:
        await self.cluster.stop()
        if self._runner is not None:
            await asyncio.wait_for(self._runner.cleanup(), 5)
            self._runner = None
        self._tmpdir.cleanup()
