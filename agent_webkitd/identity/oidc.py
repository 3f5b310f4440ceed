"""OIDC access tokens: verified with the identity provider's published keys (JWKS).

The keys are fetched with aiohttp, never on the event loop's critical path for a key
already known: a token whose `kid` is cached is verified at once, whatever the identity
provider is doing. An unknown `kid` triggers one refetch (shared by every request
waiting for it), at most every `REFETCH_MIN_S`; a failed fetch keeps the last good
keys. The algorithm list is the operator's, never the token's; `exp`, `iss`, `aud`,
`sub` and a `kid` are required; `jku`, `jwk` and `x5u` headers are never looked at.
Verified tokens are remembered until they expire (verifying one costs 60-100 µs, a
noticeable share of a request), and forgotten when the key set changes.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
import structlog

from ..config import JwtConfig

log = structlog.get_logger(__name__)

REFETCH_MIN_S = 30.0  # an unknown kid refetches the JWKS at most this often
REFRESH_S = 300.0  # and the keys are refreshed in the background this often
FETCH_TIMEOUT_S = 5.0
MAX_JWKS_BYTES = 1_048_576
VERIFIED_CACHE_SIZE = 10_000


class InvalidToken(Exception):
    """Why a token was refused; `reason` is a stable label for metrics."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class JwksKeys:
    """The signing keys of one JWKS URL, by kid."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.keys: dict[str, SigningKey] = {}
        self.on_change: list[Any] = []
        self._http: aiohttp.ClientSession | None = None
        self._fetch: asyncio.Task[None] | None = None
        self._last_kid_fetch = float("-inf")  # the last refetch an unknown kid caused
        self._refresher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S),
            headers={"Accept": "application/json"},
        )
        self._refresher = asyncio.create_task(self._refresh_forever(), name="jwks-refresh")

    async def stop(self) -> None:
        for task in (self._refresher, self._fetch):
            if task is not None:
                task.cancel()
        if self._http is not None:
            await self._http.close()

    async def key(self, kid: str) -> SigningKey | None:
        known = self.keys.get(kid)
        if known is not None:
            return known
        if self._fetch is None:
            if time.monotonic() - self._last_kid_fetch < REFETCH_MIN_S:
                return None  # asked recently; unknown kids must not hammer the provider
            self._last_kid_fetch = time.monotonic()
        await asyncio.shield(self._refetch())
        return self.keys.get(kid)

    def _refetch(self) -> asyncio.Task[None]:
        """The fetch in flight, or a new one: concurrent callers share it."""
        if self._fetch is None:
            self._fetch = asyncio.create_task(self._load(), name="jwks-fetch")
            self._fetch.add_done_callback(self._fetch_done)
        return self._fetch

    def _fetch_done(self, task: asyncio.Task[None]) -> None:
        self._fetch = None

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.shield(self._refetch())
            await asyncio.sleep(REFRESH_S)

    async def _load(self) -> None:
        assert self._http is not None
        try:
            async with self._http.get(self.url, allow_redirects=False) as resp:
                if resp.status != 200:
                    raise ValueError(f"HTTP {resp.status}")
                body = await resp.content.read(MAX_JWKS_BYTES + 1)
            if len(body) > MAX_JWKS_BYTES:
                raise ValueError("the JWKS is larger than 1 MiB")
            keys = parse_jwks(body)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            # The identity provider is away or answers nonsense: keep the keys we have.
            log.warning(
                "jwks_fetch_failed",
                url=self.url,
                error=f"{type(exc).__name__}: {exc}",
                keys_kept=len(self.keys),
            )
            return
        if keys.keys() != self.keys.keys():
            log.info("jwks_loaded", url=self.url, kids=sorted(keys))
        changed = keys != self.keys
        self.keys = keys
        if changed:
            for callback in self.on_change:
                callback()


@dataclass(frozen=True)
class SigningKey:
    key: Any  # a public key object of `cryptography`
    alg: str | None  # the algorithm the JWKS pins this key to, if it says


def parse_jwks(body: bytes) -> dict[str, SigningKey]:
    """The usable signing keys of a JWKS document, by kid. Keys without a kid, keys for
    encryption, and keys of a type this build cannot use are left out."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise ValueError(f"the JWKS is not JSON: {exc}") from None
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ValueError("the JWKS has no 'keys' list")
    keys: dict[str, SigningKey] = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
            continue
        if entry.get("use", "sig") != "sig" or entry.get("kty") == "oct":
            continue  # never a shared secret: a JWKS is public
        try:
            alg = entry.get("alg") if isinstance(entry.get("alg"), str) else None
            keys[entry["kid"]] = SigningKey(jwt.PyJWK(entry).key, alg)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
            continue
    return keys


class JwtVerifier:
    def __init__(self, config: JwtConfig) -> None:
        self.config = config
        self.keys = JwksKeys(config.jwks_url)
        self.keys.on_change.append(self._forget_verified)
        self._verified: dict[str, tuple[str, bool, float]] = {}  # token -> sub, admin, exp

    async def start(self) -> None:
        await self.keys.start()

    async def stop(self) -> None:
        await self.keys.stop()

    def _forget_verified(self) -> None:
        self._verified.clear()

    async def verify(self, token: str) -> tuple[str, bool]:
        """The token's subject and whether it is an admin, or InvalidToken."""
        known = self._verified.get(token)
        if known is not None and known[2] > time.time():
            return known[0], known[1]
        sub, admin, exp = await self._verify(token)
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified.clear()
        self._verified[token] = (sub, admin, exp + self.config.leeway_s)
        return sub, admin

    async def _verify(self, token: str) -> tuple[str, bool, float]:
        config = self.config
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise InvalidToken("malformed", "the bearer token is not a valid JWT") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in config.algorithms:
            raise InvalidToken("algorithm", f"the token's algorithm {alg!r} is not accepted")
        if not isinstance(kid, str) or not kid:
            raise InvalidToken("no_kid", "the token has no key id (kid)")
        key = await self.keys.key(kid)
        if key is None:
            raise InvalidToken("unknown_key", "the token's key id is not among the issuer's keys")
        if key.alg is not None and key.alg != alg:
            raise InvalidToken("algorithm", f"key {kid!r} is for {key.alg}, not {alg}")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key.key,
                algorithms=[alg],
                audience=config.audience,
                issuer=config.issuer,
                leeway=config.leeway_s,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("expired", "the token has expired") from None
        except (jwt.InvalidTokenError, jwt.InvalidKeyError) as exc:
            raise InvalidToken("invalid", f"the token is not valid: {exc}") from None
        sub = claims["sub"]
        if not isinstance(sub, str) or not sub:
            raise InvalidToken("invalid", "the token's sub must be a non-empty string")
        return sub, self._is_admin(claims), float(claims["exp"])

    def _is_admin(self, claims: dict[str, Any]) -> bool:
        wanted = self.config.admin_scope
        if not wanted:
            return False
        granted: list[str] = []
        for claim in ("scope", "scp"):
            value = claims.get(claim)
            if isinstance(value, str):
                granted += value.split()
            elif isinstance(value, list):
                granted += [v for v in value if isinstance(v, str)]
        return wanted in granted
