"""The command line and the TOML config: defaults, errors that name the key, redaction."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent_webkitd import __version__, credentials
from agent_webkitd.config import Config, ConfigError, load_config
from agent_webkitd.daemon import take_secrets


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent_webkitd", *args],
        capture_output=True, text=True, timeout=30, env={**os.environ, **(env or {})}, cwd=cwd,
    )


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "conf.toml"
    path.write_text(text)
    return path


def test_an_empty_file_gives_every_default(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    assert dataclasses.replace(config, store=Config().store, agent=Config().agent) == Config()
    # The embedded store is the default, its file beside the config file; so are the
    # sessions' workspaces; every agent is sandboxed, with no network but the model.
    assert (config.store.backend, config.store.path) == ("sqlite", str(tmp_path / "sessions.db"))
    assert dataclasses.replace(config.agent, workspaces_dir="workspaces") == Config().agent
    assert config.agent.workspaces_dir == str(tmp_path / "workspaces")
    assert (config.agent.sandbox, config.agent.network) == ("bwrap", "none")
    assert load_config(None).sessions.ring_size == 1000


def test_the_sqlite_path_is_relative_to_the_config_file_not_the_working_directory(
    tmp_path: Path,
) -> None:
    conf = tmp_path / "etc"
    conf.mkdir()
    relative = load_config(write(conf, '[store]\npath = "../state/db.sqlite"\n'))
    assert relative.store.path == str(tmp_path / "state" / "db.sqlite")
    absolute = load_config(write(conf, '[store]\npath = "/var/lib/x/sessions.db"\n'))
    assert absolute.store.path == "/var/lib/x/sessions.db"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[server]\nprot = 1\n", "server.prot"),
        ("[sessions]\nmax_sessions = \"ten\"\n", "sessions.max_sessions"),
        ("[sessions]\nring_size = 0\n", "sessions.ring_size"),
        ("[auth]\ndisabled = \"yes\"\n", "auth.disabled"),
        ("[agent]\nallowed_cwd_roots = \"/srv\"\n", "agent.allowed_cwd_roots"),
        ("[agent.env]\nFOO = 1\n", "agent.env"),
        ("[agent]\npermission_mode = \"bypassPermissions\"\n", "agent.permission_mode"),
        ("[logging]\nformat = \"xml\"\n", "logging.format"),
        ("[nonsense]\nx = 1\n", "nonsense"),
        ("server = 3\n", "server"),
        ("[store]\nbackend = \"mysql\"\n", "store.backend"),
        ("[store]\npath = \"\"\n", "store.path"),
        ("[store]\nlease_s = 0\n", "store.lease_s"),
        ("[store]\npool_min = 5\npool_max = 2\n", "store.pool_min"),
        ("[store]\nmax_pending_events = -1\n", "store.max_pending_events"),
        ("[agent]\nartefacts = \"yes\"\n", "agent.artefacts"),
        ("[artefacts]\nmax_bytes = 0\n", "artefacts.max_bytes"),
        ("[artefacts]\nmax_per_session = 1.5\n", "artefacts.max_per_session"),
        ("[artefacts]\nenabled = false\n", "artefacts.enabled"),  # the switch is [agent] artefacts
    ],
)
def test_bad_keys_and_types_are_errors_naming_the_key(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(named)):
        load_config(write(tmp_path, text))


def test_auth_can_only_be_disabled_on_a_loopback_address(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"auth\.disabled"):
        load_config(write(tmp_path, '[server]\nhost = "0.0.0.0"\n[auth]\ndisabled = true\n'))
    for host in ("127.0.0.1", "::1", "localhost", "127.8.9.10"):
        assert load_config(write(tmp_path, f'[server]\nhost = "{host}"\n[auth]\ndisabled = true\n')).auth.disabled


def test_version_prints_the_version() -> None:
    done = run_cli("--version")
    assert done.returncode == 0 and __version__ in done.stdout


def test_check_config_prints_the_effective_config_with_secrets_redacted(tmp_path: Path) -> None:
    path = write(tmp_path, '[agent.env]\nANTHROPIC_API_KEY = "sk-ant-secret"\nANTHROPIC_BASE_URL = "http://x"\n'
                           '[store]\ndsn = "postgresql://u:pw@h/db"\n')
    done = run_cli("check-config", "--config", str(path), env={"AGENT_WEBKIT_AUTH_TOKEN": "tok-secret"})
    assert done.returncode == 0, done.stderr
    effective = json.loads(done.stdout)
    assert effective["agent"]["env"] == {"ANTHROPIC_API_KEY": "<redacted>", "ANTHROPIC_BASE_URL": "http://x"}
    assert effective["store"]["dsn"] == "<redacted>"
    assert effective["auth"]["token"] == "<set>"
    assert effective["sessions"]["max_sessions"] == 100
    for secret in ("sk-ant-secret", "pw@h", "tok-secret"):
        assert secret not in done.stdout


def test_the_postgres_store_needs_a_dsn_and_takes_it_from_database_url(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    path = write(tmp_path, '[store]\nbackend = "postgres"\n')
    done = subprocess.run([sys.executable, "-m", "agent_webkitd", "--config", str(path)],
                          capture_output=True, text=True, timeout=30, cwd=tmp_path,
                          env={**env, "AGENT_WEBKIT_AUTH_TOKEN": "t"})
    assert done.returncode == 2 and "DATABASE_URL" in done.stderr
    done = run_cli("migrate", "--config", str(path), env={"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/x"})
    assert done.returncode == 1 and "migrate" in done.stderr
    done = run_cli("--config", str(path), env={"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/x",
                                               "AGENT_WEBKIT_AUTH_TOKEN": "t"})
    assert done.returncode == 1 and "session store could not start" in done.stderr


def test_check_config_fails_on_a_bad_file_naming_the_key(tmp_path: Path) -> None:
    done = run_cli("check-config", "--config", str(write(tmp_path, "[server]\nport = 'x'\n")))
    assert done.returncode != 0 and "server.port" in done.stderr
    done = run_cli("check-config", "--config", str(tmp_path / "missing.toml"))
    assert done.returncode != 0 and "missing.toml" in done.stderr


def test_the_daemon_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "AGENT_WEBKIT_AUTH_TOKEN"}
    done = subprocess.run([sys.executable, "-m", "agent_webkitd", "--config", str(write(tmp_path, ""))],
                          capture_output=True, text=True, timeout=30, env=env, cwd=tmp_path)
    assert done.returncode != 0 and "AGENT_WEBKIT_AUTH_TOKEN" in done.stderr


def test_the_dotenv_file_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("AGENT_WEBKIT_AUTH_TOKEN=from-file\n")
    done = run_cli("check-config", cwd=tmp_path, env={"AGENT_WEBKIT_AUTH_TOKEN": ""})
    assert json.loads(done.stdout)["auth"]["token"] == "<not set>"  # set (empty) in the environment: it wins
    env = {k: v for k, v in os.environ.items() if k != "AGENT_WEBKIT_AUTH_TOKEN"}
    done = subprocess.run([sys.executable, "-m", "agent_webkitd", "check-config"], capture_output=True, text=True,
                          timeout=30, env=env, cwd=tmp_path)
    assert json.loads(done.stdout)["auth"]["token"] == "<set>"


def test_the_dotenv_path_is_configurable(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets.env"
    secrets.write_text("AGENT_WEBKIT_AUTH_TOKEN=from-configured-file\n")
    config = write(tmp_path, f'dotenv_path = "{secrets}"\n')
    env = {k: v for k, v in os.environ.items() if k != "AGENT_WEBKIT_AUTH_TOKEN"}
    done = subprocess.run([sys.executable, "-m", "agent_webkitd", "check-config", "--config", str(config)],
                          capture_output=True, text=True, timeout=30, env=env, cwd=tmp_path)
    assert json.loads(done.stdout)["auth"]["token"] == "<set>"
    assert json.loads(done.stdout)["dotenv_path"] == str(secrets)


# Secrets from files (credentials.py): the variable, then NAME_FILE, then systemd's
# $CREDENTIALS_DIRECTORY/<name in lower case>.


def secret_sources(tmp_path: Path, env: str | None, file: str | None, credential: str | None) -> dict[str, str]:
    """An environment offering AGENT_WEBKIT_AUTH_TOKEN from the sources given."""
    sources: dict[str, str] = {}
    if env is not None:
        sources["AGENT_WEBKIT_AUTH_TOKEN"] = env
    if file is not None:
        (tmp_path / "token").write_text(file + "\n")
        sources["AGENT_WEBKIT_AUTH_TOKEN_FILE"] = str(tmp_path / "token")
    if credential is not None:
        (tmp_path / "credentials").mkdir()
        (tmp_path / "credentials" / "agent_webkit_auth_token").write_text(credential)
        sources["CREDENTIALS_DIRECTORY"] = str(tmp_path / "credentials")
    return sources


@pytest.mark.parametrize(
    ("env", "file", "credential", "found"),
    [
        ("from-env", "from-file", "from-credential", "from-env"),
        ("", "from-file", "from-credential", "from-file"),  # an empty variable is no value
        (None, "from-file", "from-credential", "from-file"),
        (None, None, "from-credential", "from-credential"),
        (None, None, None, ""),
    ],
)
def test_a_secret_is_the_variable_then_its_file_then_the_systemd_credential(
    tmp_path: Path, env: str | None, file: str | None, credential: str | None, found: str
) -> None:
    assert credentials.secret("AGENT_WEBKIT_AUTH_TOKEN", secret_sources(tmp_path, env, file, credential)) == found


def test_a_secret_file_loses_one_trailing_newline_only(tmp_path: Path) -> None:
    path = tmp_path / "key"
    for content, value in (("k\n", "k"), ("k\r\n", "k"), ("k\n\n", "k\n"), ("k", "k"), (" k \n", " k ")):
        path.write_text(content, newline="")
        assert credentials.secret("KEY", {"KEY_FILE": str(path)}) == value, repr(content)


def test_take_removes_the_variable_and_its_file_pointer(tmp_path: Path) -> None:
    env = secret_sources(tmp_path, "from-env", "from-file", "from-credential")
    assert credentials.take("AGENT_WEBKIT_AUTH_TOKEN", env) == "from-env"
    assert env == {"CREDENTIALS_DIRECTORY": str(tmp_path / "credentials")}


def test_the_model_credential_is_taken_out_of_the_environment_for_the_gateway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "key").write_text("sk-ant-from-a-file\n")
    for name in ("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_AUTH_TOKEN", "CREDENTIALS_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(f"{name}_FILE", raising=False)
    monkeypatch.setenv("AGENT_WEBKIT_AUTH_TOKEN", "admin-token")
    monkeypatch.setenv("ANTHROPIC_API_KEY_FILE", str(tmp_path / "key"))
    secrets = take_secrets(load_config(write(tmp_path, "")))
    assert secrets.model_env == {"ANTHROPIC_API_KEY": "sk-ant-from-a-file"}
    left = {name for name in os.environ if name.startswith(("ANTHROPIC_API_KEY", "AGENT_WEBKIT_AUTH_TOKEN"))}
    assert left == set()


def daemon_with(tmp_path: Path, env: dict[str, str], config: str = "") -> subprocess.CompletedProcess[str]:
    """Start the daemon with only these secrets in reach, expecting it to refuse them."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AGENT_WEBKIT_", "CREDENTIALS_DIRECTORY"))}
    path = tmp_path / "daemon.toml"
    path.write_text(f'[server]\nport = 0\n[store]\nbackend = "memory"\n{config}')
    return subprocess.run([sys.executable, "-m", "agent_webkitd", "--config", str(path)], capture_output=True,
                          text=True, timeout=30, env={**base, **env}, cwd=tmp_path)


@pytest.mark.parametrize(
    ("name", "make", "says"),
    [
        ("missing", lambda p: None, "No such file or directory"),
        ("a-folder", lambda p: p.mkdir(), "Is a directory"),
        ("empty", lambda p: p.write_text("\n"), "is empty"),
        ("binary", lambda p: p.write_bytes(b"hunter2\xff\xfe"), "is not UTF-8 text"),
    ],
)
def test_an_unusable_secret_file_stops_the_daemon_naming_the_variable_and_the_path_never_the_content(
    tmp_path: Path, name: str, make: Any, says: str
) -> None:
    path = tmp_path / name
    make(path)
    done = daemon_with(tmp_path, {"AGENT_WEBKIT_AUTH_TOKEN_FILE": str(path)})
    assert done.returncode == 2, done.stderr
    assert f"config error: AGENT_WEBKIT_AUTH_TOKEN_FILE: {path} " in done.stderr and says in done.stderr
    assert "hunter2" not in done.stderr + done.stdout


def test_an_unreadable_systemd_credential_stops_the_daemon_naming_it(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    (credentials / "agent_webkit_auth_token").mkdir(parents=True)
    done = daemon_with(tmp_path, {"CREDENTIALS_DIRECTORY": str(credentials)})
    assert done.returncode == 2, done.stderr
    assert f"AGENT_WEBKIT_AUTH_TOKEN: the credential {credentials}/agent_webkit_auth_token" in done.stderr


def test_a_token_named_by_auth_tokens_comes_from_a_file_too(tmp_path: Path) -> None:
    (tmp_path / "bot").write_text("bot-token\n")
    entry = '[[auth.tokens]]\nname = "ci"\nenv = "CI_BOT_TOKEN"\n'
    env = {"AGENT_WEBKIT_AUTH_TOKEN": "t", "CI_BOT_TOKEN_FILE": str(tmp_path / "bot")}
    done = run_cli("check-config", "--config", str(write(tmp_path, entry)), env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["auth"]["tokens"][0]["token"] == "<set>"
    done = daemon_with(tmp_path, {"AGENT_WEBKIT_AUTH_TOKEN": "t", "CI_BOT_TOKEN": ""}, entry)
    assert done.returncode == 2
    assert "CI_BOT_TOKEN is not set (nor CI_BOT_TOKEN_FILE, nor the credential ci_bot_token)" in done.stderr
