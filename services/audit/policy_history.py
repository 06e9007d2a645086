"""A tenant's privacy policy as it stood at a knowledge time, or by version id.

Proof of consent names the policy version shown (``PreferencesChanged.policy_version``);
this answers with the exact text behind that id: every chapter with its title, body,
order and active flag. The version ids and states come from
:class:`consent.tenant.TenantHistory`.
"""

from __future__ import annotations

import datetime as dt

import msgspec

from consent.policy import active_chapters
from consent.tenant import TenantState
from services.audit.loading import TenantRecord
from services.audit.errors import AuditError


class ChapterView(msgspec.Struct, frozen=True, kw_only=True):
    order: int
    chapter_id: str
    title: str
    body: str
    active: bool


class PolicyVersionInfo(msgspec.Struct, frozen=True, kw_only=True):
    version_id: str
    first_published_at: dt.datetime
    published_by_event: str


class PolicyText(msgspec.Struct, frozen=True, kw_only=True):
    """The policy as the portal showed it: ``chapters`` in order (inactive ones too,
    marked ``active: false``: the portal did not show them)."""

    tenant_id: str
    version_id: str
    known_at: dt.datetime | None
    first_published_at: dt.datetime
    published_by_event: str
    active_chapter_count: int
    chapters: list[ChapterView]


class PolicyHistory(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    versions: list[PolicyVersionInfo]


def versions(tenant: TenantRecord) -> PolicyHistory:
    entries = [PolicyVersionInfo(version_id=v, first_published_at=at, published_by_event=event_id)
               for v, at, event_id in tenant.history.policy_versions()]
    return PolicyHistory(tenant_id=tenant.history.current.tenant_id, versions=entries)


def _text(tenant: TenantRecord, state: TenantState, known_at: dt.datetime | None) -> PolicyText:
    info = {v: (at, event_id) for v, at, event_id in tenant.history.policy_versions()}
    first_at, event_id = info[state.policy_version]
    return PolicyText(
        tenant_id=state.tenant_id, version_id=state.policy_version, known_at=known_at,
        first_published_at=first_at, published_by_event=event_id,
        active_chapter_count=len(active_chapters(state.chapters)),
        chapters=[ChapterView(order=i + 1, chapter_id=c.chapter_id, title=c.title, body=c.body, active=c.active)
                  for i, c in enumerate(state.chapters)],
    )


def policy_at(tenant: TenantRecord, known_at: dt.datetime) -> PolicyText:
    """The policy in force at ``known_at``."""
    return _text(tenant, tenant.state_at(known_at), known_at)


def policy_by_version(tenant: TenantRecord, version_id: str) -> PolicyText:
    """The text behind a version id (as first published)."""
    state = tenant.history.state_by_policy_version(version_id)
    if state is None:
        raise AuditError(404, "unknown_policy_version",
                         f"tenant {tenant.history.current.tenant_id!r} never published policy version {version_id!r}",
                         "version")
    return _text(tenant, state, None)
