"""Prometheus metrics of one projector process, on a registry of its own (no globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ProjectorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events_applied = Counter("projector_events_applied_total", "Ledger events applied to the read model",
                                      registry=r)
        self.duplicates = Counter("projector_duplicates_total", "Re-delivered events ignored (already applied)",
                                  registry=r)
        self.gap_events = Counter("projector_gap_events_total", "Events read from the ledger to fill a stream gap",
                                  registry=r)
        self.published = Counter("projector_matrices_published_total",
                                 "Matrices (and tombstones) written to the eligibility topic", registry=r)
        self.reevaluated = Counter("projector_subjects_reevaluated_total",
                                   "Subjects re-evaluated for a term edit, a new day or a pending publication",
                                   ["why"], registry=r)
        self.batch_seconds = Histogram(
            "projector_batch_seconds", "Time to apply one consumed batch (both transactions, publishing included)",
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=r,
        )
        self.topic_epoch = Gauge("projector_topic_epoch",
                                 "The eligibility topic's epoch (goes up on every whole-topic republish)", registry=r)
        self.topic_losses = Counter("projector_topic_losses_total",
                                    "Times the eligibility topic was found without what had been published", registry=r)
        self.republished = Counter("projector_republish_subjects_total",
                                   "Subjects published again by a republish (matrices and tombstones)", registry=r)
        self.republish_remaining = Gauge("projector_republish_remaining_subjects",
                                         "Subjects the running republish has still to publish (0: none running)",
                                         registry=r)
