"""Stream tickets: short-lived, read-only passes for the browser's native EventSource,
which cannot send an Authorization header.

A ticket is an HS256 token naming one session and the principal it was issued to,
signed with the ticket key: `AGENT_WEBKIT_TICKET_KEY`, or one derived from
`AGENT_WEBKIT_AUTH_TOKEN` when that is unset, so hosts that share a store and a token
accept each other's tickets. It is good for that session's stream only, any number of
times until it expires (EventSource reconnects by itself, with `Last-Event-ID`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

import jwt

from .principals import Principal

AUDIENCE = "agent-webkitd:stream"
ALGORITHM = "HS256"


def ticket_key(configured: str, admin_token: str) -> bytes:
    """The signing key: the configured one, else derived from the admin token (never the
    token itself), else random for this process (auth disabled: tickets are not needed)."""
    if configured:
        return configured.encode()
    if admin_token:
        return hmac.new(
            admin_token.encode(), b"agent-webkitd stream tickets", hashlib.sha256
        ).digest()
    return secrets.token_bytes(32)


class Tickets:
    def __init__(self, key: bytes, ttl_s: float) -> None:
        self._key = key
        self.ttl_s = ttl_s

    def issue(self, session_id: str, principal: Principal) -> str:
        now = int(time.time())
        claims = {
            "aud": AUDIENCE,
            "sid": session_id,
            "sub": principal.name,
            "adm": principal.admin,
            "iat": now,
            "exp": now + int(self.ttl_s),
        }
        return jwt.encode(claims, self._key, algorithm=ALGORITHM)

    def principal(self, ticket: str, session_id: str) -> Principal | None:
        """Whom the ticket stands for on this session's stream; None if it is not valid
        there (forged, expired, or issued for another session)."""
        try:
            claims = jwt.decode(
                ticket,
                self._key,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                options={"require": ["exp", "sub", "sid", "aud"]},
            )
        except jwt.InvalidTokenError:
            return None
        if claims.get("sid") != session_id or not isinstance(claims.get("sub"), str):
            return None
        return Principal(claims["sub"], claims.get("adm") is True)
