"""A local stand-in of an OIDC identity provider: it publishes a JWKS on loopback and
mints access tokens with its keys (and, for attack tests, with anything else).

    async with run_idp() as idp:
        token = idp.token("alice")                       # RS256, valid for an hour
        idp.token("alice", alg="ES256")                  # the EC key
        idp.token("alice", exp_in=-60)                   # expired
        idp.rotate()                                     # a new key the daemon has not seen
        idp.mode = "hang"                                # JWKS requests never answer
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import jwt
import pytest_asyncio
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

ISSUER = "https://idp.test/"
AUDIENCE = "agent-webkitd"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Idp:
    def __init__(self) -> None:
        self.keys: dict[str, Any] = {}  # kid -> private key
        self.published: list[str] = []  # kids in the JWKS
        self.mode = "ok"  # ok | hang | error
        self.fetches = 0
        self.url = ""
        self._n = 0
        self.add_key("RS256")
        self.add_key("ES256")

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/jwks.json"

    def add_key(self, alg: str, *, publish: bool = True) -> str:
        self._n += 1
        kid = f"{alg.lower()}-{self._n}"
        if alg.startswith("RS"):
            self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            self.keys[kid] = ec.generate_private_key(ec.SECP256R1())
        if publish:
            self.published.append(kid)
        return kid

    def rotate(self) -> str:
        """A new RS256 key, published: the daemon has not seen it yet."""
        return self.add_key("RS256")

    def kid(self, alg: str) -> str:
        return next(k for k in self.published if k.startswith(alg.lower()))

    def jwks(self) -> dict[str, Any]:
        entries = []
        for kid in self.published:
            public = self.keys[kid].public_key()
            algo = RSAAlgorithm if isinstance(public, rsa.RSAPublicKey) else ECAlgorithm
            jwk = json.loads(algo.to_jwk(public))
            entries.append({**jwk, "kid": kid, "use": "sig"})
        return {"keys": entries}

    def public_pem(self, kid: str) -> bytes:
        key: bytes = self.keys[kid].public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return key

    def claims(self, sub: str, exp_in: float = 3600, **extra: Any) -> dict[str, Any]:
        now = int(time.time())
        return {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + int(exp_in), **extra}

    def token(
        self, sub: str, *, alg: str = "RS256", kid: str | None = None, exp_in: float = 3600,
        headers: dict[str, Any] | None = None, drop: tuple[str, ...] = (), **claims: Any,
    ) -> str:
        """A token signed with key `kid` (default: the published one for `alg`); `drop`
        leaves claims out ("kid" leaves out the header's kid)."""
        kid = kid or self.kid(alg)
        body = {k: v for k, v in self.claims(sub, exp_in, **claims).items() if k not in drop}
        header = {} if "kid" in drop else {"kid": kid}
        return jwt.encode(body, self.keys[kid], algorithm=alg, headers={**header, **(headers or {})})

    def unsigned(self, sub: str) -> str:
        """`alg: none`: no signature at all."""
        header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": self.kid("RS256")}).encode())
        return f"{header}.{_b64(json.dumps(self.claims(sub)).encode())}."

    def hs256_with_public_key(self, sub: str) -> str:
        """The classic confusion attack: HMAC keyed with the RSA public key's PEM."""
        kid = self.kid("RS256")
        header = {"alg": "HS256", "typ": "JWT", "kid": kid}
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(self.claims(sub)).encode())}"
        sig = hmac.new(self.public_pem(kid), signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{_b64(sig)}"

    async def handle_jwks(self, request: web.Request) -> web.StreamResponse:
        self.fetches += 1
        if self.mode == "hang":
            await asyncio.sleep(3600)
        if self.mode == "error":
            return web.Response(status=503, text="down for maintenance")
        return web.json_response(self.jwks())


@asynccontextmanager
async def run_idp() -> AsyncIterator[Idp]:
    idp = Idp()
    app = web.Application()
    app.router.add_get("/jwks.json", idp.handle_jwks)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    idp.url = f"http://127.0.0.1:{port}"
    try:
        yield idp
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture
async def idp() -> AsyncIterator[Idp]:
    """A fresh identity provider on loopback (import it into a test module to use it)."""
    async with run_idp() as provider:
        yield provider


def jwt_config(idp: Idp, **extra: Any) -> dict[str, Any]:
    """The daemon's [auth.jwt] table for this identity provider."""
    return {
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "jwks_url": idp.jwks_url,
        "algorithms": ["RS256", "ES256"],
        "leeway_s": 0,
        **extra,
    }
