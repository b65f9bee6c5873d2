"""The ``edgeproxy`` command: serve, check-config, demo-origin, and the control commands (purge, stats, ...)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from edgeproxy import __version__
from edgeproxy.config import Config, ConfigError, SiteConfig, config_from_dict, load_config, parse_address, to_dict
from edgeproxy.control.cli import add_subcommands

DEFAULT_LISTEN = "127.0.0.1:8080"


def _config_for_serve(args: argparse.Namespace) -> Config:
    """The config file if given, with --listen/--origin/--control/--parser/--workers overriding it."""
    config = load_config(args.config) if args.config else config_from_dict({}, "<flags>")
    import dataclasses

    if args.listen:
        try:
            listen = tuple(parse_address(a) for a in args.listen)
        except ValueError as e:
            raise ConfigError("--listen", str(e), "<flags>") from None
        config = dataclasses.replace(config, server=dataclasses.replace(config.server, listen=listen))
    if args.origin:
        try:
            site = config_from_dict({"site": [{"origin": args.origin}]}, "<flags>").sites[0]
        except ConfigError as e:
            raise ConfigError("--origin", e.reason, "<flags>") from None
        config = dataclasses.replace(config, sites=(site,))
    if args.control:
        config = dataclasses.replace(config, server=dataclasses.replace(config.server, control_socket=args.control))
    if args.parser:
        config = dataclasses.replace(config, server=dataclasses.replace(config.server, parser=args.parser))
    if args.workers:
        config = dataclasses.replace(config, server=dataclasses.replace(config.server, workers=args.workers))
    return config


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        config = _config_for_serve(args)
    except ConfigError as e:
        print(f"edgeproxy: {e}", file=sys.stderr)
        return 2
    _setup_logging(config.log.level)
    import uvloop

    async def main() -> int:
        nonlocal config
        if not config.sites:
            config = await _with_demo_origin(config)
        return await _serve(config, args.config)

    return uvloop.run(main())


async def _serve(config: Config, config_path: str | None) -> int:
    """The process's role: with ``workers > 1`` a supervisor whose backend is the worker pool, else the cache here.
    Either way one Node faces the operator."""
    from edgeproxy import fdlimit
    from edgeproxy.node import Backend, Node, run

    shortfall = fdlimit.shortfall(config, fdlimit.raise_soft_limit())  # workers inherit the raised limit
    if shortfall:
        logging.getLogger("edgeproxy").warning("%s", shortfall)
    backend: Backend
    try:  # either may open the host's shared store: a path in use or not writable stops here, with the reason
        if config.server.workers > 1:
            from edgeproxy.supervisor import WorkerPool

            backend = WorkerPool(config, config_path)
        else:
            from edgeproxy.local import LocalEdge

            backend = LocalEdge(config)
    except OSError as e:
        logging.getLogger("edgeproxy").error("cannot start: %s", e)
        return 1
    return await run(Node(config, config_path, backend))


async def _with_demo_origin(config: Config) -> Config:
    """No origin given: start the embedded demo origin on a free loopback port and put it behind the proxy."""
    import dataclasses

    from edgeproxy.demo_origin import serve_demo_origin

    server = await serve_demo_origin("127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    logging.getLogger("edgeproxy").info("no origin configured: embedded demo origin on http://127.0.0.1:%d", port)
    return dataclasses.replace(config, sites=(SiteConfig(origin=f"http://127.0.0.1:{port}"),))


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
    except ConfigError as e:
        print(f"edgeproxy: {e}", file=sys.stderr)
        return 2
    print(json.dumps(to_dict(config), indent=2, default=str))
    print(f"edgeproxy: {args.file}: OK", file=sys.stderr)
    return 0


def cmd_demo_origin(args: argparse.Namespace) -> int:
    from edgeproxy.demo_origin import run

    try:
        host, port = parse_address(args.listen)
    except ValueError as e:
        print(f"edgeproxy: --listen: {e}", file=sys.stderr)
        return 2
    run(host, port)
    return 0


def _workers_flag(value: str) -> int:
    try:
        return config_from_dict({"server": {"workers": value if value == "auto" else int(value)}}).server.workers
    except (ValueError, ConfigError) as e:
        raise argparse.ArgumentTypeError(str(getattr(e, "reason", e))) from None


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgeproxy", description="A caching CDN edge node.")
    parser.add_argument("--version", action="version", version=f"edgeproxy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the proxy", description="Run the proxy. With no --config and no "
                           "--origin it serves the embedded demo origin on 127.0.0.1:8080.")
    serve.add_argument("--config", metavar="FILE", help="TOML config file")
    serve.add_argument("--listen", metavar="HOST:PORT", action="append",
                       help=f"listen address (repeatable; default {DEFAULT_LISTEN})")
    serve.add_argument("--origin", metavar="URL", help="origin URL for the one-site case, e.g. http://127.0.0.1:9000")
    serve.add_argument("--control", metavar="PATH",
                       help="control socket path (overrides [server] control_socket), so that two instances on "
                            "one machine need no config file each")
    serve.add_argument("--parser", choices=("h11", "httptools"),
                       help="HTTP parser backend (client side; the origin side follows unless [origin] parser is set)")
    serve.add_argument("--workers", metavar="N", type=_workers_flag,
                       help="worker processes, or 'auto' for one per CPU (overrides [server] workers)")
    serve.set_defaults(func=cmd_serve)
    check = sub.add_parser("check-config", help="validate a config file and print the effective config")
    check.add_argument("file", metavar="FILE")
    check.set_defaults(func=cmd_check_config)
    demo = sub.add_parser("demo-origin", help="run the embedded demo origin on its own")
    demo.add_argument("--listen", metavar="HOST:PORT", default="127.0.0.1:9000")
    demo.set_defaults(func=cmd_demo_origin)
    add_subcommands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
