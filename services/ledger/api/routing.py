"""Route lookup by the shape of the path, for the API's many parameterised routes.

aiohttp indexes a parameterised route only by its literal prefix, so every
``/v1/tenants/{tenant}/...`` route lands in one bucket that is tried in registration
order, one regex and one coroutine per route: about 16 µs per request with the ~40
routes we had, and more with every route added. :class:`RouteTable` is a single aiohttp
resource for such a bucket that narrows the candidates by the number of path segments
and the last segment, then lets the candidates' own ``DynamicResource`` confirm the
match. The matched route, its resource and its canonical path (used in metrics and
logs) are exactly what aiohttp would have found; order among candidates is kept.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractMatchInfo
from aiohttp.web_urldispatcher import AbstractResource, AbstractRoute, DynamicResource, UrlDispatcher

Handler = Any
RouteSpec = tuple[str, str, Handler, str]  # (method, path, handler, name)


_CUSTOM_REGEX = re.compile(r"\{[^}]*:")


def _shape(path: str) -> tuple[int, str | None] | None:
    """(segment count, last segment if literal), or None when a parameter has its own
    regex (``{tail:.*}`` may match "/" too) and the shape says nothing."""
    if _CUSTOM_REGEX.search(path):
        return None
    parts = path.split("/")
    last = parts[-1]
    return len(parts), (None if "{" in last else last)


class RouteTable(AbstractResource):
    """All parameterised routes under one literal prefix (see the module docstring)."""

    def __init__(self, prefix: str) -> None:
        super().__init__(name=None)
        self._prefix = prefix
        self._resources: list[tuple[tuple[int, str | None] | None, DynamicResource]] = []
        self._by_last: dict[int, dict[str, list[DynamicResource]]] = {}
        self._by_count: dict[int, list[DynamicResource]] = {}
        self._shapeless: list[DynamicResource] = []

    def add(self, resource: DynamicResource, path: str) -> None:
        self._resources.append((_shape(path), resource))
        self._reindex()

    def _reindex(self) -> None:
        """Candidate lists in registration order: for (count, last literal), the routes
        with that literal last segment or a parameter there; for a count alone, those
        with a parameter there. Shapeless routes are tried for every path."""
        by_last: dict[int, dict[str, list[DynamicResource]]] = {}
        by_count: dict[int, list[DynamicResource]] = {}
        literals = {(s[0], s[1]) for s, _ in self._resources if s is not None and s[1] is not None}
        for count, last in literals:
            by_last.setdefault(count, {})[last] = [
                r for s, r in self._resources if s is None or (s[0] == count and s[1] in (None, last))
            ]
        for count in {s[0] for s, _ in self._resources if s is not None}:
            by_count[count] = [r for s, r in self._resources if s is None or (s[0] == count and s[1] is None)]
        self._by_last, self._by_count = by_last, by_count
        self._shapeless = [r for s, r in self._resources if s is None]

    @property
    def canonical(self) -> str:
        return self._prefix

    async def resolve(self, request: web.Request) -> tuple[AbstractMatchInfo | None, set[str]]:
        path = request.rel_url.path_safe
        count = path.count("/") + 1
        last = path.rpartition("/")[2]
        lasts = self._by_last.get(count)
        candidates = (lasts.get(last) if lasts else None) or self._by_count.get(count) or self._shapeless
        allowed: set[str] = set()
        for resource in candidates:
            match, methods = await resource.resolve(request)
            if match is not None:
                return match, methods
            allowed |= methods
        return None, allowed

    def add_prefix(self, prefix: str) -> None:
        self._prefix = prefix + self._prefix
        for _, resource in self._resources:
            resource.add_prefix(prefix)

    def get_info(self) -> dict[str, Any]:  # type: ignore[override]
        return {"prefix": self._prefix, "routes": len(self)}

    def raw_match(self, path: str) -> bool:
        return any(r.raw_match(path) for _, r in self._resources)

    def url_for(self, **kwargs: str) -> Any:
        raise NotImplementedError("RouteTable holds many routes: use a route's own resource")

    def __len__(self) -> int:
        return sum(len(r) for _, r in self._resources)

    def __iter__(self) -> Iterator[AbstractRoute]:
        for _, resource in self._resources:
            yield from resource


def add_routes(router: UrlDispatcher, routes: Sequence[RouteSpec]) -> None:
    """Add routes: literal paths as aiohttp does, parameterised ones grouped into one
    :class:`RouteTable` per literal prefix. Route names must be unique, as in aiohttp."""
    tables: dict[str, RouteTable] = {}
    names: set[str] = set(router.named_resources())
    for method, path, handler, name in routes:
        if "{" not in path:
            router.add_route(method, path, handler, name=name)
            names.add(name)
            continue
        if name in names:
            raise ValueError(f"duplicate route name {name!r}")
        names.add(name)
        resource = DynamicResource(path, name=name)
        resource.add_route(method, handler)
        prefix = path.partition("{")[0].rpartition("/")[0].rstrip("/") or "/"
        table = tables.get(prefix)
        if table is None:
            table = tables[prefix] = RouteTable(prefix)
            router.register_resource(table)
        table.add(resource, path)
