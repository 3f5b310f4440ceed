"""The daemon's life, in phases: start up, serve until a signal, shut down.

Startup opens the store, takes up the sessions it kept (each hibernated), binds the port.
SIGTERM or SIGINT starts the drain: new sessions are refused (503 `draining`, /readyz
503) while existing sessions and their streams keep working, for at most
`drain_timeout_s`: with the memory store until every session has idled out or been
deleted; with a durable store until no turn is running. Then every session left is
hibernated and kept in a durable store for the next start (its streams end without
`done`), or closed with the memory store (`done`); every CLI process ends and the
process exits 0. A second signal skips the wait.
"""

from __future__ import annotations

import asyncio
import gc
import os
import resource
import shutil
import signal
import sys
import tempfile
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import sniffio
import structlog
from aiohttp import web

from . import __version__
from .agents.artefact_tools import ArtefactTools
from .agents.gateway import Credential, ModelGateway, upstream_url
from .agents.genui import Component, GenuiToolset
from .agents.sandbox import Confinement
from .agents.toolsets import Toolset
from .agents.workspaces import Workspaces
from .config import (
    AUTH_TOKEN_ENV,
    DSN_ENV,
    TICKET_KEY_ENV,
    Config,
    ConfigError,
    auth_token,
    store_dsn,
)
from .credentials import (
    CREDENTIALS_DIRECTORY,
    credential_name,
    forget,
    model_credential_environment,
    secret,
)
from .http.auth import Auth
from .http.routes import build_app
from .identity.oidc import JwtVerifier
from .identity.principals import Authenticator, Principal, static_tokens
from .identity.tickets import Tickets, ticket_key
from .metrics import Metrics
from .protocol.wire import PROTOCOL_VERSION
from .sessions.supervisor import Supervisor
from .stores.base import Store
from .stores.memory import MemoryStore
from .usage.budgets import Budgets
from .usage.ledger import Ledger
from .usage.prices import Prices

log = structlog.get_logger(__name__)
FD_BASE = 128  # the listener, logs, the store's files or pool, the Python runtime
FD_PER_CLI = 4


@dataclass(frozen=True)
class Secrets:
    tokens: list[tuple[bytes, Principal]]  # every static bearer token, with its principal
    ticket_key: bytes
    dsn: str
    model_env: dict[str, str] = field(default_factory=dict)  # the real model credential


def take_secrets(config: Config) -> Secrets:
    """The bearer tokens, the stream-ticket key, the Postgres DSN and the model credential,
    from the environment, `NAME_FILE`s or systemd's credentials (credentials.py), then
    removed from the environment, so the CLI processes (and the tools they run) never
    inherit them."""
    admin_token, dsn = auth_token(), store_dsn(config)
    if not admin_token and not config.auth.disabled:
        raise ConfigError(
            f"{AUTH_TOKEN_ENV} is not set, nor {AUTH_TOKEN_ENV}_FILE, nor the credential"
            f" {credential_name(AUTH_TOKEN_ENV)} (or set [auth] disabled = true on a loopback"
            " address)"
        )
    if config.store.backend == "postgres" and not dsn:
        raise ConfigError(
            f"store.backend is 'postgres' but neither store.dsn nor {DSN_ENV} ({DSN_ENV}_FILE,"
            f" the credential {credential_name(DSN_ENV)}) is set"
        )
    secrets = Secrets(
        tokens=static_tokens(config),
        ticket_key=ticket_key(secret(TICKET_KEY_ENV), admin_token),
        dsn=dsn,
        model_env=model_credential_environment(),
    )
    for name in (AUTH_TOKEN_ENV, DSN_ENV, TICKET_KEY_ENV, *(t.env for t in config.auth.tokens)):
        forget(name)
    os.environ.pop(CREDENTIALS_DIRECTORY, None)  # all read: nothing started later needs it
    return secrets


class StartupFailed(Exception):
    pass


def build_store(config: Config, dsn: str) -> Store:
    if config.store.backend == "postgres":
        from .stores.postgres.store import PostgresStore  # asyncpg only when it is used

        return PostgresStore(config.store, dsn, config.server.host, config.server.port)
    if config.store.backend == "sqlite":
        from .stores.sqlite.store import SqliteStore

        return SqliteStore(config.store, Path(config.store.path))
    return MemoryStore()


def raise_file_limit(config: Config) -> None:
    """Each stream is a file descriptor and each live CLI about four (three pipes and a
    pidfd); raise the soft limit toward what the config can need, and say if the hard
    limit (LimitNOFILE= in the unit) is too low."""
    needed = FD_BASE + config.server.max_streams + FD_PER_CLI * config.sessions.live_agents_cap
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft < needed:
        log.warning("file_limit_low", limit=soft, needed=needed, hint="raise LimitNOFILE=")
    else:
        log.info("file_limit", limit=soft, needed=needed)


def name_the_event_loop() -> None:
    """The SDK's anyio asks sniffio which event loop runs at every checkpoint, two per
    CLI message; under asyncio.run nothing has said, so sniffio works it out each time
    (an import and a lookup, about 0.5 µs). Say it once, as anyio.run would: the tasks
    started after this inherit it."""
    sniffio.current_async_library_cvar.set("asyncio")


def watch_children_with_pidfd() -> None:
    """Python 3.11's default child watcher parks one thread in waitpid() per CLI process
    (1000 sessions: 1000 threads). A pidfd watcher waits on file descriptors in the event
    loop instead. Python 3.12+ picks it by itself."""
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return  # a kernel without pidfd: keep the threaded watcher
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        watcher = asyncio.PidfdChildWatcher()
        watcher.attach_loop(asyncio.get_running_loop())
        asyncio.get_event_loop_policy().set_child_watcher(watcher)


def build_auth(config: Config, secrets: Secrets, metrics: Metrics) -> Auth:
    jwt = JwtVerifier(config.auth.jwt) if config.auth.jwt is not None else None
    authenticator = None if config.auth.disabled else Authenticator(secrets.tokens, jwt)
    return Auth(
        authenticator, Tickets(secrets.ticket_key, config.auth.stream_ticket_ttl_s), metrics
    )


@asynccontextmanager
async def runtime_directory() -> AsyncIterator[Path]:
    """A private folder for the gateway's socket and the sandbox launcher: systemd's
    RuntimeDirectory= when there is one, else a fresh temporary folder, removed at exit."""
    given = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    path = Path(given) if given else Path(tempfile.mkdtemp(prefix="agent-webkitd-"))
    os.chmod(path, 0o700)
    try:
        yield path
    finally:
        if not given:
            shutil.rmtree(path, ignore_errors=True)


def build_gateway(
    config: Config, secrets: Secrets, runtime: Path, ledger: Ledger, metrics: Metrics
) -> ModelGateway:
    """The model gateway: the one way agents reach the model, with the real credential
    added outside their reach. [agent.env] may still name the upstream and hold the key
    (older configs): both are taken out of what the agent sees."""
    agent_env = config.agent.env
    credential = Credential.from_environment(secrets.model_env) or Credential.from_environment(
        agent_env
    )
    if credential is None:
        log.warning("model_credential_missing", hint="set ANTHROPIC_API_KEY")
    upstream = upstream_url(
        config.model.upstream_url or agent_env.get("ANTHROPIC_BASE_URL", ""), os.environ
    )
    sandboxed_net = config.agent.sandbox == "bwrap" and config.agent.network == "none"
    return ModelGateway(
        upstream,
        credential,
        runtime / "model.sock",
        tcp=not sandboxed_net,
        logger=log,
        ledger=ledger,
        metrics=metrics,
    )


def hidden_paths(config: Config, config_path: str | None) -> tuple[str, ...]:
    """The daemon's own files: never shown to an agent, even where the system is (a
    config in /etc/agent-webkitd is masked inside every sandbox)."""
    paths = [
        os.path.dirname(config.store.path),
        config.agent.workspaces_dir,
        os.path.abspath(config.dotenv_path) if config.dotenv_path else "",
    ]
    if config_path:
        paths.append(os.path.dirname(os.path.abspath(config_path)))
    # A sandbox has /tmp of its own; the system folders themselves are never masked.
    skip = ("/", "/etc", "/usr", "/tmp")
    return tuple(os.path.realpath(p) for p in paths if p and os.path.realpath(p) not in skip)


async def serve(
    config: Config,
    secrets: Secrets,
    components: tuple[Component, ...] = (),
    config_path: str | None = None,
) -> None:
    """Run the daemon; `components` are the generative-UI components (agents/genui.py), loaded
    and checked before the event loop starts, as the sandbox is (agents/sandbox.py)."""
    async with runtime_directory() as runtime:
        await _serve(config, secrets, components, config_path, runtime)


async def _serve(
    config: Config,
    secrets: Secrets,
    components: tuple[Component, ...],
    config_path: str | None,
    runtime: Path,
) -> None:
    # Phase 1: start up.
    name_the_event_loop()
    watch_children_with_pidfd()
    raise_file_limit(config)
    if config.agent.sandbox == "none":
        log.warning("sandbox_off", hint='agents run unconfined: [agent] sandbox = "none"')
    workspaces = Workspaces(config.agent.workspaces_dir)
    workspaces.prepare()
    metrics = Metrics()
    store = build_store(config, secrets.dsn)
    ledger = Ledger(
        store,
        Prices(config.usage.prices),
        Budgets(config.budgets),
        metrics,
        shared=store.shared,
    )
    gateway = build_gateway(config, secrets, runtime, ledger, metrics)
    await gateway.start()
    confinement = Confinement(config.agent, gateway, runtime, hidden_paths(config, config_path))
    confinement.prepare()
    try:
        await store.start()
        await ledger.start()
    except Exception as exc:  # unreachable database, file in use, schema too new: say which
        log.error("store_start_failed", error=f"{type(exc).__name__}: {exc}")
        await gateway.stop()
        raise StartupFailed(
            f"the session store could not start: {type(exc).__name__}: {exc}"
        ) from exc
    toolsets: tuple[Toolset, ...] = ()
    if config.agent.artefacts:
        toolsets += (ArtefactTools(),)
    if components:
        toolsets += (GenuiToolset(components),)
    supervisor = Supervisor(config, store, metrics, confinement, workspaces, ledger, toolsets)
    try:
        await supervisor.start()
    except Exception as exc:  # the stored sessions could not be read back
        await store.stop()
        await gateway.stop()
        raise StartupFailed(f"the stored sessions could not be loaded: {exc}") from exc
    auth = build_auth(config, secrets, metrics)
    await auth.start()
    app = build_app(config, supervisor, auth, components)
    # handler_cancellation: a client that goes away cancels its handler at once, so an
    # SSE subscriber is counted out promptly (idle eviction depends on it). Handlers that
    # change state shield that work (see routes).
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, config.server.host, config.server.port)
    await site.start()
    log.info(
        "listening",
        host=config.server.host,
        port=config.server.port,
        version=__version__,
        protocol_version=PROTOCOL_VERSION,
    )

    # Phase 2: serve until SIGTERM or SIGINT.
    stop, hurry = asyncio.Event(), asyncio.Event()

    def on_signal() -> None:
        (hurry if stop.is_set() else stop).set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    await stop.wait()

    # Phase 3: drain: refuse new sessions; existing ones go on (until they idle out or
    # are deleted, or until their turns are over with a durable store), for at most
    # drain_timeout_s.
    await supervisor.drain()
    drain_timeout_s = config.server.drain_timeout_s
    log.info("draining", live_sessions=len(supervisor.sessions), drain_timeout_s=drain_timeout_s)
    if not await supervisor.wait_until_drained(drain_timeout_s, abort=hurry):
        log.warning(
            "drain_cut_short", live_sessions=len(supervisor.sessions), hurried=hurry.is_set()
        )

    # Phase 4: shut down: hibernate (durable store) or close the sessions left, then the
    # listener.
    log.info("shutting_down", live_sessions=len(supervisor.sessions))
    await supervisor.stop()
    await gateway.stop()  # after the CLIs: a turn cut short by the drain still reached it
    await ledger.stop()
    await store.stop()
    await auth.stop()
    await runner.cleanup()
    # Shutdown is done: a late signal must not kill the process mid-exit (exit status
    # != 0). Take the handlers from the loop first, or closing it would restore SIG_DFL.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
        signal.signal(sig, signal.SIG_IGN)
    # The CLIs' subprocess transports sit in reference cycles (client, query, process):
    # free them now, while the loop can still close them, not at interpreter exit, where
    # each would print "Exception ignored in ... __del__" past the JSON logs.
    gc.collect()
    log.info("stopped")
