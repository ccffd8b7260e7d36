"""The datasite's front door: a request costs next to nothing until it is allowed.

syft 0.9.5's routes read a whole body into memory and deserialize the whole API call,
arguments included, before anything checks who sent it (a stranger's 400 MB body raised the
server's memory by 1 GB for good; a guest's call carrying a 1M-integer list took 34 s to be
refused), serve the map of any account's endpoints to anyone who names its public key, and
let any number of passwords be tried. This ASGI middleware runs before all of that, in this
order, for every request:

1. Only the routes this platform uses are served (`ROUTES`); any other is a 404 unread.
2. Each network address has a request budget (a token bucket) and may have at most
   `in_flight_per_address` requests inside at once; past either, a 429 unread. An API call
   signed by an account is charged to the account's budget instead (step 4).
3. The body is bounded before it is read: a Content-Length above the route's limit is a
   413 at once, and the bytes actually received are counted as they arrive, so a chunked
   body is cut off at the same limit, and a body must arrive within `body_seconds` plus
   its size at 256 kB/s (a 408: a slow sender cannot hold connections open). An API call
   may carry the largest weights the site policy allows (`max_model_parameters` float32
   values, plus a quarter for syft's framing, plus 1 MiB) and not more; the hospital's
   own operator, a process of the hospital's own user on this machine, may send up to
   `OPERATOR_BODY_BYTES` (datasets are uploaded so).
   Every other route takes `SMALL_BODY_BYTES`.
4. An API call's signing key and path are read from the capnp frame without deserializing
   its arguments (syft keeps the signed message as bytes; only its `path` and `server_uid`
   fields are decoded). A caller whose role may not call that path (the guard's own lists,
   `datasites.server.guard.access_refusal`) is refused there; an account's signature is
   checked, and the account has a request budget of its own.
5. Logins (`LoginLimits`): each (claimed email, address) pair may have `login_failures`
   failed or pending attempts in a window, each email `email_login_failures` from all
   addresses together, each address `address_login_failures` for all emails together;
   past one, attempts under that key, the right password included, are refused unread for
   `lockout_seconds`. A pair that logged in from that address before (`KNOWN_PAIR_SECONDS`)
   is held to its own limit only: an attacker's failures from elsewhere, or for other
   emails from the same address, do not lock out a scientist who logged in from there.
   Guessing stays bounded (a pair's limit, and the email's limit for every address that
   never logged in as it); locking out an account takes its own address (see README, "a
   reverse proxy").
6. `GET /api` (the map of an account's endpoints) is answered for a key with no account
   (a guest's), for an account's key only to whoever logged in as it (an HMAC cookie set on
   the login reply, which syft's client keeps in its session), and for the admin's key only
   to a process of the hospital's own user on this machine. Its query must hold exactly
   one `verify_key` and one `communication_protocol` that syft can serve here (its latest:
   syft 0.9.5 lists older ones but fails to build a map for them, a 500 and a 14 KB
   traceback in datasite.log each), and nothing else; anything other is a 400 here (a
   repeated `verify_key` was read first here and last by syft). The guest's map is the
   same for every key with no account (3 MB, about 90 ms of the datasite's CPU to build):
   it is built once a minute per protocol by the gate and sent from memory, at most
   `guest_map_burst` of them per address and then one every `1 / guest_map_rate` seconds
   (a client fetches a map at login, as its account, not the guest's).

Every refusal goes to the audit log through `datasites.server.refusals.RefusalAudit`, which
turns a flood into one entry per interval.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import json
import logging
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from datasites.server.guard import access_refusal, is_admin
from datasites.server.refusals import SOURCE, log_unexpected
from datasites.site.audit import AuditLog, Event

if TYPE_CHECKING:
    from syft.server.datasite import Datasite

log = logging.getLogger("datasites.server.gate")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PREFIX = "/api/v2"
# (method, path) -> the body limit kind; everything else syft offers is not served.
ROUTES = {
    ("GET", f"{PREFIX}/metadata"): "none",
    ("GET", f"{PREFIX}/api"): "none",
    ("POST", f"{PREFIX}/api_call"): "call",
    # A secure study's light phases, outside syft's code execution (`server.phase_route`).
    ("POST", f"{PREFIX}/secure_phase"): "small",
    ("POST", f"{PREFIX}/login"): "small",
    ("POST", f"{PREFIX}/register"): "small",
    ("POST", f"{PREFIX}/forgot_password"): "small",
    ("POST", f"{PREFIX}/reset_password"): "small",
}
SMALL_BODY_BYTES = 64 * 1024
OPERATOR_BODY_BYTES = 2 * 1024**3
FRAMING = 1.25  # syft's serialization of float32 weights is within this of their bytes
CALL_OVERHEAD_BYTES = 1024 * 1024
DEFAULT_MAX_PARAMETERS = 5_000_000
COOKIE_PREFIX = "ds_api_"
COOKIE_SECONDS = 30 * 24 * 3600
LOCKED_REPLY = "Too many failed logins from here or for this account; try again in {} s."
API_MAP_PARAMS = ("verify_key", "communication_protocol")
API_MAP_REPLY = (
    b"The API map takes one verify_key and one communication_protocol this datasite speaks "
    b"(%s); send those only."
)
RATE_REPLY = "Too many requests; try again in a moment."
# A pair (email, address) that logged in is held to its own login limit this long.
KNOWN_PAIR_SECONDS = 30 * 24 * 3600.0
GUEST_MAP_SECONDS = 60.0  # the guest's map is built again after this (custom endpoints)
# A body must arrive within `GateSettings.body_seconds` plus its size at this rate.
BODY_BYTES_PER_S = 256 * 1024


def _env(name: str, default: float) -> float:
    try:
        return float(os.environ.get(f"DATASITE_GATE_{name}", default))
    except ValueError:
        return default


@dataclass(frozen=True)
class GateSettings:
    """The gate's limits; each can be set with an environment variable DATASITE_GATE_<NAME>
    (tests shorten the interval and the lockout)."""

    refusal_interval: float = 60.0  # seconds one aggregated audit entry covers
    lockout_seconds: float = 60.0
    login_window: float = 300.0  # failures older than this are forgotten
    login_failures: int = 5  # per (claimed email, address) in a window (pending count)
    email_login_failures: int = 50  # per claimed email, all addresses together
    address_login_failures: int = 20  # per address, all emails together
    address_rate: float = 50.0  # requests per second an address may keep up
    address_burst: float = 500.0
    account_rate: float = 50.0
    account_burst: float = 500.0
    body_seconds: float = 30.0  # a body must arrive within this plus its size at 256 kB/s
    in_flight_per_address: int = 64  # requests one address may have in the datasite at once
    guest_map_rate: float = 0.2  # guest API maps an address may keep fetching, per second
    guest_map_burst: float = 5.0

    @classmethod
    def from_env(cls) -> GateSettings:
        base = cls()
        return cls(
            **{
                name: type(getattr(base, name))(_env(name.upper(), getattr(base, name)))
                for name in cls.__dataclass_fields__
            }
        )


class Buckets:
    """Token buckets by key, at most `size` keys (the least recently used go first)."""

    def __init__(self, rate: float, burst: float, size: int = 10_000) -> None:
        self.rate, self.burst, self.size = rate, burst, size
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str) -> bool:
        now = time.monotonic()
        tokens, then = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        while len(self._buckets) > self.size:
            self._buckets.popitem(last=False)
        return allowed


class LoginLimits:
    """Failed (and pending) logins per key in a sliding window, and lockouts; and the
    (email, address) pairs that logged in lately."""

    def __init__(self, settings: GateSettings, size: int = 10_000) -> None:
        self.settings = settings
        self.size = size
        self._failures: OrderedDict[str, list[float]] = OrderedDict()
        self._pending: dict[str, int] = {}
        self._locked: dict[str, float] = {}
        self._locked_at: dict[str, float] = {}
        self._known: OrderedDict[str, float] = OrderedDict()

    def keys(self, email: str, address: str) -> list[tuple[str, int]]:
        """The keys (and their limits) an attempt for `email` from `address` counts under:
        its pair always; its email's and its address's unless the pair logged in lately."""
        pair = f"pair:{address}\0{email}"
        keys = [(pair, self.settings.login_failures)]
        seen = self._known.get(pair)
        if seen is not None and time.monotonic() - seen < KNOWN_PAIR_SECONDS:
            return keys
        self._known.pop(pair, None)
        keys.append((f"email:{email}", self.settings.email_login_failures))
        keys.append((f"address:{address}", self.settings.address_login_failures))
        return keys

    def logged_in(self, pair: str) -> None:
        """The pair's login succeeded: its failures are forgotten and it is known."""
        self._failures.pop(pair, None)
        self._known.pop(pair, None)
        self._known[pair] = time.monotonic()
        while len(self._known) > self.size:
            self._known.popitem(last=False)

    def locked_for(self, keys: list[tuple[str, int]]) -> float:
        """Seconds the attempt must wait (0: it may go on, and is now pending)."""
        now = time.monotonic()
        for key in [k for k, until in self._locked.items() if until <= now]:
            del self._locked[key]
        for key in [
            k for k, at in self._locked_at.items() if now - at > self.settings.login_window
        ]:
            del self._locked_at[key]
        waits = [self._locked.get(key, 0.0) - now for key, _ in keys]
        if max(waits) > 0:
            return max(waits)
        for key, limit in keys:
            failures = self._recent(key, now)
            if len(failures) + self._pending.get(key, 0) >= limit:
                self._locked[key] = now + self.settings.lockout_seconds
                self._locked_at[key] = now
                self._failures.pop(key, None)
                return self.settings.lockout_seconds
        for key, _ in keys:
            self._pending[key] = self._pending.get(key, 0) + 1
        return 0.0

    def done(self, keys: list[tuple[str, int]], started: float, failed: bool) -> None:
        """An attempt that began at `started` ended; a failure counts unless a lockout
        began meanwhile (the lockout already stands for it)."""
        now = time.monotonic()
        for key, _ in keys:
            self._pending[key] = max(0, self._pending.get(key, 0) - 1)
            if not self._pending[key]:
                del self._pending[key]
            if failed and self._locked_at.get(key, -1.0) < started:
                self._failures.setdefault(key, []).append(now)
                self._failures.move_to_end(key)
        if not failed:
            self.logged_in(keys[0][0])
        while len(self._failures) > self.size:
            self._failures.popitem(last=False)

    def _recent(self, key: str, now: float) -> list[float]:
        kept = [t for t in self._failures.get(key, []) if now - t < self.settings.login_window]
        if kept:
            self._failures[key] = kept
        else:
            self._failures.pop(key, None)
        return kept


class Refused(Exception):
    """The request is answered now with `status` and `body`."""

    def __init__(self, status: int, body: bytes, media: str = "text/plain") -> None:
        super().__init__(status)
        self.status, self.body, self.media = status, body, media


class Gate:
    """ASGI middleware in front of the datasite's FastAPI app (see the module docstring)."""

    def __init__(
        self,
        app: Callable[[Scope, Receive, Send], Awaitable[None]],
        worker: Datasite,
        audit: AuditLog,
        root: Path | None = None,
        settings: GateSettings | None = None,
    ) -> None:
        self.app = app
        self.worker = worker
        self.audit = audit
        self.root = Path(root) if root is not None else audit.path.parent
        self.settings = settings or GateSettings.from_env()
        self.addresses = Buckets(self.settings.address_rate, self.settings.address_burst)
        self.accounts = Buckets(self.settings.account_rate, self.settings.account_burst)
        self.logins = LoginLimits(self.settings)
        self.guest_maps = Buckets(self.settings.guest_map_rate, self.settings.guest_map_burst)
        self._guest_map_cache: dict[str, tuple[float, bytes]] = {}
        self._guest_map_lock: asyncio.Lock | None = None
        self._secret = hashlib.sha256(
            b"datasites api-map cookie\0" + bytes(worker.signing_key.signing_key)
        ).digest()
        self._policy_stamp: float | None = None
        self._in_flight: dict[str, int] = {}  # requests being handled, by address
        self._call_limit = self._limit_for(DEFAULT_MAX_PARAMETERS)

    # -- the request ---------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        address = (scope.get("client") or ("", 0))[0]
        token = SOURCE.set(f"address:{address}")
        busy = self._in_flight.get(address, 0)
        self._in_flight[address] = busy + 1
        try:
            if busy >= self.settings.in_flight_per_address:
                self._refuse("gate", "*", "guest", "requests in flight from the address")
                raise Refused(429, RATE_REPLY.encode())
            await self._handle(scope, receive, send, address)
        except Refused as refused:
            await _respond(send, refused.status, refused.body, refused.media)
        finally:
            SOURCE.reset(token)
            left = self._in_flight.pop(address, 1) - 1
            if left > 0:
                self._in_flight[address] = left

    async def _handle(self, scope: Scope, receive: Receive, send: Send, address: str) -> None:
        method, path = scope["method"], scope["path"]
        kind = ROUTES.get((method, path.rstrip("/") if path != "/" else path))
        if kind is None:
            self._refuse("gate", "unserved route", "guest", f"{method} {path[:120]} is not served")
            raise Refused(404, b"Not Found")
        if kind == "none" and path.endswith("/api"):
            guest_protocol = self._check_api_map(scope, address)  # charged to its account
            if guest_protocol is not None:
                await _respond(send, 200, await self._guest_map(guest_protocol), _OCTET, True)
                return
            await self.app(scope, receive, send)
            return
        if kind != "call":  # a call is charged once its caller is known (`_check_call`)
            self._charge_address(address, path.rsplit("/", 1)[-1])
        if kind == "none":
            await self.app(scope, receive, send)
            return
        body = await self._read_body(scope, receive, kind)
        replay = _replay(body, receive)
        if path.endswith("/api_call"):
            self._check_call(body, address)
            await self.app(scope, replay, send)
        elif path.endswith("/login"):
            await self._login(scope, replay, send, body, address)
        else:
            await self.app(scope, replay, send)

    # -- bodies ----------------------------------------------------------------------------

    def call_limit(self) -> int:
        """Bytes an API call may have: the largest weights the site policy allows."""
        from datasites.site.policy import Policy

        try:
            stamp = (self.root / "policy.toml").stat().st_mtime
        except OSError:
            stamp = None
        if stamp != self._policy_stamp:
            try:
                parameters = Policy.load(self.root).study.max_model_parameters
            except Exception:
                parameters = DEFAULT_MAX_PARAMETERS
            self._call_limit = self._limit_for(parameters)
            self._policy_stamp = stamp
        return self._call_limit

    @staticmethod
    def _limit_for(parameters: int) -> int:
        return int(parameters * 4 * FRAMING) + CALL_OVERHEAD_BYTES

    async def _read_body(self, scope: Scope, receive: Receive, kind: str) -> bytes:
        limit = self.call_limit() if kind == "call" else SMALL_BODY_BYTES
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            limit = self._operator_limit(scope, kind, limit, declared)
            if declared > limit:
                raise Refused(413, b"Request body too large")
        # The body must come at a pace: a slow sender holds a connection (and a file
        # descriptor) only this long, however many bytes a second it trickles.
        deadline = time.monotonic() + self.settings.body_seconds
        deadline += (declared or limit) / BODY_BYTES_PER_S
        chunks: list[bytes] = []
        received = 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), deadline - time.monotonic())
            except TimeoutError:
                self._refuse("gate", scope["path"].rsplit("/", 1)[-1], "guest", "a slow body")
                raise Refused(408, b"The request body came too slowly.") from None
            if message["type"] == "http.disconnect":
                raise Refused(400, b"the client went away")
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > limit:
                limit = self._operator_limit(scope, kind, limit, received)
                if received > limit:
                    chunks.clear()
                    raise Refused(413, b"Request body too large")
            if chunk:
                chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _operator_limit(self, scope: Scope, kind: str, limit: int, size: int) -> int:
        """`OPERATOR_BODY_BYTES` for an API call from the hospital's own user on this
        machine; otherwise the refusal is audited and `limit` stays."""
        if kind == "call" and size <= OPERATOR_BODY_BYTES and _same_user_peer(scope):
            return OPERATOR_BODY_BYTES
        where = scope["path"].rsplit("/", 1)[-1] or scope["path"]
        self._refuse("gate", where, "guest", f"a body of {size} bytes; the limit is {limit}")
        return limit

    # -- API calls -------------------------------------------------------------------------

    def _charge_address(self, address: str, path: str) -> None:
        if not self.addresses.take(address):
            self._refuse("gate", path, "guest", "request rate of the address")
            raise Refused(429, RATE_REPLY.encode(), "text/plain")

    def _check_call(self, body: bytes, address: str) -> None:
        """Refuse, before syft deserializes the arguments, a call its caller may not make.

        A call signed by an account is charged to the account's budget, any other to its
        address's: a stranger's flood from a shared address does not starve the account."""
        try:
            key, signature, message, path, server_uid = peek_call(body)
        except Exception:
            self._charge_address(address, "api_call")
            raise Refused(400, b"not a signed syft API call") from None
        role = self.worker.get_role_for_credentials(credentials=key)
        user = self._email(key)
        reason = access_refusal(role, path, server_uid == self.worker.id)
        if user != "guest" and _signed(key, message, signature):
            SOURCE.set(f"{'operator' if is_admin(role) else 'account'}:{user}")
            if not self.accounts.take(user):
                self._refuse("gate", path, user, "request rate of the account")
                raise Refused(429, RATE_REPLY.encode())
        else:
            self._charge_address(address, path)
            if reason is None and user != "guest":
                reason = "the call's signature is invalid"
        if reason is not None:
            self._refuse("guard", path, user, reason, stage="before its arguments were read")
            raise Refused(200, self._call_error(f"refused by this hospital: {reason}."), _OCTET)

    def _email(self, key: Any) -> str:
        try:
            user = self.worker.services.user.stash.get_by_verify_key(
                credentials=self.worker.verify_key, verify_key=key
            ).unwrap()
            return str(user.email)
        except Exception:
            return "guest"

    def _call_error(self, message: str) -> bytes:
        from syft.client.api import SyftAPIData
        from syft.serde.serialize import _serialize
        from syft.service.response import SyftError

        signed = SyftAPIData(data=SyftError(message=message)).sign(self.worker.signing_key)
        return _serialize(signed, to_bytes=True)

    # -- the API map -----------------------------------------------------------------------

    def _check_api_map(self, scope: Scope, address: str) -> str | None:
        """Refuse an API map the caller may not have; the protocol of a guest's map (which
        the gate answers itself), None for an account's (syft answers)."""
        from syft.server.credentials import SyftVerifyKey

        query = _api_map_query(scope)
        if query is None:
            self._charge_address(address, "api")
            self._refuse("gate", "api", "guest", "the API map with a malformed query")
            raise Refused(400, API_MAP_REPLY % ", ".join(_protocols()).encode())
        text = query["verify_key"]
        try:
            key = SyftVerifyKey.from_string(text)
        except Exception:
            self._charge_address(address, "api")
            self._refuse("gate", "api", "guest", "the API map of a malformed key")
            raise Refused(400, b"verify_key is not a key") from None
        email = self._email(key)
        if email == "guest":
            self._charge_address(address, "api")
            if not self.guest_maps.take(address):
                self._refuse("gate", "api", "guest", "guest API map rate of the address")
                raise Refused(429, RATE_REPLY.encode())
            return query["communication_protocol"]  # a key with no account: the guest's map
        role = self.worker.get_role_for_credentials(credentials=key)
        proven = _same_user_peer(scope) if is_admin(role) else self._cookie_holds(scope, text)
        if proven:
            if not self.accounts.take(email):
                self._refuse("gate", "api", email, "request rate of the account")
                raise Refused(429, RATE_REPLY.encode())
            return None
        self._charge_address(address, "api")
        self._refuse("gate", "api", "guest", f"the API map of {email}'s key, without its login")
        raise Refused(403, b"The API map is served to its own account only.")

    async def _guest_map(self, protocol: str) -> bytes:
        """The guest's API map for `protocol`, serialized: built for a fresh key with no
        account at most once every `GUEST_MAP_SECONDS` (what syft would build for any such
        key; only the objects' random ids and dates differ), then sent from memory."""
        if self._guest_map_lock is None:
            self._guest_map_lock = asyncio.Lock()
        async with self._guest_map_lock:
            built = self._guest_map_cache.get(protocol)
            if built is None or time.monotonic() - built[0] > GUEST_MAP_SECONDS:
                blob = await asyncio.to_thread(self._build_guest_map, protocol)
                built = self._guest_map_cache[protocol] = (time.monotonic(), blob)
            return built[1]

    def _build_guest_map(self, protocol: str) -> bytes:
        from syft.serde.serialize import _serialize
        from syft.server.credentials import SyftSigningKey

        key = SyftSigningKey.generate().verify_key
        version: Any = int(protocol) if protocol.isdigit() else protocol
        return _serialize(self.worker.get_api(key, version), to_bytes=True)

    def _cookie(self, verify_key: str, expires: int) -> str:
        mac = hmac.new(self._secret, f"{verify_key}.{expires}".encode(), "sha256").hexdigest()
        return f"{expires}.{mac}"

    def _cookie_holds(self, scope: Scope, verify_key: str) -> bool:
        cookies = SimpleCookie()
        for name, value in scope.get("headers", []):
            if name == b"cookie":
                try:
                    cookies.load(value.decode("latin-1"))
                except Exception:
                    return False
        morsel = cookies.get(COOKIE_PREFIX + verify_key[:16])
        if morsel is None:
            return False
        expires, _, _ = morsel.value.partition(".")
        if not expires.isdigit() or int(expires) < time.time():
            return False
        return hmac.compare_digest(morsel.value, self._cookie(verify_key, int(expires)))

    # -- logins ----------------------------------------------------------------------------

    async def _login(
        self, scope: Scope, receive: Receive, send: Send, body: bytes, address: str
    ) -> None:
        try:
            email = str(json.loads(body).get("email", ""))[:254].strip().lower()
        except Exception:
            email = ""
        keys = self.logins.keys(email, address)
        started = time.monotonic()
        wait = self.logins.locked_for(keys)
        if wait > 0:
            self._refuse("gate", "login", email, "too many failed logins (locked out)")
            reply = _error_bytes(LOCKED_REPLY.format(max(1, round(wait))))
            raise Refused(429, reply, _OCTET)
        start: Message = {}
        parts: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = dict(message)
            elif message["type"] == "http.response.body":
                parts.append(message.get("body", b""))

        failed = True
        try:
            await self.app(scope, receive, capture)
            reply = b"".join(parts)
            verify_key = _logged_in_key(reply)
            failed = verify_key is None
        finally:
            self.logins.done(keys, started, failed)
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(reply)).encode()))
        if verify_key is not None:
            expires = int(time.time()) + COOKIE_SECONDS
            cookie = (
                f"{COOKIE_PREFIX}{verify_key[:16]}={self._cookie(verify_key, expires)}; "
                f"Path={PREFIX}; Max-Age={COOKIE_SECONDS}; HttpOnly; SameSite=Strict"
            )
            headers.append((b"set-cookie", cookie.encode("latin-1")))
        await send(
            {"type": "http.response.start", "status": start.get("status", 200), "headers": headers}
        )
        await send({"type": "http.response.body", "body": reply})

    # -- audit -----------------------------------------------------------------------------

    def _refuse(self, layer: str, path: str, user: str, reason: str, **extra: Any) -> None:
        try:
            self.audit.append(
                Event.REFUSED, layer=layer, path=path[:200], user=user[:254], reason=reason, **extra
            )
        except Exception as error:
            log_unexpected(log, "could not write the audit entry for a refused request", error)


_OCTET = "application/octet-stream"


# -- helpers -------------------------------------------------------------------------------


@functools.cache
def _protocols() -> tuple[str, ...]:
    """The communication protocols syft's API map can be built for here, as query text.

    syft 0.9.5 lists 1 to 4 as supported, but a map for any protocol older than its latest
    needs its signatures downgraded, and that fails on every `X | Y` annotation (`TypeError:
    type 'types.UnionType' is not subscriptable`: a 500 and a 14 KB traceback in
    datasite.log). Its client asks for the highest protocol both sides list, the latest;
    so the latest is the one served."""
    from syft.protocol.data_protocol import get_data_protocol

    return (str(get_data_protocol().latest_version),)


def _api_map_query(scope: Scope) -> dict[str, str] | None:
    """`GET /api`'s query as syft will read it (Starlette's parsing), when it holds each of
    `API_MAP_PARAMS` once, nothing else, and a protocol this datasite speaks; else None."""
    try:
        pairs = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    except Exception:
        return None
    query = dict(pairs)
    if len(pairs) != len(API_MAP_PARAMS) or sorted(query) != sorted(API_MAP_PARAMS):
        return None
    if query["communication_protocol"] not in _protocols():
        return None
    return query


async def _respond(send: Send, status: int, body: bytes, media: str, keep: bool = False) -> None:
    headers = [
        (b"content-type", media.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    if not keep:
        headers.append((b"connection", b"close"))
    if status == 429:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                raise Refused(400, b"bad Content-Length") from None
    return None


def _error_bytes(message: str) -> bytes:
    from syft.serde.serialize import _serialize
    from syft.service.response import SyftError

    return _serialize(SyftError(message=message), to_bytes=True)


def _logged_in_key(reply: bytes) -> str | None:
    """The verify key a successful login handed out; None for any refusal."""
    from syft.serde.deserialize import _deserialize
    from syft.service.user.user import UserPrivateKey

    try:
        answer = _deserialize(reply, from_bytes=True)
    except Exception:
        return None
    if not isinstance(answer, UserPrivateKey):
        return None
    return str(answer.signing_key.verify_key)


def _signed(key: Any, message: bytes, signature: bytes) -> bool:
    try:
        key.verify_key.verify(message, signature)
        return True
    except Exception:
        return False


def peek_call(body: bytes) -> tuple[Any, bytes, bytes, str, Any]:
    """(verify key, signature, serialized message, path, server uid) of a serialized
    `SignedSyftAPICall`, decoding nothing of the message but its path and server uid."""
    from syft.serde.deserialize import _deserialize
    from syft.serde.recursive import combine_bytes, recursive_scheme

    words = len(body) // 8 + 1024
    with recursive_scheme.from_bytes(body, traversal_limit_in_words=words) as outer:
        if outer.canonicalName != "SignedSyftAPICall":
            raise ValueError("not a signed API call")
        fields = {
            name: combine_bytes(data)
            for name, data in zip(outer.fieldsName, outer.fieldsData, strict=False)
            if name in ("credentials", "signature", "serialized_message")
        }
    key = _deserialize(fields["credentials"], from_bytes=True)
    signature = _deserialize(fields["signature"], from_bytes=True)
    message = _deserialize(fields["serialized_message"], from_bytes=True)
    if not isinstance(message, bytes) or not isinstance(signature, bytes):
        raise ValueError("not a signed API call")
    words = len(message) // 8 + 1024
    with recursive_scheme.from_bytes(message, traversal_limit_in_words=words) as inner:
        if inner.canonicalName != "SyftAPICall":
            raise ValueError("not an API call")
        wanted = {
            name: combine_bytes(data)
            for name, data in zip(inner.fieldsName, inner.fieldsData, strict=False)
            if name in ("path", "server_uid")
        }
    path = _deserialize(wanted["path"], from_bytes=True)
    server_uid = _deserialize(wanted["server_uid"], from_bytes=True)
    if not isinstance(path, str):
        raise ValueError("the call's path is not text")
    return key, signature, message, path, server_uid


# -- who is on the other end of a local connection ------------------------------------------


def _same_user_peer(scope: Scope) -> bool:
    """True when the peer is a socket on this machine owned by this process's user: the
    hospital's operator (its tools run as the hospital's account). Read from /proc/net/tcp*
    (Linux); anything else, or any doubt, is False."""
    client, server = scope.get("client"), scope.get("server")
    if not client or not server:
        return False
    try:
        return _socket_uid(client[0], int(client[1]), server[0], int(server[1])) == os.getuid()
    except Exception:
        return False


def _socket_uid(peer_ip: str, peer_port: int, server_ip: str, server_port: int) -> int | None:
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        want_local = (_packed(peer_ip, family), peer_port)
        want_remote = (_packed(server_ip, family), server_port)
        for line in lines:
            parts = line.split()
            if len(parts) < 8:
                continue
            local, remote = _endpoint(parts[1]), _endpoint(parts[2])
            if local == want_local and remote == want_remote:
                return int(parts[7])
    return None


def _packed(ip: str, family: int) -> bytes | None:
    try:
        if family == socket.AF_INET6 and ":" not in ip:
            return socket.inet_pton(socket.AF_INET6, "::ffff:" + ip)
        return socket.inet_pton(family, ip)
    except OSError:
        return None


def _endpoint(text: str) -> tuple[bytes, int]:
    """/proc/net/tcp's `hexaddress:hexport`, the address as 32-bit little-endian words."""
    address, port = text.split(":")
    raw = bytes.fromhex(address)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return words, int(port, 16)
