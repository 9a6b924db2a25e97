"""Command line: `capo-operator run | check-config | version`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from capo_operator import __version__
from capo_operator.app import Options
from capo_operator.config import ConfigError, load_config

DEFAULT_CERT_DIR = "/tmp/k8s-webhook-server/serving-certs"


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="capo-operator",
        description="Keeps the IPs of deleted or evicted stateful pods reserved in Calico.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the operator (webhook, safety net, leader-elected releaser)")
    run.add_argument(
        "--config",
        default=_env("CAPO_CONFIG", "/etc/capo/capo_config.yaml"),
        help="CapoConfig file (env CAPO_CONFIG)",
    )
    run.add_argument(
        "--namespace",
        default=_env("POD_NAMESPACE", "capo-system"),
        help="the operator's namespace (env POD_NAMESPACE)",
    )
    run.add_argument(
        "--identity",
        default=_env("POD_NAME", socket.gethostname()),
        help="this replica's name in the Lease (env POD_NAME)",
    )
    run.add_argument(
        "--tls-cert-file",
        default=_env("CAPO_TLS_CERT_FILE", f"{DEFAULT_CERT_DIR}/tls.crt"),
        help="webhook serving certificate (env CAPO_TLS_CERT_FILE); reloaded when it changes",
    )
    run.add_argument(
        "--tls-key-file",
        default=_env("CAPO_TLS_KEY_FILE", f"{DEFAULT_CERT_DIR}/tls.key"),
        help="webhook serving key (env CAPO_TLS_KEY_FILE)",
    )
    run.add_argument(
        "--certs",
        choices=("files", "builtin"),
        default=_env("CAPO_CERTS", "files"),
        help="files: use the given files (cert-manager); builtin: create and rotate them "
        "in a Secret shared by all replicas (env CAPO_CERTS)",
    )
    run.add_argument(
        "--webhook-config-name",
        default=_env("CAPO_WEBHOOK_CONFIG_NAME", "capo-operator"),
        help="ValidatingWebhookConfiguration whose caBundle builtin certs patch",
    )
    run.add_argument(
        "--webhook-service",
        default=_env("CAPO_WEBHOOK_SERVICE", "capo-webhook"),
        help="Service name in the serving certificate (builtin certs)",
    )
    run.add_argument(
        "--config-map",
        default=os.environ.get("CAPO_CONFIG_MAP"),
        help="the ConfigMap (in --namespace) the config file is mounted from: watched so that an edit "
        "applies at once; its key is the file's name (env CAPO_CONFIG_MAP)",
    )
    run.add_argument(
        "--kubeconfig",
        default=os.environ.get("KUBECONFIG"),
        help="kubeconfig file (default: in-cluster, then ~/.kube/config)",
    )
    run.add_argument("--log-format", choices=("json", "text"), default=_env("CAPO_LOG_FORMAT", "json"))
    run.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error"), default=_env("CAPO_LOG_LEVEL", "info")
    )

    check = sub.add_parser("check-config", help="validate a CapoConfig file and print the effective values")
    check.add_argument("path")

    sub.add_parser("version", help="print the version")
    return parser


def configure_logging(fmt: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Kopf and aiohttp narrate every watch and request at INFO; keep them a notch quieter.
    for chatty in ("kopf", "aiohttp.access"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))


def _check_config(path: str) -> int:
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return 1
    from capo_operator.decisions.durations import format_duration

    print(f"{path}: valid")
    print(f"  ipReserveMaxCount: {config.ip_reserve_max_count}")
    print(f"  ipReserveTime: {format_duration(config.ip_reserve_time)}")
    print(f"  ipReleasePeriod: {format_duration(config.ip_release_period)}")
    print(f"  labelSelector: {config.label_selector.to_dict()}")
    for warning in config.warnings:
        print(f"  warning: {warning}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "version":
        print(f"capo-operator {__version__}")
        return 0
    if args.command == "check-config":
        return _check_config(args.path)
    if args.command != "run":
        parser.print_help()
        return 2

    # Until the event loop takes the signals over: a stop while importing is a clean exit too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"capo-operator: invalid configuration {args.config}: {exc}", file=sys.stderr)
        return 2
    options = Options(
        config_path=Path(args.config),
        namespace=args.namespace,
        identity=args.identity,
        tls_cert_file=Path(args.tls_cert_file),
        tls_key_file=Path(args.tls_key_file),
        certs=args.certs,
        webhook_config_name=args.webhook_config_name,
        webhook_service=args.webhook_service,
        kubeconfig=args.kubeconfig,
        config_map=args.config_map or None,
        log_format=args.log_format,
        log_level=args.log_level,
    )
    configure_logging(options.log_format, options.log_level)
    for warning in config.warnings:
        logging.getLogger("capo_operator").warning("configuration: %s", warning)

    from capo_operator.app import StartupError, run

    try:
        return asyncio.run(run(options, config))
    except StartupError as exc:
        logging.getLogger("capo_operator").error("cannot start: %s", exc)
        return 1
    except KeyboardInterrupt:
        return 130
