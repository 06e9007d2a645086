"""A real SMTP server on this machine (aiosmtpd) for `make run` and the tests: it accepts
every mail and keeps it as a file, ``<folder>/<time>-<n>.eml`` (RFC 5322, open it with any
mail program or read it as text), written to a temporary name first so a reader never sees
half a mail. Not for production: it relays nothing.
"""

from __future__ import annotations

import itertools
import os
import time
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


class FolderHandler:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self._n = itertools.count()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's hook name
        name = f"{time.time_ns()}-{next(self._n):06d}.eml"
        tmp = self.folder / f".{name}.tmp"
        tmp.write_bytes(envelope.original_content or envelope.content)
        os.replace(tmp, self.folder / name)
        return "250 OK: kept as " + name


class LocalSmtp:
    """``start()`` / ``stop()`` an aiosmtpd server on ``host:port`` (port 0: a free one)."""

    def __init__(self, folder: Path | str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.folder = Path(folder)
        self.host = host
        self.port = port
        self._controller: Controller | None = None

    def start(self) -> LocalSmtp:
        if self.port == 0:
            import socket

            with socket.socket() as s:
                s.bind((self.host, 0))
                self.port = s.getsockname()[1]
        self._controller = Controller(FolderHandler(self.folder), hostname=self.host, port=self.port,
                                      ready_timeout=10)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def messages(self) -> list[EmailMessage]:
        """Every mail received so far, oldest first."""
        return [message_from_bytes(p.read_bytes(), policy=policy.default)  # type: ignore[misc]
                for p in sorted(self.folder.glob("*.eml"))]
