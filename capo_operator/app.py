"""Process wiring: the Kopf operator plus the loops around it (election, probes, config reload)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import signal
import ssl
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import kopf
from aiohttp import web
from kubernetes.aio import client as k8s
from kubernetes.aio import watch as k8s_watch

from capo_operator.config import Config, ConfigError, parse_config
from capo_operator.flows.releaser import Releaser
from capo_operator.flows.reserver import Reserver
from capo_operator.flows.safety_net import SafetyNet
from capo_operator.flows.watchers import Watchers
from capo_operator.kube import KubeTransport, access
from capo_operator.kube.calico import CalicoStore, detect_group
from capo_operator.kube.credentials import Credentials, CredentialsError, Source
from capo_operator.kube.events import EventRecorder, ObjectRef
from capo_operator.kube.leader import LeaseElector
from capo_operator.kube.ledger import NAME as LEDGER_NAME
from capo_operator.kube.ledger import Ledger
from capo_operator.kube.records import GROUP, PLURAL, VERSION, RecordStore
from capo_operator.kube.slim import CoreV1
from capo_operator.runtime import Options, Runtime, Views
from capo_operator.serving import handlers as _handlers  # noqa: F401  (registers the Kopf handlers)
from capo_operator.serving import probes
from capo_operator.serving.certs import BuiltinCertificates, ReloadingWebhookServer, certificate_expiry
from capo_operator.serving.metrics import Metrics

logger = logging.getLogger(__name__)

CONFIG_POLL_SECONDS = 2.0
CERT_SECRET_NAME = "capo-webhook-tls"


class StartupError(Exception):
    """The operator cannot start; the message says what to fix."""


async def require_records_crd(api: k8s.ApiClient) -> None:
    try:
        resources = await k8s.CustomObjectsApi(api).get_api_resources(GROUP, VERSION)
    except k8s.ApiException as exc:
        raise StartupError(
            f"the ReservedIP CRD ({PLURAL}.{GROUP}) is not installed: apply manifests/crd first "
            f"(HTTP {exc.status})"
        ) from exc
    if not any(r.name == PLURAL for r in resources.resources):
        raise StartupError(
            f"the API group {GROUP}/{VERSION} does not serve {PLURAL}: apply manifests/crd first"
        )


def cert_loadable(cert: Path, key: Path) -> bool:
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (OSError, ssl.SSLError):
        return False
    return True


def restart_needed(old: Config, new: Config) -> list[str]:
    """Settings read once at start: a reload records them but they apply after a restart."""
    fields = {
        "webhook.port": (old.webhook_port, new.webhook_port),
        "metrics.bindAddress": (old.metrics_bind_address, new.metrics_bind_address),
        "health.healthProbeBindAddress": (old.health_probe_bind_address, new.health_probe_bind_address),
        "leaderElection": (old.leader_election, new.leader_election),
        "ipReservationName": (old.ip_reservation_name, new.ip_reservation_name),
        "calicoAPIGroup": (old.calico_api_group, new.calico_api_group),
    }
    return [name for name, (a, b) in fields.items() if a != b]


class ConfigReloader:
    """Applies new configuration text, from the file or from the ConfigMap, once per distinct
    content: whichever source shows an edit first applies it, the other then finds nothing new.
    A bad text is refused with a log line, an Event and a metric; the last good config stays."""

    def __init__(self, rt: Runtime, initial_text: str) -> None:
        self.rt = rt
        self._seen = _digest_text(initial_text)

    def offer(self, text: str, source: str) -> None:
        digest = _digest_text(text)
        if digest == self._seen:
            return
        self._seen = digest
        rt = self.rt
        pod = ObjectRef("Pod", rt.options.identity, rt.options.namespace)
        try:
            new = parse_config(text)
        except ConfigError as exc:
            rt.metrics.config_reloads.labels(result="failure").inc()
            rt.metrics.config_last_reload_ok.set(0)
            logger.error("configuration reload from %s refused, keeping the last good one: %s", source, exc)
            rt.events.post(pod, "ConfigRejected", f"{source}: {exc}", warning=True)
            return
        stale = restart_needed(rt.config, new)
        rt.config = new
        rt.metrics.config_reloads.labels(result="success").inc()
        rt.metrics.config_last_reload_ok.set(1)
        rt.metrics.reserve_count_max.set(new.ip_reserve_max_count)
        for warning in new.warnings:
            logger.warning("configuration: %s", warning)
        note = f" ({', '.join(stale)} apply after a restart)" if stale else ""
        logger.info("configuration reloaded from %s%s", source, note)
        rt.events.post(pod, "ConfigReloaded", f"configuration reloaded from {source}{note}")


async def watch_config_file(reloader: ConfigReloader, path: Path) -> None:
    """Poll the file: a mounted ConfigMap is swapped in by the kubelet (within about a minute)."""
    while True:
        await asyncio.sleep(CONFIG_POLL_SECONDS)
        try:
            text = path.read_text()
        except OSError:
            continue  # mid-swap, or gone for a moment: the last good config stays
        reloader.offer(text, str(path))


async def watch_config_map(
    reloader: ConfigReloader, api: k8s.ApiClient, namespace: str, name: str, key: str
) -> None:
    """Watch the one ConfigMap the file is mounted from, so an edit applies at once."""
    core = CoreV1(api)
    source = f"ConfigMap {namespace}/{name} key {key}"
    while True:
        stream = k8s_watch.Watch()
        try:
            async for event in stream.stream(
                core.list_namespaced_config_map,
                namespace,
                field_selector=f"metadata.name={name}",
                timeout_seconds=300,
            ):
                if event["type"] in ("ADDED", "MODIFIED"):
                    text = (event["raw_object"].get("data") or {}).get(key)
                    if text is None:
                        logger.warning("%s is missing; keeping the current configuration", source)
                    else:
                        reloader.offer(text, source)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("watching %s failed (retrying): %s", source, exc)
            await asyncio.sleep(CONFIG_POLL_SECONDS)
        finally:
            with contextlib.suppress(Exception):
                await stream.close()


def _digest_text(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


async def take_over_signals(shutdown: asyncio.Event, kopf_started: asyncio.Event) -> None:
    """Kopf installs its own signal handlers as it starts (they stop Kopf first, which then waits up
    to 5 s for every task in the loop, so the Lease would be released late). As soon as Kopf has
    started, ours replace them: the process stops its own loops first and then Kopf, via its stop
    flag. Before that, `run()`'s own handlers cancel the start."""
    await kopf_started.wait()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread
            loop.add_signal_handler(sig, shutdown.set)


class KopfShutdownNoise(logging.Filter):
    """Once the process stops, Kopf closes its HTTP session while some of its own requests (API
    discovery, a watch being opened) are still in flight, and logs each as an ERROR it will retry.
    Those are the stop itself, not faults: they are dropped, and only while stopping."""

    _MARKS = ("Connector is closed", "TCP closed", "Session is closed", "SSL closed")

    def __init__(self) -> None:
        super().__init__()
        self.stopping = False

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.stopping or not record.name.startswith("kopf."):
            return True
        message = record.getMessage()
        return not any(mark in message for mark in self._MARKS)


def kopf_settings(config: Config, cert: Path, key: Path) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    # Reloads a renewed certificate in place: Kopf's own server restarts its listener on a change
    # and refuses connections for a moment.
    settings.admission.server = ReloadingWebhookServer(
        addr=None,  # every interface, IPv6 included (aiohttp's None)
        port=config.webhook_port,
        certfile=str(cert),
        pkeyfile=str(key),
        file_check_interval=10,
    )
    settings.admission.managed = None  # the webhook configuration ships with the manifests
    settings.posting.enabled = False  # our own Events say more than Kopf's per-handler ones
    # Kopf only serves admission (the caches are our informers): it needs the resources found at
    # start-up, not a watch on CustomResourceDefinitions for ones that appear later.
    settings.scanning.disabled = True
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 30
    settings.networking.connect_timeout = 10
    return settings


async def check_permissions(
    api: k8s.ApiClient,
    credentials: Credentials,
    options: Options,
    config: Config,
    calico_group: str,
    metrics: Metrics,
) -> list[access.Permission]:
    """Ask the API server which of the permissions the operator uses it lacks, and say so loudly."""
    election = config.leader_election
    names = access.Names(
        namespace=options.namespace,
        calico_group=calico_group,
        ip_reservation=config.ip_reservation_name,
        lease=election.resource_name,
        lease_namespace=election.resource_namespace or options.namespace,
        ledger=LEDGER_NAME,
        config_map=options.config_map,
        builtin_certs=options.certs == "builtin",
        cert_secret=CERT_SECRET_NAME,
        webhook_config=options.webhook_config_name,
    )
    gaps = await access.missing(api, access.required(names)) or []
    access.report_missing(gaps, credentials.subject())
    for critical in (True, False):
        count = sum(1 for p in gaps if p.critical is critical)
        metrics.missing_permissions.labels(critical=str(critical).lower()).set(count)
    if not gaps:
        logger.info("permission check: every permission the operator uses is granted")
    return gaps


async def run(
    options: Options,
    config: Config,
    *,
    calico: CalicoStore | None = None,
    records: RecordStore | None = None,
) -> int:
    """Run until SIGTERM/SIGINT or a crashed loop. `calico`/`records` replace the real stores (the
    webhook benchmark uses in-memory ones). A signal at any moment ends the process cleanly: during
    start-up it cancels the start (everything opened so far is closed), afterwards it stops our
    loops first and Kopf last."""
    shutdown = asyncio.Event()
    serving = asyncio.Event()  # set once the main loop runs: from then on a signal is a stop request
    main = asyncio.create_task(_run(options, config, shutdown, serving, calico=calico, records=records))

    def on_signal() -> None:
        shutdown.set()
        if not serving.is_set() and not main.cancelling():  # a second signal must not cut the clean-up
            main.cancel()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread
            loop.add_signal_handler(sig, on_signal)
    try:
        return await main
    except asyncio.CancelledError:
        if not shutdown.is_set():
            raise
        logger.info("stopped on signal during start-up")
        return 0


async def _run(
    options: Options,
    config: Config,
    shutdown_requested: asyncio.Event,
    serving: asyncio.Event,
    *,
    calico: CalicoStore | None = None,
    records: RecordStore | None = None,
) -> int:
    metrics = Metrics()
    credentials = Credentials(Source(kubeconfig=options.kubeconfig))
    try:
        configuration = await credentials.load()
    except CredentialsError as exc:
        raise StartupError(str(exc)) from exc
    forbidden = access.ForbiddenLog(
        lambda verb, res: metrics.api_forbidden.labels(verb=verb, resource=res).inc()
    )
    api: k8s.ApiClient = access.ObservedApiClient(configuration, forbidden, credentials.relogin)
    tasks: list[asyncio.Task[Any]] = []  # loops that run for the process's life: one ending is fatal
    one_shots: list[asyncio.Task[Any]] = []
    runners: list[web.AppRunner] = []
    events: EventRecorder | None = None
    reserver: Reserver | None = None
    operator_task: asyncio.Task[None] | None = None
    stop_kopf = asyncio.Event()
    noise = KopfShutdownNoise()
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(noise)
    try:
        try:
            if calico is None:
                group = await detect_group(api, config.calico_api_group)
                calico = CalicoStore(api, name=config.ip_reservation_name, group=group)
                await calico.ensure()
            await require_records_crd(api)
        except StartupError:
            raise
        except Exception as exc:
            raise StartupError(f"cannot reach the Calico IPReservation API: {exc}") from exc
        logger.info(
            "writing reservations to %s/%s IPReservation %s",
            calico.group.value,
            calico.group.version,
            calico.name,
        )

        missing_permissions = await check_permissions(
            api, credentials, options, config, calico.group.value, metrics
        )
        metrics.reserve_count_max.set(config.ip_reserve_max_count)
        events = EventRecorder(api, host=options.identity, on_drop=metrics.events_dropped.inc)
        records = records or RecordStore(api, reservation=calico.name)
        views = Views()
        holder: dict[str, Runtime] = {}
        reserver = Reserver(
            calico=calico,
            records=records,
            events=events,
            metrics=metrics,
            config=lambda: holder["rt"].config,
        )
        safety_net = SafetyNet(
            views=views,
            reserver=reserver,
            metrics=metrics,
            leading=lambda: holder["rt"].leading,
            # A record was seen for it, or this replica's webhook wrote its IPs (records follow).
            reserved_before=lambda uid: uid in holder["rt"].reserved_uids or uid in holder["rt"].recent,
        )
        rt = Runtime(
            options=options,
            config=config,
            metrics=metrics,
            api=api,
            credentials=credentials,
            calico=calico,
            records=records,
            events=events,
            reserver=reserver,
            safety_net=safety_net,
            views=views,
            shutdown=shutdown_requested,
        )
        rt.missing_permissions = missing_permissions
        holder["rt"] = rt
        watchers = Watchers(rt, KubeTransport(api))
        metrics.watch_records(watchers.records.store.values, lambda: rt.config.metrics_ip_info_limit)
        metrics.watch_informers(watchers.stats)

        def spawn(coro: Coroutine[Any, Any, Any], name: str) -> None:
            tasks.append(asyncio.create_task(coro, name=name))

        cert_file, key_file = options.tls_cert_file, options.tls_key_file
        builtin = None
        if options.certs == "builtin":
            builtin = BuiltinCertificates(
                api,
                namespace=options.namespace,
                secret_name=CERT_SECRET_NAME,
                service_name=options.webhook_service,
                webhook_config_name=options.webhook_config_name,
                cert_dir=cert_file.parent,
                on_expiry=metrics.cert_expiry.set,
            )
            await builtin.prepare()
            cert_file, key_file = builtin.cert_file, builtin.key_file
            spawn(builtin.run(), "certificates")

        settings = kopf_settings(config, cert_file, key_file)
        webhook_server = settings.admission.server

        def ready() -> tuple[bool, str]:
            if builtin is not None:
                rt.cert_ready = builtin.ready
            else:
                rt.cert_ready = cert_loadable(cert_file, key_file)
                if rt.cert_ready:
                    metrics.cert_expiry.set(certificate_expiry(cert_file))
            ok, why = rt.ready
            if ok and not getattr(webhook_server, "serving", True):
                return False, "the webhook server is not listening yet"
            return ok, why

        def alive() -> tuple[bool, str]:
            if operator_task is not None and operator_task.done():
                return False, "the Kopf operator stopped"
            return True, "ok"

        runners.append(await probes.serve(probes.probes_app(ready, alive), config.health_probe_bind_address))
        runners.append(await probes.serve(probes.metrics_app(metrics.registry), config.metrics_bind_address))
        spawn(events.run(), "events")
        spawn(credentials.run(), "credentials")
        spawn(watchers.run(), "informers")
        spawn(safety_net.run(lambda: rt.config), "safety-net")
        try:
            loaded_text = options.config_path.read_text()
        except OSError:
            loaded_text = ""  # the file vanished since it was parsed: the next one read is applied
        reloader = ConfigReloader(rt, loaded_text)
        spawn(watch_config_file(reloader, options.config_path), "config-file")
        if options.config_map:
            key = options.config_path.name
            spawn(watch_config_map(reloader, api, options.namespace, options.config_map, key), "config-map")

        election = config.leader_election
        lease_name = election.resource_name
        releaser = Releaser(rt, Ledger(api, namespace=options.namespace, name=LEDGER_NAME))

        def on_leader_change(leading: bool) -> None:
            rt.leading = leading
            metrics.set_leader(lease_name, leading)
            if not leading:
                rt.manual_releases.clear()
            logger.info("leadership %s", "acquired" if leading else "lost")

        metrics.set_leader(lease_name, False)
        if election.leader_elect:
            elector = LeaseElector(
                api,
                namespace=election.resource_namespace or options.namespace,
                name=lease_name,
                identity=options.identity,
                lease_duration=election.lease_duration,
                renew_deadline=election.renew_deadline,
                retry_period=election.retry_period,
                on_change=on_leader_change,
            )
            spawn(elector.run(releaser.lead), "leader-election")
        else:
            on_leader_change(True)
            spawn(releaser.lead(), "releaser")

        kopf_started = asyncio.Event()  # Kopf raises it after its start-up (and its signal handlers)
        operator_task = asyncio.create_task(
            kopf.operator(
                registry=kopf.get_default_registry(),
                settings=settings,
                memo=rt,
                standalone=True,
                clusterwide=True,
                stop_flag=stop_kopf,
                ready_flag=kopf_started,
            ),
            name="kopf",
        )
        one_shots.append(asyncio.create_task(take_over_signals(rt.shutdown, kopf_started), name="signals"))
        shutdown = asyncio.create_task(rt.shutdown.wait(), name="shutdown-signal")
        one_shots.append(shutdown)
        serving.set()
        done, _ = await asyncio.wait([operator_task, shutdown, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task in tasks and not task.cancelled() and task.exception() is not None:
                logger.error("task %s crashed: %r", task.get_name(), task.exception())
                return 1
        if shutdown in done:
            logger.info("stopping on signal")
        return 0
    finally:
        noise.stopping = True
        # Our loops go first (the elector releases the Lease so a standby takes over at once),
        # then Kopf, which would otherwise wait for them.
        for task in [*reversed(tasks), *one_shots]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        stop_kopf.set()
        if operator_task is not None and not operator_task.done():
            try:
                await asyncio.wait_for(operator_task, 15)
            except (asyncio.CancelledError, Exception) as exc:
                logger.debug("Kopf stopped with %r", exc)
        if reserver is not None:
            # Records still on their way get a moment; what is left, the leader adopts from Calico.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(reserver.follower.flush(), 2)
            reserver.follower.stop()
        if events is not None:
            with contextlib.suppress(Exception):
                await events.drain()
        for runner in runners:
            await runner.cleanup()
        await api.close()
        for handler in handlers:
            handler.removeFilter(noise)
