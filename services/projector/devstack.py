"""The eligibility projector in the local stack (``consent-ledger run``).

Runs in the stack's process, in the ``consent-projector`` consumer group, so a
``consent-ledger projector run`` started next to it shares the partitions with it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from schemas.eligibility import TOPIC
from services.kafka_security import KafkaSecurity
from services.projector.service import ProjectorConfig, running_projector
from services.settings import Settings


@contextlib.asynccontextmanager
async def projector_component(settings: Settings) -> AsyncIterator[list[str]]:
    if not settings.kafka_bootstrap:
        yield ["projector    not started (no broker: LEDGER_KAFKA_BOOTSTRAP)"]
        return
    config = ProjectorConfig(database_url=settings.database_url, bootstrap=settings.kafka_bootstrap,
                             kafka_security=KafkaSecurity.from_settings(settings),
                             master_key=settings.master_key, portal_base_url=settings.portal_base_url)
    async with running_projector(config):
        base = f"http://{settings.host}:{settings.port}/v1/tenants/<tenant>"
        yield [f"projector    ledger events -> read model -> topic {TOPIC}",
               f"             checks: GET {base}/subjects/<source>/<ref>/eligibility,"
               f" POST {base}/eligibility:check"]
