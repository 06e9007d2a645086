"""structlog, JSON lines, with bound context (request id, tenant, stream).

Secrets never reach a log line: values of keys that look like secrets are replaced,
whatever the caller passed (the last line of defence; callers don't log them anyway).
"""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
import time
from typing import Any

import msgspec
import structlog

_SECRET_KEYS = re.compile(r"(authorization|password|passwd|secret|token|api_key|apikey|^key$|cookie|csrf)", re.I)
_KEY_VALUE = re.compile(r"clk_[A-Za-z0-9]+_[A-Za-z0-9_\-]+")


@functools.lru_cache(maxsize=4096)
def _secret_key(key: str) -> bool:
    return _SECRET_KEYS.search(key) is not None


def redact_secrets(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    for k, v in list(event_dict.items()):
        if _secret_key(k):
            event_dict[k] = "[redacted]"
        elif isinstance(v, str) and "clk_" in v:
            event_dict[k] = _KEY_VALUE.sub("clk_[redacted]", v)
    return event_dict


class UtcTimestamp:
    """Adds ``timestamp`` as structlog's ``TimeStamper(fmt="iso", utc=True)`` writes it
    (``2026-11-24T18:19:02.389312Z``), formatting the date and time only once a second: the
    stock stamper builds a datetime per line, a visible cost at one access line per request."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, _: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        second, micro = divmod(round(time.time() * 1_000_000), 1_000_000)
        if second != self._second:
            self._second, self._prefix = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        event_dict["timestamp"] = f"{self._prefix}.{micro:06d}Z"
        return event_dict


_encoder = msgspec.json.Encoder(enc_hook=repr)


def _json_dumps(obj: Any, **_: Any) -> str:
    """A log record as JSON with msgspec (a large share of the cost of a log line with
    json.dumps, on the hot request path: docs/performance.md); anything it cannot
    encode is written as its repr, as structlog's default does."""
    try:
        return _encoder.encode(obj).decode()
    except Exception:  # e.g. a lone surrogate in a string: the standard library copes
        return json.dumps(obj, default=repr)


def configure_logging(level: str = "info") -> None:
    # Libraries log through the standard library (aiohttp, aiokafka, asyncpg): their records
    # get the same treatment (bound context, redaction, one JSON object per line).
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.stdlib.add_logger_name,
            UtcTimestamp(),
            structlog.stdlib.ExtraAdder(),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            redact_secrets,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=_json_dumps),
        ],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            UtcTimestamp(),
            redact_secrets,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=_json_dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
