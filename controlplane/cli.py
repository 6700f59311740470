"""``byteor-controlplane``: serve the API, migrate the schema, bootstrap the first owner."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from shared import __version__

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import FrameType

    from litestar import Litestar

    from controlplane.settings import Settings

__all__ = ["main"]

logger = logging.getLogger("byteor.controlplane")

EXIT_USAGE = 2


def _configure_logging(settings: Settings) -> None:
    from controlplane.observability.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)


def _litestar_app(server: Any) -> Any:
    """The Litestar app a uvicorn server loaded (inside the middleware uvicorn wraps it in)."""
    from litestar import Litestar

    app = getattr(server.config, "loaded_app", None)
    while app is not None and not isinstance(app, Litestar):
        app = getattr(app, "app", None)
    return app


def _serve(settings: Settings, host: str | None, port: int | None, workers: int = 1) -> int:
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    class DrainingServer(uvicorn.Server):
        """On the first SIGTERM/SIGINT: report not-ready for ``drain_seconds``, then stop."""

        draining = False

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            app = _litestar_app(self)
            if self.draining or settings.drain_seconds <= 0 or app is None:
                super().handle_exit(sig, frame)
                return
            self.draining = True
            app.state.draining = True
            logger.info(
                "draining: /readyz answers 503 for %gs, then shutting down", settings.drain_seconds
            )
            asyncio.get_running_loop().call_later(
                settings.drain_seconds, super().handle_exit, sig, frame
            )

    options: dict[str, Any] = {
        "host": host or settings.bind_host,
        "port": port if port is not None else settings.bind_port,
        "log_config": None,
        "access_log": False,
        "server_header": False,
        "timeout_graceful_shutdown": 20,
        "timeout_keep_alive": settings.http_keep_alive_seconds,
        "backlog": settings.http_backlog,
    }
    # uvicorn drains in-flight requests on SIGTERM/SIGINT and then re-raises the signal to the
    # handler that was installed before it; a no-op handler here turns that into a clean exit 0.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    if workers <= 1:
        from controlplane.app import create_app
        from controlplane.observability.collector import tune_collector

        app = create_app(settings)
        tune_collector(settings.gc_thresholds)
        DrainingServer(uvicorn.Config(app, **options)).run()
    else:
        if settings.resolved_database_url.startswith("sqlite"):
            logger.warning(
                "serve --workers %d on SQLite: every write still goes through one database "
                "lock; use PostgreSQL (BYTEOR_CLOUD_DATABASE_URL) to scale out",
                workers,
            )
        # What every worker would otherwise race to do on a fresh install, done once here: the
        # key-encryption key file (when no key is set) and the schema. The workers then skip it.
        from controlplane.signing.kek import load_kek

        load_kek(settings)
        if settings.should_auto_migrate:
            revision = asyncio.run(_migrate(settings))
            logger.info("database schema is at %s", revision)
        os.environ["BYTEOR_CLOUD_AUTO_MIGRATE"] = "false"
        # Each worker process builds its own app from the same BYTEOR_CLOUD_* environment and
        # accepts connections on the socket bound here. uvicorn's supervisor restarts a worker
        # that dies; on SIGTERM each worker finishes its in-flight requests (no /readyz drain
        # phase: take the instance out of the load balancer first).
        config = uvicorn.Config(
            "controlplane.cli:worker_app", factory=True, workers=workers, **options
        )
        Multiprocess(config, sockets=[config.bind_socket()]).run()
    logger.info("control plane stopped")
    return 0


def worker_app() -> Litestar:
    """The app of one ``serve --workers N`` process (uvicorn calls this in each worker it spawns).

    A spawned worker starts a fresh interpreter: its logging is configured here, as the parent's
    was, or its records would go to Python's last-resort handler (plain text, warnings only).
    """
    from controlplane.app import create_app
    from controlplane.observability.collector import tune_collector
    from controlplane.settings import Settings

    settings = Settings()
    _configure_logging(settings)
    app = create_app(settings)
    tune_collector(settings.gc_thresholds)
    return app


async def _migrate(settings: Settings) -> str | None:
    from controlplane.db import database_for
    from controlplane.db.migrate import current_revision, upgrade

    database = database_for(settings)
    try:
        await upgrade(database.engine)
        return await current_revision(database.engine)
    finally:
        await database.dispose()


async def _bootstrap(settings: Settings, email: str, org: str) -> str:
    from controlplane.auth.service import bootstrap_owner
    from controlplane.db import database_for
    from controlplane.db.migrate import upgrade

    database = database_for(settings)
    try:
        if settings.should_auto_migrate:
            await upgrade(database.engine)
        async with database.sessionmaker() as session:
            result = await bootstrap_owner(session, email, org)
        return result.token
    finally:
        await database.dispose()


def _positive(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError("must be between 1 and 64")
    return value


#: Packages of the ``server`` extra the control plane cannot start without.
SERVER_PACKAGES = ("litestar", "sqlalchemy", "alembic", "uvicorn", "limits", "aiosqlite")


def _missing_server_packages() -> list[str]:
    return [name for name in SERVER_PACKAGES if importlib.util.find_spec(name) is None]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="byteor-controlplane", description="ByteOr control plane (settings: BYTEOR_CLOUD_*)"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the API server")
    serve.add_argument("--host", help="override the host of BYTEOR_CLOUD_API_BIND_ADDR")
    serve.add_argument("--port", type=int, help="override the port of BYTEOR_CLOUD_API_BIND_ADDR")
    serve.add_argument(
        "--workers",
        type=_positive,
        default=1,
        help="worker processes sharing the port (for PostgreSQL; default 1)",
    )
    commands.add_parser("migrate", help="create or upgrade the database schema")
    commands.add_parser(
        "worker", help="run durable jobs only (no HTTP); run several against PostgreSQL"
    )
    bootstrap = commands.add_parser(
        "bootstrap", help="create the first owner and print their bearer token (once)"
    )
    bootstrap.add_argument("--email", required=True, help="the owner's e-mail address")
    bootstrap.add_argument("--org", default="default", help="name of the first organization")
    demo = commands.add_parser(
        "demo", help="run a control plane on SQLite and one local agent, end to end"
    )
    demo.add_argument("--once", action="store_true", help="exit as soon as the agent is online")
    demo.add_argument("--keep", action="store_true", help="keep the temporary directory and logs")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``byteor-controlplane``; returns the process exit code."""
    args = _parser().parse_args(argv)
    missing = _missing_server_packages()
    if missing:
        print(  # noqa: T201
            "byteor-controlplane needs the server extra, which this install lacks "
            f"({', '.join(missing)}): pip install 'byteor[server]' "
            "(hosts that only run the agent need just byteor-agent)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    from controlplane.settings import Settings

    if args.command == "demo":
        from controlplane.demo import run_demo

        try:
            return run_demo(once=args.once, keep=args.keep)
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            print(f"byteor-controlplane demo: {exc}", file=sys.stderr)  # noqa: T201
            return 1
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"byteor-controlplane: invalid settings:\n{exc}", file=sys.stderr)  # noqa: T201
        return EXIT_USAGE
    _configure_logging(settings)
    if args.command == "serve":
        return _serve(settings, args.host, args.port, args.workers)
    if args.command == "worker":
        from controlplane.observability.collector import tune_collector
        from controlplane.worker import run_worker

        tune_collector(settings.gc_thresholds)
        return asyncio.run(run_worker(settings))
    if args.command == "migrate":
        revision = asyncio.run(_migrate(settings))
        logger.info("database schema is at revision %s", revision)
        return 0
    return _run_bootstrap(settings, args.email, args.org)


def _run_bootstrap(settings: Settings, email: str, org: str) -> int:
    import msgspec

    from controlplane.errors import Conflict
    from shared.resources import Email, Name

    try:
        msgspec.convert(email, Email)
        msgspec.convert(org, Name)
    except msgspec.ValidationError as exc:
        print(f"byteor-controlplane bootstrap: invalid argument: {exc}", file=sys.stderr)  # noqa: T201
        return EXIT_USAGE
    try:
        token = asyncio.run(_bootstrap(settings, email, org))
    except Conflict as exc:
        print(f"byteor-controlplane bootstrap: {exc.detail}", file=sys.stderr)  # noqa: T201
        return EXIT_USAGE
    print(token)  # noqa: T201 - the one line of output is the token
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
