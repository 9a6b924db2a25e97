"""The composition root: `assemble` builds every part of the operator and hands each exactly what it
needs; `run` does the start-up I/O (credentials, Calico, permission check, certificates), assembles
the parts, starts their loops and Kopf, and stops them in order."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import signal
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kopf
from kubernetes.aio import client as k8s
from kubernetes.aio import watch as k8s_watch

from capo_operator.config import Config, ConfigError, LiveConfig, parse_config
from capo_operator.decisions.record import GROUP, PLURAL, VERSION
from capo_operator.flows.admission import Admission
from capo_operator.flows.releaser import Releaser
from capo_operator.flows.reserver import Reserver
from capo_operator.flows.safety_net import SafetyNet
from capo_operator.flows.state import Leadership, RecentUIDs
from capo_operator.flows.sticky import StickyIPs
from capo_operator.flows.watchers import Watchers
from capo_operator.kube import KubeTransport, access
from capo_operator.kube.caches import Caches, Views
from capo_operator.kube.calico import CalicoStore, ReservationCache, detect_group
from capo_operator.kube.credentials import Credentials, CredentialsError, Source
from capo_operator.kube.events import EventRecorder, ObjectRef
from capo_operator.kube.leader import LeaseElector
from capo_operator.kube.ledger import NAME as LEDGER_NAME
from capo_operator.kube.ledger import Ledger
from capo_operator.kube.records import RecordStore
from capo_operator.kube.slim import CoreV1
from capo_operator.metrics import Metrics
from capo_operator.serving import probes, reviews
from capo_operator.serving.certs import BuiltinCertificates, ReloadingWebhookServer, certificate_expiry
from capo_operator.serving.handlers import Memo  # importing it registers the Kopf handlers
from capo_operator.serving.probes import Readiness

logger = logging.getLogger(__name__)

CONFIG_POLL_SECONDS = 2.0
CERT_SECRET_NAME = "capo-webhook-tls"


@dataclass(frozen=True)
class Options:
    """What the command line decided (not reloadable)."""

    config_path: Path
    namespace: str
    identity: str
    tls_cert_file: Path
    tls_key_file: Path
    certs: str  # "files" | "builtin"
    webhook_config_name: str
    webhook_service: str
    kubeconfig: str | None = None
    config_map: str | None = None  # the ConfigMap the config file is mounted from (watched directly)
    log_format: str = "json"
    log_level: str = "info"


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
        "namespaceSelector": (old.namespace_selector, new.namespace_selector),
    }
    return [name for name, (a, b) in fields.items() if a != b]


class ConfigReloader:
    """Applies new configuration text, from the file or from the ConfigMap, once per distinct
    content: whichever source shows an edit first applies it, the other then finds nothing new.
    A bad text is refused with a log line, an Event and a metric; the last good config stays."""

    def __init__(
        self,
        *,
        config: LiveConfig,
        metrics: Metrics,
        events: EventRecorder,
        about: ObjectRef,
        initial_text: str,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.events = events
        self.about = about  # the operator's own pod: where the reload Events go
        self._seen = _digest_text(initial_text)

    def offer(self, text: str, source: str) -> None:
        digest = _digest_text(text)
        if digest == self._seen:
            return
        self._seen = digest
        metrics = self.metrics
        try:
            new = parse_config(text)
        except ConfigError as exc:
            metrics.config_reloads.labels(result="failure").inc()
            metrics.config_last_reload_ok.set(0)
            logger.error("configuration reload from %s refused, keeping the last good one: %s", source, exc)
            self.events.post(self.about, "ConfigRejected", f"{source}: {exc}", warning=True)
            return
        stale = restart_needed(self.config.current, new)
        self.config.current = new
        metrics.config_reloads.labels(result="success").inc()
        metrics.config_last_reload_ok.set(1)
        metrics.reserve_count_max.set(new.ip_reserve_max_count)
        metrics.kept_holds_max.set(new.sticky.max_kept_holds)
        for warning in new.warnings:
            logger.warning("configuration: %s", warning)
        note = f" ({', '.join(stale)} apply after a restart)" if stale else ""
        logger.info("configuration reloaded from %s%s", source, note)
        self.events.post(self.about, "ConfigReloaded", f"configuration reloaded from {source}{note}")


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


def kopf_settings(
    config: Config, cert: Path, key: Path, shortcut: reviews.Shortcut | None = None
) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    # Reloads a renewed certificate in place: Kopf's own server restarts its listener on a change
    # and refuses connections for a moment.
    server = ReloadingWebhookServer(
        addr=None,  # every interface, IPv6 included (aiohttp's None)
        port=config.webhook_port,
        certfile=str(cert),
        pkeyfile=str(key),
        file_check_interval=10,
    )
    server.shortcut = shortcut  # a deletion's repeated reviews, answered before Kopf's dispatch
    settings.admission.server = server
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


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Operator:
    """Every part of one replica, as `assemble` built it. The live state that several parts share
    is a handful of small objects, each given explicitly to the parts that use it: `config` (the
    configuration in force after reloads), `leadership` (whether this replica leads), `recent` and
    `reserved_uids` (pods reserved by this replica's webhook, pods that had a record) and
    `manual_releases` (IPs whose records a person deleted)."""

    config: LiveConfig
    leadership: Leadership
    recent: RecentUIDs
    reserved_uids: RecentUIDs
    manual_releases: set[str]
    metrics: Metrics
    events: EventRecorder
    caches: Caches
    views: Views
    reserver: Reserver
    safety_net: SafetyNet
    admission: Admission
    watchers: Watchers
    sticky: StickyIPs
    releaser: Releaser
    reloader: ConfigReloader
    readiness: Readiness
    memo: Memo
    # reserveAhead (at start): this replica's watch of the IPReservation, which tells its webhook
    # that a pod's IPs are held already. None when reserveAhead was off at start.
    reservations: ReservationCache | None = None

    def leadership_changed(self, leading: bool, lease: str) -> None:
        self.leadership.leading = leading
        self.metrics.set_leader(lease, leading)
        if not leading:
            # The next leader finds the deleted records itself (their finalizer keeps them).
            self.manual_releases.clear()
        logger.info("leadership %s", "acquired" if leading else "lost")

    async def flush_records(self) -> None:
        """Records still on their way get a moment; what is left, the leader adopts from Calico."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.reserver.follower.flush(), 2)
        self.reserver.follower.stop()


def assemble(
    options: Options,
    config: Config,
    *,
    api: k8s.ApiClient,
    credentials: Credentials,
    calico: CalicoStore,
    records: RecordStore,
    events: EventRecorder,
    metrics: Metrics,
    caches: Caches,
    ledger: Ledger,
    config_text: str,
    clock: Callable[[], datetime] = _utc_now,
    reservations: ReservationCache | None = None,
) -> Operator:
    """Build every part and hand each what it needs; no I/O and no task is started here (the unit
    tests assemble the operator over in-memory stores). `config_text` is the text `config` was
    parsed from: the reloader applies only a text that differs."""
    live = LiveConfig(config)
    leadership = Leadership()
    recent = RecentUIDs()
    reserved_uids = RecentUIDs(ttl=86_400.0, max_size=100_000)
    manual_releases: set[str] = set()
    views = caches.views
    reserver = Reserver(
        calico=calico,
        records=records,
        events=events,
        metrics=metrics,
        config=live,
        clock=clock,
        reservations=reservations.snapshot if reservations is not None else None,
    )
    safety_net = SafetyNet(
        views=views,
        reserver=reserver,
        metrics=metrics,
        config=live,
        leadership=leadership,
        recent=recent,
        reserved_uids=reserved_uids,
    )
    admission = Admission(
        views=views,
        api=api,
        config=live,
        recent=recent,
        reserver=reserver,
        safety_net=safety_net,
        metrics=metrics,
        events=events,
    )
    watchers = Watchers(
        caches=caches,
        safety_net=safety_net,
        leadership=leadership,
        reserved_uids=reserved_uids,
        manual_releases=manual_releases,
    )
    sticky = StickyIPs(
        api=api, views=views, calico=calico, records=records, events=events, metrics=metrics, config=live
    )
    releaser = Releaser(
        api=api,
        views=views,
        calico=calico,
        records=records,
        reserver=reserver,
        sticky=sticky,
        events=events,
        metrics=metrics,
        config=live,
        manual_releases=manual_releases,
        ledger=ledger,
        clock=clock,
    )
    reloader = ConfigReloader(
        config=live,
        metrics=metrics,
        events=events,
        about=ObjectRef("Pod", options.identity, options.namespace),
        initial_text=config_text,
    )
    metrics.reserve_count_max.set(config.ip_reserve_max_count)
    metrics.kept_holds_max.set(config.sticky.max_kept_holds)
    metrics.watch_records(caches.records.store.values, lambda: live.current.metrics_ip_info_limit)
    metrics.watch_informers(caches.stats)
    return Operator(
        config=live,
        leadership=leadership,
        recent=recent,
        reserved_uids=reserved_uids,
        manual_releases=manual_releases,
        metrics=metrics,
        events=events,
        caches=caches,
        views=views,
        reserver=reserver,
        safety_net=safety_net,
        admission=admission,
        watchers=watchers,
        releaser=releaser,
        reloader=reloader,
        readiness=Readiness(caches.synced),
        sticky=sticky,
        memo=Memo(admission=admission, sticky=sticky, credentials=credentials),
        reservations=reservations,
    )


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


@dataclass(frozen=True)
class Connection:
    """What start-up learned from the API server before anything is assembled."""

    credentials: Credentials
    api: k8s.ApiClient
    calico: CalicoStore
    missing_permissions: list[access.Permission]


async def connect(
    options: Options, config: Config, metrics: Metrics, supervisor: Supervisor, calico: CalicoStore | None
) -> Connection:
    """Credentials, the API client, the Calico API group and object, the CRD and the permission
    check: everything that must hold before the parts are built. The client is closed by the
    supervisor, whatever happens later."""
    credentials = Credentials(Source(kubeconfig=options.kubeconfig))
    try:
        configuration = await credentials.load()
    except CredentialsError as exc:
        raise StartupError(str(exc)) from exc
    forbidden = access.ForbiddenLog(
        lambda verb, res: metrics.api_forbidden.labels(verb=verb, resource=res).inc()
    )
    api: k8s.ApiClient = access.ObservedApiClient(configuration, forbidden, credentials.relogin)
    supervisor.on_close(api.close)
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
    missing = await check_permissions(api, credentials, options, config, calico.group.value, metrics)
    return Connection(credentials=credentials, api=api, calico=calico, missing_permissions=missing)


class Supervisor:
    """The process's loops and servers. A loop that ends ends the process (they run for its life);
    `stop` closes everything in order: our loops first (the elector releases the Lease so a standby
    takes over at once), then Kopf (which would otherwise wait for them), then the flushes and
    the listeners, and the API client last."""

    def __init__(self) -> None:
        self.loops: list[asyncio.Task[Any]] = []
        self._one_shots: list[asyncio.Task[Any]] = []
        self._closers: list[Callable[[], Awaitable[object]]] = []
        self.kopf: asyncio.Task[None] | None = None
        self.stop_kopf = asyncio.Event()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        self.loops.append(asyncio.create_task(coro, name=name))

    def one_shot(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._one_shots.append(task)
        return task

    def on_close(self, closer: Callable[[], Awaitable[object]]) -> None:
        """Run at the end of `stop`, last registered first."""
        self._closers.append(closer)

    def kopf_alive(self) -> tuple[bool, str]:
        if self.kopf is not None and self.kopf.done():
            return False, "the Kopf operator stopped"
        return True, "ok"

    async def wait(self, shutdown: asyncio.Event) -> int:
        """Until a signal (0) or a loop's end (1 if it crashed)."""
        assert self.kopf is not None
        signalled = self.one_shot(shutdown.wait(), "shutdown-signal")
        done, _ = await asyncio.wait([self.kopf, signalled, *self.loops], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task in self.loops and not task.cancelled() and task.exception() is not None:
                logger.error("task %s crashed: %r", task.get_name(), task.exception())
                return 1
        if signalled in done:
            logger.info("stopping on signal")
        return 0

    async def stop(self) -> None:
        for task in [*reversed(self.loops), *self._one_shots]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.stop_kopf.set()
        if self.kopf is not None and not self.kopf.done():
            try:
                await asyncio.wait_for(self.kopf, 15)
            except (asyncio.CancelledError, Exception) as exc:
                logger.debug("Kopf stopped with %r", exc)
        for closer in reversed(self._closers):
            await closer()


async def webhook_certificates(
    options: Options, api: k8s.ApiClient, metrics: Metrics, supervisor: Supervisor
) -> tuple[Path, Path, BuiltinCertificates | None]:
    """The serving certificate: the files given, or the built-in one kept in a Secret and renewed."""
    if options.certs != "builtin":
        return options.tls_cert_file, options.tls_key_file, None
    builtin = BuiltinCertificates(
        api,
        namespace=options.namespace,
        secret_name=CERT_SECRET_NAME,
        service_name=options.webhook_service,
        webhook_config_name=options.webhook_config_name,
        cert_dir=options.tls_cert_file.parent,
        on_expiry=metrics.cert_expiry.set,
    )
    await builtin.prepare()
    supervisor.spawn(builtin.run(), "certificates")
    return builtin.cert_file, builtin.key_file, builtin


def start_leading(
    op: Operator, options: Options, config: Config, api: k8s.ApiClient, sup: Supervisor
) -> None:
    """The releaser runs only while this replica holds the Lease (or always, without election)."""
    election = config.leader_election
    lease_name = election.resource_name
    op.metrics.set_leader(lease_name, False)
    if not election.leader_elect:
        op.leadership_changed(True, lease_name)
        sup.spawn(op.releaser.lead(), "releaser")
        return
    elector = LeaseElector(
        api,
        namespace=election.resource_namespace or options.namespace,
        name=lease_name,
        identity=options.identity,
        lease_duration=election.lease_duration,
        renew_deadline=election.renew_deadline,
        retry_period=election.retry_period,
        on_change=lambda leading: op.leadership_changed(leading, lease_name),
    )
    sup.spawn(elector.run(op.releaser.lead), "leader-election")


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
    sup = Supervisor()
    noise = KopfShutdownNoise()
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(noise)
    try:
        conn = await connect(options, config, metrics, sup, calico)
        api = conn.api
        events = EventRecorder(api, host=options.identity, on_drop=metrics.events_dropped.inc)
        sup.on_close(events.drain)  # after the records' flush below: they may post Events
        try:
            config_text = options.config_path.read_text()
        except OSError:
            config_text = ""  # the file vanished since it was parsed: the next one read is applied
        op = assemble(
            options,
            config,
            api=api,
            credentials=conn.credentials,
            calico=conn.calico,
            records=records or RecordStore(api, reservation=conn.calico.name),
            events=events,
            metrics=metrics,
            caches=Caches(
                KubeTransport(api),
                reservation=conn.calico.name,
                namespace_selector=config.namespace_selector.query(),
            ),
            ledger=Ledger(api, namespace=options.namespace, name=LEDGER_NAME),
            config_text=config_text,
            # Every replica watches the one object, so that its webhook skips what is held already.
            reservations=conn.calico.cache() if config.reserve_ahead else None,
        )
        sup.on_close(op.flush_records)
        readiness = op.readiness
        readiness.missing_permissions = conn.missing_permissions

        cert_file, key_file, builtin = await webhook_certificates(options, api, metrics, sup)
        settings = kopf_settings(config, cert_file, key_file, shortcut=op.admission.repeated)
        webhook_server = settings.admission.server

        def ready() -> tuple[bool, str]:
            if builtin is not None:
                readiness.cert_ready = builtin.ready
            else:
                readiness.cert_ready = cert_loadable(cert_file, key_file)
                if readiness.cert_ready:
                    metrics.cert_expiry.set(certificate_expiry(cert_file))
            ok, why = readiness.check()
            if ok and not getattr(webhook_server, "serving", True):
                return False, "the webhook server is not listening yet"
            return ok, why

        for app, address in (
            (probes.probes_app(ready, sup.kopf_alive), config.health_probe_bind_address),
            (probes.metrics_app(metrics.registry), config.metrics_bind_address),
        ):
            sup.on_close((await probes.serve(app, address)).cleanup)
        sup.spawn(events.run(), "events")
        sup.spawn(conn.credentials.run(), "credentials")
        sup.spawn(op.caches.run(), "informers")
        sup.spawn(op.safety_net.run(), "safety-net")
        if op.reservations is not None:
            sup.spawn(op.reservations.run(), "ipreservation-watch")
        sup.spawn(watch_config_file(op.reloader, options.config_path), "config-file")
        if options.config_map:
            key = options.config_path.name
            sup.spawn(
                watch_config_map(op.reloader, api, options.namespace, options.config_map, key), "config-map"
            )
        start_leading(op, options, config, api, sup)

        kopf_started = asyncio.Event()  # Kopf raises it after its start-up (and its signal handlers)
        sup.kopf = asyncio.create_task(
            kopf.operator(
                registry=kopf.get_default_registry(),
                settings=settings,
                memo=op.memo,
                standalone=True,
                clusterwide=True,
                stop_flag=sup.stop_kopf,
                ready_flag=kopf_started,
            ),
            name="kopf",
        )
        sup.one_shot(take_over_signals(shutdown_requested, kopf_started), "signals")
        serving.set()
        return await sup.wait(shutdown_requested)
    finally:
        noise.stopping = True
        await sup.stop()
        for handler in handlers:
            handler.removeFilter(noise)
