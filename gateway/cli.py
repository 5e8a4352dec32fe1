"""The `pvgate` command line."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from collections.abc import Sequence

import orjson

from gateway.server import serve
from gateway.settings import load_settings
from metering import BalanceStore, MeterError
from metering.config import ConfigError
from metering.connection import RedisSettings


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pvgate", description="Page-view metering gateway.")
    commands = parser.add_subparsers(dest="command", required=True)
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
    except (MeterError, ValueError) as exc:
        print(f"pvgate {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
