"""`deepfake-processor` command line: run, demo, produce, broker, bench, models (flags mirror the DFP_* settings)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from models.errors import ModelError
from processor import logs
from processor.errors import ConfigError
from processor.settings import Settings, flag_name, is_secret_key, load_settings

log = logging.getLogger(__name__)
Handler = Callable[[argparse.Namespace], int]


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """One `--flag` per Settings field; unset flags fall through to DFP_* env vars and defaults."""
    group = parser.add_argument_group("settings (each also DFP_<NAME>)")
    for name, field in Settings.model_fields.items():
        if name == "kafka":
            continue
        extra: dict[str, Any] = {"nargs": "?", "const": "true"} if field.annotation is bool else {}
        group.add_argument(
            flag_name(name), dest=f"setting_{name}", default=None, metavar="VALUE", help=field.description, **extra
        )
    group.add_argument(
        "--kafka",
        dest="setting_kafka",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="librdkafka property passthrough, repeatable (also DFP_KAFKA_<KEY>)",
    )


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings from parsed flags on top of DFP_* env vars (ConfigError names the bad one)."""
    overrides: dict[str, Any] = {}
    for key, value in vars(args).items():
        if key.startswith("setting_") and value is not None:
            overrides[key.removeprefix("setting_")] = value
    if "kafka" in overrides:
        pairs = [kv.split("=", 1) for kv in overrides["kafka"]]
        if any(len(p) != 2 for p in pairs):
            raise ConfigError("invalid setting --kafka: expected KEY=VALUE")
        overrides["kafka"] = dict(pairs)
    return load_settings(overrides)


def _cmd_run(args: argparse.Namespace) -> int:
    from processor.app import run
    from processor.logs import setup_logging

    settings = settings_from(args)
    setup_logging(settings.log_level, settings.log_format.value)
    _warn_secret_flags(args)
    return run(settings)


def _warn_secret_flags(args: argparse.Namespace) -> None:
    """A credential in `--kafka KEY=VALUE` is visible to anyone who can list processes (ps, /proc/<pid>/cmdline)."""
    keys = sorted({kv.split("=", 1)[0] for kv in getattr(args, "setting_kafka", None) or []})
    secret = [key for key in keys if is_secret_key(key)]
    if secret:
        log.warning(
            "a --kafka flag carries a credential, visible to anyone who can list processes (ps); "
            "pass it as DFP_KAFKA_<KEY> from a secret instead",
            extra={"keys": secret},
        )


def _cmd_broker(args: argparse.Namespace) -> int:
    from devtools.broker import run_broker
    from processor.logs import setup_logging

    setup_logging("INFO", "text")
    return run_broker(args.port, args.host)


def build_parser() -> argparse.ArgumentParser:
    """The `deepfake-processor` parser with every subcommand this install offers."""
    parser = argparse.ArgumentParser(prog="deepfake-processor", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="the processor (settings from DFP_* env vars and flags)")
    add_settings_flags(run)
    run.set_defaults(handler=_cmd_run)
    broker = sub.add_parser("broker", help="run the embedded Kafka-protocol broker (Tansu) in the foreground")
    broker.add_argument("--port", type=int, default=9092)
    broker.add_argument("--host", default="127.0.0.1")
    broker.set_defaults(handler=_cmd_broker)
    for register in _optional_commands():
        register(sub)
    return parser


def _optional_commands() -> list[Callable[[Any], None]]:
    from devtools.demo import register as demo
    from devtools.produce import register as produce
    from schemas.cli import register as schemas

    registers: list[Callable[[Any], None]] = [demo, produce, schemas]
    try:
        from bench.cli import register as bench
        from bench.soak import register as soak

        registers += [bench, soak]
    except ImportError:
        pass
    try:
        from models.cli import register as models

        registers.append(models)
    except ImportError:
        pass
    return registers


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run one subcommand; a configuration error exits 2 with its message."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except (ConfigError, ModelError) as exc:
        if logs.configured():  # `run` set up logging (JSON by default): keep every line in its format
            log.error("configuration error: %s", exc, extra={"exit_code": 2})
        else:
            print(f"deepfake-processor: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
