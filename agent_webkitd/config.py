"""Configuration: the TOML file of DESIGN.md §4 as frozen dataclasses, validated in one place.

Every key has a default, so an empty file is a valid config. Unknown keys and wrong
types are errors that name the key (`sessions.max_sessions`). Secrets never live here:
they come from the environment (see `load_environment`), a `NAME_FILE` or systemd's
credentials (credentials.py).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dotenv import load_dotenv

from .credentials import secret
from .errors import ConfigError as ConfigError  # where it always was, for importers

PERMISSION_MODES = ("default", "acceptEdits", "plan", "bypassPermissions", "dontAsk", "auto")
AUTH_TOKEN_ENV = "AGENT_WEBKIT_AUTH_TOKEN"
TICKET_KEY_ENV = "AGENT_WEBKIT_TICKET_KEY"
# Asymmetric only: a JWKS holds public keys, and an HMAC algorithm here would let a
# public key be used as a shared secret.
JWT_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
STORE_BACKENDS = ("sqlite", "memory", "postgres")
SANDBOXES = ("bwrap", "none")
NETWORKS = ("none", "host")


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    keepalive_s: float = 15
    max_body_bytes: int = 1_048_576
    drain_timeout_s: float = 600
    write_timeout_s: float = 30  # a subscriber that takes no bytes this long is cut off
    max_streams: int = 4096  # open SSE streams on this host (each is a file descriptor)
    cors_allowed_origins: tuple[str, ...] = ()  # exact origins a browser may call from


@dataclass(frozen=True)
class TokenConfig:
    """One more static bearer token: the principal `token:<name>`. Entries that share a
    name are one principal with several tokens (rotation without a gap)."""

    name: str = ""
    env: str = ""  # the environment variable that holds the token
    admin: bool = False


@dataclass(frozen=True)
class JwtConfig:
    """OIDC/JWT access tokens, checked against the identity provider's JWKS."""

    issuer: str = ""
    audience: str = ""
    jwks_url: str = ""
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    leeway_s: float = 30
    admin_scope: str = ""  # a `scope`/`scp` value that makes a user an admin


@dataclass(frozen=True)
class AuthConfig:
    disabled: bool = False
    stream_ticket_ttl_s: float = 300
    tokens: tuple[TokenConfig, ...] = ()
    jwt: JwtConfig | None = None  # absent = JWTs are not accepted


@dataclass(frozen=True)
class SessionsConfig:
    max_sessions: int = 100
    idle_timeout_s: float = 300
    ring_size: int = 1000
    permission_timeout_s: float = 0
    inbound_queue_size: int = 16
    hibernate_after_s: float = 120  # stop the CLI of a session idle this long; 0 = never
    # ...and keep only an index entry of a hibernated one quiet this long with no stream
    # open (durable stores: the rest is loaded again when needed); 0 = never
    shelve_after_s: float = 30
    max_live_agents: int = 0  # CLI processes at once; 0 = max_sessions
    max_sessions_per_principal: int = 0  # one principal's sessions on this host; 0 = no share
    max_live_agents_per_principal: int = 0  # one principal's CLI processes here; 0 = no share
    max_concurrent_starts: int = 4  # CLIs starting at once (wakes, creates)
    turn_idle_timeout_s: float = 1800  # a turn silent this long is interrupted; 0 = never
    turn_kill_grace_s: float = 10  # ...and its CLI killed if the interrupt does not end it
    max_streams_per_session: int = 32
    max_message_bytes: int = 262_144  # the text of one user message, UTF-8
    max_image_bytes: int = 1_048_576  # one image of a user message, decoded

    @property
    def live_agents_cap(self) -> int:
        return self.max_live_agents or self.max_sessions


@dataclass(frozen=True)
class AgentConfig:
    cli_path: str = ""
    model: str = ""
    permission_mode: str = "default"
    allowed_permission_modes: tuple[str, ...] = ("default", "acceptEdits", "plan")
    cwd: str = ""
    allowed_cwd_roots: tuple[str, ...] = ()
    include_partial_messages: bool = True
    start_timeout_s: float = 60  # a CLI not connected by then is killed (502, wake_failed)
    warm_agents: int = 1  # CLIs kept started with these defaults for instant creates; 0 = off
    # The pool grows to the largest recent burst of creates, up to this many (each idle CLI
    # is ~185 MiB); at or below warm_agents it is fixed at warm_agents.
    warm_agents_max: int = 8
    warm_agents_idle_s: float = 600  # a burst is remembered this long; then extras stop
    artefacts: bool = True  # the `artefacts` MCP server (limits: [artefacts])
    env: dict[str, str] = field(default_factory=dict)  # visible to the agent: never a secret
    # Every CLI runs in a bubblewrap sandbox (agents/sandbox.py); "none" = unconfined.
    sandbox: str = "bwrap"
    network: str = "none"  # "none": only the model, through the gateway; "host": the host's
    workspaces_dir: str = "workspaces"  # one folder per session; relative to the config file
    # Postgres store: every host sees the same workspaces_dir (a shared filesystem), so
    # workspaces need no checkpoints to follow their session to another host.
    workspaces_shared: bool = False
    sandbox_ro_paths: tuple[str, ...] = ()  # more read-only paths the agent may see (tools)
    max_upload_bytes: int = 104_857_600  # one file uploaded to a workspace over HTTP
    max_workspace_bytes: int = 1_073_741_824  # what an upload may fill a workspace to; 0 = any


@dataclass(frozen=True)
class ModelConfig:
    """Where the model gateway (agents/gateway.py) sends the CLIs' model requests."""

    upstream_url: str = ""  # "" = the daemon's ANTHROPIC_BASE_URL, else the public API


@dataclass(frozen=True)
class PriceConfig:
    """USD per million tokens of each kind, for models whose name starts with the key."""

    input: float = 0.0
    output: float = 0.0
    cache_write: float = 0.0
    cache_read: float = 0.0


@dataclass(frozen=True)
class UsageConfig:
    prices: dict[str, PriceConfig] = field(default_factory=dict)  # model-name prefix -> price


@dataclass(frozen=True)
class BudgetConfig:
    """What one principal ("*": everyone without an entry of their own) may spend; 0 = no
    limit of that kind. Windows are UTC days and calendar months."""

    principal: str = ""
    tokens_per_day: int = 0
    tokens_per_month: int = 0
    usd_per_day: float = 0.0
    usd_per_month: float = 0.0


@dataclass(frozen=True)
class ArtefactsConfig:
    """Limits on what the model may store through the `artefacts` MCP server; over one,
    its tool call gets an error result (the switch is `[agent] artefacts`)."""

    max_bytes: int = 1_048_576  # the content of one artefact version, UTF-8
    max_per_session: int = 100  # artefacts one session holds at once


@dataclass(frozen=True)
class StoreConfig:
    backend: str = "sqlite"
    path: str = "sessions.db"  # sqlite: relative to the config file's folder
    dsn: str = ""  # or env DATABASE_URL
    pool_min: int = 2
    pool_max: int = 10
    lease_s: float = 5  # a host silent this long has lost its sessions to any other host
    max_pending_events: int = 10_000  # events waiting for a commit before CLIs are paused
    advertise_url: str = ""  # how other hosts can point clients at this one


DSN_ENV = "DATABASE_URL"


@dataclass(frozen=True)
class LoggingConfig:
    format: str = "json"
    level: str = "info"


@dataclass(frozen=True)
class GenuiConfig:
    """Generative UI: operator-declared components the model can render (agents/genui.py)."""

    dir: str = ""  # a folder of JSON Schemas, one `<name>.json` per component; "" = off


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    sessions: SessionsConfig = field(default_factory=SessionsConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    artefacts: ArtefactsConfig = field(default_factory=ArtefactsConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    genui: GenuiConfig = field(default_factory=GenuiConfig)
    usage: UsageConfig = field(default_factory=UsageConfig)
    budgets: tuple[BudgetConfig, ...] = ()
    dotenv_path: str = ".env"


def load_config(path: str | Path | None) -> Config:
    """Read and validate a TOML file (None = all defaults)."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    config: Config = _build(Config, raw, prefix="")
    _check_semantics(config)
    # Relative paths (the database, the genui folder) mean "beside the config file",
    # wherever the daemon runs.
    base = Path(path).resolve().parent if path is not None else Path.cwd()
    store = dataclasses.replace(config.store, path=os.path.normpath(base / config.store.path))
    agent = dataclasses.replace(
        config.agent, workspaces_dir=os.path.normpath(base / config.agent.workspaces_dir)
    )
    genui = config.genui
    if genui.dir:
        genui = dataclasses.replace(genui, dir=os.path.normpath(base / genui.dir))
    return dataclasses.replace(config, store=store, agent=agent, genui=genui)


def load_environment(config: Config) -> None:
    """Load the .env file, if there is one; variables already in the environment win."""
    try:
        load_dotenv(config.dotenv_path, override=False)
    except OSError as exc:  # there, but not ours to read (root's 0600, a folder, ...)
        raise ConfigError(
            f"dotenv_path: {config.dotenv_path} cannot be read: {exc.strerror or exc}"
        ) from None


def _build(cls: type[Any], raw: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            raise ConfigError(f"unknown config key: {prefix}{key}")
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        name = f"{prefix}{f.name}"
        hint = hints[f.name]
        value = raw[f.name]
        table = _table_type(hint)
        if table is not None:
            if not isinstance(value, dict):
                raise ConfigError(f"{name} must be a table")
            values[f.name] = _build(table, value, prefix=f"{name}.")
        elif _tables_type(hint) is not None:
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise ConfigError(f"{name} must be an array of tables ([[{name}]])")
            entry = _tables_type(hint)
            values[f.name] = tuple(
                _build(entry, v, prefix=f"{name}[{i}].") for i, v in enumerate(value)
            )
        elif (entry := _named_tables_type(hint)) is not None:
            if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
                raise ConfigError(f'{name} must be a table of tables ("key" = {{ ... }})')
            values[f.name] = {
                key: _build(entry, v, prefix=f'{name}."{key}".') for key, v in value.items()
            }
        else:
            values[f.name] = _coerce(name, hint, value)
    return cls(**values)


def _table_type(hint: Any) -> Any:
    """The dataclass of a `[table]` key (also when optional: `JwtConfig | None`)."""
    if isinstance(hint, types.UnionType):
        hint = next((h for h in typing.get_args(hint) if h is not type(None)), None)
    return hint if dataclasses.is_dataclass(hint) else None


def _tables_type(hint: Any) -> Any:
    """The dataclass of an `[[array of tables]]` key (`tuple[TokenConfig, ...]`)."""
    if typing.get_origin(hint) is tuple:
        entry = typing.get_args(hint)[0]
        return entry if dataclasses.is_dataclass(entry) else None
    return None


def _named_tables_type(hint: Any) -> Any:
    """The dataclass of a table of named tables (`dict[str, PriceConfig]`)."""
    if typing.get_origin(hint) is dict:
        entry = typing.get_args(hint)[1]
        return entry if dataclasses.is_dataclass(entry) else None
    return None


def _coerce(name: str, hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be a boolean (true/false), got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{name} must be a list of strings, got {value!r}")
        return tuple(value)
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(f"{name} must be a table of strings, got {value!r}")
        return dict(value)
    if isinstance(hint, types.UnionType):  # pragma: no cover - no such keys yet
        raise ConfigError(f"{name}: unsupported type")
    raise ConfigError(f"{name}: unsupported type {hint!r}")


def _check_semantics(config: Config) -> None:
    s, a = config.sessions, config.agent
    _positive("server.port", config.server.port, upper=65535, zero_ok=True)
    _positive("server.keepalive_s", config.server.keepalive_s)
    _positive("server.max_body_bytes", config.server.max_body_bytes)
    _positive("server.drain_timeout_s", config.server.drain_timeout_s, zero_ok=True)
    _positive("sessions.max_sessions", s.max_sessions)
    _positive("sessions.idle_timeout_s", s.idle_timeout_s)
    _positive("sessions.ring_size", s.ring_size)
    _positive("sessions.permission_timeout_s", s.permission_timeout_s, zero_ok=True)
    _positive("sessions.inbound_queue_size", s.inbound_queue_size)
    _positive("sessions.hibernate_after_s", s.hibernate_after_s, zero_ok=True)
    _positive("sessions.shelve_after_s", s.shelve_after_s, zero_ok=True)
    _positive("sessions.max_live_agents", s.max_live_agents, zero_ok=True)
    _positive("sessions.max_sessions_per_principal", s.max_sessions_per_principal, zero_ok=True)
    _positive("sessions.max_concurrent_starts", s.max_concurrent_starts)
    _positive("sessions.turn_idle_timeout_s", s.turn_idle_timeout_s, zero_ok=True)
    _positive("sessions.turn_kill_grace_s", s.turn_kill_grace_s)
    _positive("agent.start_timeout_s", a.start_timeout_s)
    _positive("agent.warm_agents", a.warm_agents, zero_ok=True)
    _positive("agent.warm_agents_max", a.warm_agents_max, zero_ok=True)
    _positive("agent.warm_agents_idle_s", a.warm_agents_idle_s)
    _positive("agent.max_upload_bytes", a.max_upload_bytes)
    _positive("agent.max_workspace_bytes", a.max_workspace_bytes, zero_ok=True)
    _positive("server.write_timeout_s", config.server.write_timeout_s)
    _positive("server.max_streams", config.server.max_streams)
    _positive("sessions.max_streams_per_session", s.max_streams_per_session)
    _positive("sessions.max_message_bytes", s.max_message_bytes)
    _positive("sessions.max_image_bytes", s.max_image_bytes)
    _positive("artefacts.max_bytes", config.artefacts.max_bytes)
    _positive("artefacts.max_per_session", config.artefacts.max_per_session)
    for mode in (*a.allowed_permission_modes, a.permission_mode):
        if mode not in PERMISSION_MODES:
            raise ConfigError(
                f"agent.permission_mode: unknown mode {mode!r} (one of {', '.join(PERMISSION_MODES)})"
            )
    if a.permission_mode not in a.allowed_permission_modes:
        raise ConfigError(
            f"agent.permission_mode {a.permission_mode!r} is not in agent.allowed_permission_modes"
        )
    for key, value, allowed in (
        ("agent.sandbox", a.sandbox, SANDBOXES),
        ("agent.network", a.network, NETWORKS),
    ):
        if value not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")
    if not a.workspaces_dir:
        raise ConfigError("agent.workspaces_dir must name a folder")
    for path in a.sandbox_ro_paths:
        if not os.path.isabs(path):
            raise ConfigError(f"agent.sandbox_ro_paths: {path!r} must be an absolute path")
    if config.store.backend not in STORE_BACKENDS:
        raise ConfigError(
            f"store.backend must be one of {', '.join(STORE_BACKENDS)}, got {config.store.backend!r}"
        )
    if config.store.backend == "sqlite" and not config.store.path:
        raise ConfigError("store.path must name the database file when store.backend is 'sqlite'")
    st = config.store
    _positive("store.pool_min", st.pool_min)
    _positive("store.pool_max", st.pool_max)
    if st.pool_min > st.pool_max:
        raise ConfigError("store.pool_min must not be larger than store.pool_max")
    _positive("store.lease_s", st.lease_s)
    _positive("store.max_pending_events", st.max_pending_events)
    if config.logging.format not in ("json", "console"):
        raise ConfigError(
            f"logging.format must be 'json' or 'console', got {config.logging.format!r}"
        )
    if config.logging.level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(
            f"logging.level must be debug, info, warning or error, got {config.logging.level!r}"
        )
    _check_auth(config)
    _check_usage(config)
    for origin in config.server.cors_allowed_origins:
        if not _is_origin(origin):
            raise ConfigError(
                f"server.cors_allowed_origins: {origin!r} is not an origin"
                " (scheme://host[:port], no path, no trailing slash)"
            )
    if config.auth.disabled and not is_loopback(config.server.host):
        raise ConfigError(
            f"auth.disabled = true is only allowed when server.host is a loopback address "
            f"(got {config.server.host!r})"
        )


def _check_usage(config: Config) -> None:
    _positive(
        "sessions.max_live_agents_per_principal",
        config.sessions.max_live_agents_per_principal,
        zero_ok=True,
    )
    for model, price in config.usage.prices.items():
        for kind in ("input", "output", "cache_write", "cache_read"):
            _positive(f'usage.prices."{model}".{kind}', getattr(price, kind), zero_ok=True)
    seen: set[str] = set()
    for i, budget in enumerate(config.budgets):
        where = f"budgets[{i}]"
        if not budget.principal:
            raise ConfigError(f'{where}.principal must name a principal, or "*" for everyone')
        if budget.principal in seen:
            raise ConfigError(f"{where}: principal {budget.principal!r} has a budget already")
        seen.add(budget.principal)
        limits = ("tokens_per_day", "tokens_per_month", "usd_per_day", "usd_per_month")
        for limit in limits:
            _positive(f"{where}.{limit}", getattr(budget, limit), zero_ok=True)
        if not any(getattr(budget, limit) for limit in limits):
            raise ConfigError(f"{where} sets no limit (one of {', '.join(limits)})")
        if (budget.usd_per_day or budget.usd_per_month) and not config.usage.prices:
            raise ConfigError(f"{where}: a USD budget needs [usage.prices]")


def _check_auth(config: Config) -> None:
    auth = config.auth
    _positive("auth.stream_ticket_ttl_s", auth.stream_ticket_ttl_s)
    for i, token in enumerate(auth.tokens):
        if (
            not token.name
            or not token.name.replace("-", "").replace("_", "").replace(".", "").isalnum()
        ):
            raise ConfigError(
                f"auth.tokens[{i}].name must be letters, digits, '-', '_' or '.', got {token.name!r}"
            )
        if not token.env:
            raise ConfigError(f"auth.tokens[{i}].env must name an environment variable")
    jwt = auth.jwt
    if jwt is None:
        return
    for key in ("issuer", "audience", "jwks_url"):
        if not getattr(jwt, key):
            raise ConfigError(f"auth.jwt.{key} is required when [auth.jwt] is present")
    if not jwt.jwks_url.startswith(("https://", "http://")):
        raise ConfigError(f"auth.jwt.jwks_url must be an http(s) URL, got {jwt.jwks_url!r}")
    if not jwt.algorithms:
        raise ConfigError("auth.jwt.algorithms must list at least one algorithm")
    for alg in jwt.algorithms:
        if alg not in JWT_ALGORITHMS:
            raise ConfigError(
                f"auth.jwt.algorithms: {alg!r} is not allowed (one of {', '.join(JWT_ALGORITHMS)})"
            )
    _positive("auth.jwt.leeway_s", jwt.leeway_s, zero_ok=True)


def _is_origin(origin: str) -> bool:
    scheme, sep, rest = origin.partition("://")
    return (
        scheme in ("http", "https")
        and bool(sep)
        and bool(rest)
        and not any(c in rest for c in "/?#@ ")
        and origin == origin.lower()
    )


def _positive(
    name: str, value: float, *, upper: float | None = None, zero_ok: bool = False
) -> None:
    if value < 0 or (value == 0 and not zero_ok) or (upper is not None and value > upper):
        raise ConfigError(f"{name} is out of range: {value!r}")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def auth_token() -> str:
    """The admin token: AGENT_WEBKIT_AUTH_TOKEN, from the environment or a file."""
    return secret(AUTH_TOKEN_ENV)


def store_dsn(config: Config) -> str:
    """The Postgres DSN: `[store] dsn`, else DATABASE_URL (environment or a file)."""
    return config.store.dsn or secret(DSN_ENV)


SECRET_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "DSN")


def redacted(config: Config) -> dict[str, Any]:
    """The effective config as plain data, with anything secret-looking redacted."""
    data = dataclasses.asdict(config)
    data["agent"]["env"] = {
        k: ("<redacted>" if any(m in k.upper() for m in SECRET_MARKERS) else v)
        for k, v in config.agent.env.items()
    }
    if config.store.dsn:
        data["store"]["dsn"] = "<redacted>"
    data["auth"]["token"] = "<set>" if auth_token() else "<not set>"
    for entry in data["auth"]["tokens"]:
        entry["token"] = "<set>" if secret(entry["env"]) else "<not set>"
    return data
