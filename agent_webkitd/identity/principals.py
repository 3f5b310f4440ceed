"""Who is asking, and what they may see.

Every request is authenticated once into a `Principal`: the `AGENT_WEBKIT_AUTH_TOKEN`
token is `token:default` (an admin), each `[[auth.tokens]]` token is `token:<name>`, a
valid OIDC access token is `jwt:<sub>`, and a stream ticket stands for the principal it
was issued to. `may_see` is the one rule for sessions: the owner and admins see a
session; to anyone else it does not exist (404, exactly as an unknown id).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from ..config import AUTH_TOKEN_ENV, Config, ConfigError
from ..credentials import credential_name, secret
from ..errors import ApiError
from .oidc import JwtVerifier


@dataclass(frozen=True)
class Principal:
    name: str  # token:default, token:<name>, jwt:<sub>
    admin: bool


# The operator's token, and everyone while auth is disabled (a loopback dev setup).
DEFAULT_ADMIN = Principal("token:default", admin=True)


def may_see(principal: Principal, owner: str) -> bool:
    return principal.admin or principal.name == owner


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, {"WWW-Authenticate": "Bearer"})


def static_tokens(config: Config) -> list[tuple[bytes, Principal]]:
    """Every static token with its principal, read at start-up from the environment, a
    `NAME_FILE` or systemd's credentials (credentials.py).
    Several entries with one name are one principal with several tokens, which is how a
    token is rotated without a gap (see the README)."""
    tokens: list[tuple[bytes, Principal]] = []
    admin_token = secret(AUTH_TOKEN_ENV)
    if admin_token:
        tokens.append((admin_token.encode(), DEFAULT_ADMIN))
    admins: dict[str, bool] = {}
    for i, entry in enumerate(config.auth.tokens):
        value = secret(entry.env)
        if not value:
            raise ConfigError(
                f"auth.tokens[{i}].env: {entry.env} is not set (nor {entry.env}_FILE, nor"
                f" the credential {credential_name(entry.env)})"
            )
        if admins.setdefault(entry.name, entry.admin) != entry.admin:
            raise ConfigError(f"auth.tokens: the entries named {entry.name!r} disagree on admin")
        principal = Principal(f"token:{entry.name}", entry.admin)
        if entry.name == "default" and not entry.admin:
            raise ConfigError("auth.tokens: the principal 'default' is the admin token's")
        tokens.append((value.encode(), principal))
    return tokens


class Authenticator:
    """A bearer token to a Principal, or 401."""

    def __init__(self, tokens: list[tuple[bytes, Principal]], jwt: JwtVerifier | None) -> None:
        self._tokens = tokens
        self.jwt = jwt

    async def principal(self, authorization: str) -> Principal:
        scheme, _, given = authorization.strip().partition(" ")
        given = given.strip()
        if scheme.lower() != "bearer" or not given:
            raise unauthorized("missing or invalid bearer token")
        found = self._static(given.encode())
        if found is not None:
            return found
        if self.jwt is not None and given.count(".") == 2:
            name, admin = await self.jwt.verify(given)
            return Principal(f"jwt:{name}", admin)
        raise unauthorized("missing or invalid bearer token")

    def _static(self, given: bytes) -> Principal | None:
        # Compared with every token, in constant time each, so the answer's timing says
        # nothing about which token came close.
        found = None
        for token, principal in self._tokens:
            if hmac.compare_digest(given, token):
                found = principal
        return found
