"""structlog, JSON lines, with bound context (request id, tenant, stream).

Secrets never reach a log line: values of keys that look like secrets are replaced,
whatever the caller passed (the last line of defence; callers don't log them anyway).
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog

_SECRET_KEYS = re.compile(r"(authorization|password|passwd|secret|token|api_key|apikey|^key$|cookie|csrf)", re.I)
_KEY_VALUE = re.compile(r"clk_[A-Za-z0-9]+_[A-Za-z0-9_\-]+")


def redact_secrets(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    for k, v in list(event_dict.items()):
        if _SECRET_KEYS.search(k):
            event_dict[k] = "[redacted]"
        elif isinstance(v, str) and "clk_" in v:
            event_dict[k] = _KEY_VALUE.sub("clk_[redacted]", v)
    return event_dict


def configure_logging(level: str = "info") -> None:
    # Libraries log through the standard library (aiohttp, aiokafka, asyncpg): their records
    # get the same treatment (bound context, redaction, one JSON object per line).
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.stdlib.ExtraAdder(),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            redact_secrets,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
