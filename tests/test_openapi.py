"""The OpenAPI document: it covers the running app's routes exactly (both ways), the copy
in conf/ is current, every schema is valid JSON Schema 2020-12, and the daemon serves it
without a token."""

from __future__ import annotations

import json
from pathlib import Path

from jsonschema import Draft202012Validator

from agent_webkitd.agents.gateway import ModelGateway
from agent_webkitd.agents.sandbox import Confinement
from agent_webkitd.agents.workspaces import Workspaces
from agent_webkitd.config import Config
from agent_webkitd.http.routes import build_app
from agent_webkitd.metrics import Metrics
from agent_webkitd.protocol import openapi
from agent_webkitd.sessions.supervisor import Supervisor
from agent_webkitd.stores.memory import MemoryStore
from agent_webkitd.usage.budgets import Budgets
from agent_webkitd.usage.ledger import Ledger
from agent_webkitd.usage.prices import Prices
from tests.conftest import Daemon, api_for

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("get", "post", "put", "patch", "delete")


async def test_the_document_and_the_app_have_exactly_the_same_routes(tmp_path: Path) -> None:
    config = Config()
    gateway = ModelGateway("http://127.0.0.1:9", None, tmp_path / "model.sock", tcp=True)  # not started
    confinement = Confinement(config.agent, gateway, tmp_path, ())
    store, metrics = MemoryStore(), Metrics()
    ledger = Ledger(store, Prices({}), Budgets(()), metrics, shared=False)
    supervisor = Supervisor(config, store, metrics, confinement, Workspaces(tmp_path), ledger)
    app = build_app(config, supervisor, "token")  # type: ignore[arg-type]
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    documented = {
        (method, path)
        for path, item in openapi.document()["paths"].items()
        for method in item
        if method in METHODS
    }
    assert served - documented == set(), "routes the document does not describe"
    assert documented - served == set(), "documented routes the app does not serve"


def test_the_copy_in_conf_is_current() -> None:
    committed = (ROOT / "conf" / "openapi.json").read_text()
    assert committed == openapi.render(), "run `make openapi` and commit conf/openapi.json"


def test_every_schema_is_valid_json_schema_and_every_reference_resolves() -> None:
    document = openapi.document()
    assert document["openapi"].startswith("3.1")
    text = json.dumps(document)
    for schema in document["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    for target in {part.split('"')[0] for part in text.split('"$ref": "')[1:]}:
        name = target.removeprefix(openapi.SCHEMA_PREFIX)
        assert name in document["components"]["schemas"], f"dangling $ref {target}"


def test_every_error_code_the_document_lists_is_one_the_daemon_uses() -> None:
    sources = "".join(p.read_text() for p in (ROOT / "agent_webkitd").rglob("*.py") if p.name != "openapi.py")
    for path, item in openapi.document()["paths"].items():
        for method in (m for m in item if m in METHODS):
            for status, response in item[method]["responses"].items():
                for code in response.get("x-error-codes", []):
                    assert f'"{code}"' in sources, f"{method} {path} {status}: {code} is never raised"


async def test_the_daemon_serves_the_document_without_a_token(daemon: Daemon) -> None:
    async with api_for(daemon, token=None) as api:
        status, document, headers = await api.request("GET", "/openapi.json")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert document == openapi.document()
