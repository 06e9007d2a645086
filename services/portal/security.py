"""The portal's defences: response headers, CSRF tokens, per-address rate limits, HTML
sanitising of policy bodies.

* Headers: a strict Content-Security-Policy (no script at all, styles only from this origin,
  forms post only here, no framing), X-Frame-Options DENY, Referrer-Policy no-referrer (the
  portal URL holds the customer's token, it must never leak in a Referer), nosniff, and
  ``Cache-Control: no-store`` on every page (all pages are personal or staff-only).
* CSRF: synchronizer tokens bound to what the form acts on: HMAC-SHA256 (key derived from
  the master key) over a purpose string such as the portal link's id or the session digest.
  The pre-login form gets its own random cookie to bind to. A POST without the right token is
  refused with 403 before anything is read from the ledger; a POST whose ``Origin`` is another
  site is refused too.
* Rate limit: a token bucket per client address (the peer, or the client named by a trusted
  proxy in ``X-Forwarded-For``), kept in the app.
* Sanitising: nh3 (ammonia) with a small allow-list, used when a chapter body is saved AND
  when it is rendered, so an old event with unsafe HTML still renders inert.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Final
from urllib.parse import urlsplit

import nh3
from aiohttp import web

CSP: Final = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS: Final[dict[str, str]] = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}
NO_STORE: Final = "no-store"


def security_headers_middleware(*, hsts: bool) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def add_headers(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                          ) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = exc
            _apply(response, request, hsts)
            raise
        _apply(response, request, hsts)
        return response

    return add_headers


def _apply(response: web.StreamResponse, request: web.Request, hsts: bool) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if hsts:
        response.headers.setdefault("Strict-Transport-Security", "max-age=31536000; includeSubDomains")
    if not request.path.startswith("/static/"):
        response.headers["Cache-Control"] = NO_STORE
        response.headers.setdefault("Pragma", "no-cache")


# -- CSRF --------------------------------------------------------------------------------


class Csrf:
    """Issues and checks form tokens bound to a purpose (link, session, pre-login cookie)."""

    FIELD: Final = "csrf_token"

    def __init__(self, master_key: bytes) -> None:
        self._key = hmac.new(master_key, b"portal csrf v1", hashlib.sha256).digest()

    def token(self, purpose: str) -> str:
        return hmac.new(self._key, purpose.encode(), hashlib.sha256).hexdigest()

    def valid(self, purpose: str, sent: str | None) -> bool:
        if not sent or len(sent) != 64:
            return False
        return hmac.compare_digest(self.token(purpose), sent)


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of a URL (the portal's public base URL)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def same_origin(request: web.Request, public_origin: str) -> bool:
    """False when the browser says the POST came from another site. ``Origin`` is compared
    with this server's own origin and its public one (behind a TLS proxy the request arrives
    as http); under ``Referrer-Policy: no-referrer`` browsers send ``Origin: null`` for form
    posts, and then ``Sec-Fetch-Site`` decides. With neither (old browsers, scripts) the
    CSRF token alone decides."""
    origin = request.headers.get("Origin")
    if origin is not None and origin != "null":
        return origin in (f"{request.scheme}://{request.host}", public_origin)
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site in ("same-origin", "none")
    return True


def client_address(request: web.Request, trusted_proxies: frozenset[str]) -> str:
    """The address a rate limit counts: the peer, or, when the peer is a trusted proxy,
    the nearest address in ``X-Forwarded-For`` that is not one of ours (the rightmost
    untrusted hop: the ones left of it are whatever the client chose to send)."""
    remote = request.remote or "unknown"
    if remote in trusted_proxies:
        hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
        for hop in reversed(hops):
            if hop not in trusted_proxies:
                return hop[:64]
    return remote


# -- rate limit --------------------------------------------------------------------------


class RateLimiter:
    """A token bucket per client address: ``burst`` requests at once, refilled at
    ``per_minute``. ``per_minute <= 0`` turns it off. Memory is bounded: idle buckets
    (full again) are dropped when the table grows."""

    def __init__(self, per_minute: int, burst: int, *, clock: Callable[[], float] = time.monotonic,
                 max_entries: int = 100_000) -> None:
        self.per_minute = per_minute
        self.burst = max(1, burst)
        self._rate = per_minute / 60.0
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._max_entries = max_entries

    def allow(self, address: str) -> bool:
        if self.per_minute <= 0:
            return True
        now = self._clock()
        tokens, last = self._buckets.get(address, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self._rate)
        if tokens < 1.0:
            self._buckets[address] = (tokens, now)
            return False
        self._buckets[address] = (tokens - 1.0, now)
        if len(self._buckets) > self._max_entries:
            self._prune(now)
        return True

    def retry_after(self) -> int:
        return max(1, int(60 / self.per_minute) + 1) if self.per_minute > 0 else 1

    def _prune(self, now: float) -> None:
        full_after = self.burst / self._rate if self._rate else 0.0
        self._buckets = {a: v for a, v in self._buckets.items() if now - v[1] < full_after}
        if len(self._buckets) > self._max_entries:
            self._buckets.clear()


# -- sanitising --------------------------------------------------------------------------

ALLOWED_TAGS: Final = frozenset({
    "p", "br", "ul", "ol", "li", "strong", "b", "em", "i", "u", "a", "h3", "h4", "blockquote", "span",
})
ALLOWED_ATTRIBUTES: Final[dict[str, set[str]]] = {"a": {"href", "title"}}
URL_SCHEMES: Final = frozenset({"http", "https", "mailto", "tel"})
MAX_BODY_CHARS: Final = 20_000


@functools.lru_cache(maxsize=1024)
def sanitise_html(body: str) -> str:
    """Policy body HTML reduced to the allow-list: no script, style, event handler,
    ``javascript:`` URL, iframe, form or image. Text content of removed elements such as
    ``<script>`` is dropped too."""
    return nh3.clean(
        body,
        tags=set(ALLOWED_TAGS),
        clean_content_tags={"script", "style", "template", "iframe", "object", "noscript", "textarea", "title"},
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes=set(URL_SCHEMES),
        link_rel="noopener noreferrer nofollow",
        strip_comments=True,
    )
