"""Prometheus metrics of the ledger, on a registry of its own (no globals).

Under ``serve --workers N`` each worker process writes its samples to a file of
``PROMETHEUS_MULTIPROC_DIR`` (``METRICS_DIR_ENV``, set by services/serving.py) and
:meth:`LedgerMetrics.exposition` adds up all workers' files, so a scrape reaching any
worker answers for the service.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from services.serving import METRICS_DIR_ENV


class LedgerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.append_latency = Histogram(
            "ledger_append_batch_seconds", "Time to commit one group-commit batch",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5), registry=self.registry,
        )
        self.request_latency = Histogram(
            "ledger_http_request_seconds", "HTTP request latency", ["method", "route", "status"],
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5), registry=self.registry,
        )
        self.events_appended = Counter("ledger_events_appended_total", "Events appended", registry=self.registry)
        self.partition_conflicts = Counter(
            "ledger_append_partition_conflicts_total",
            "Partitions of a batch planned again because another writer appended to them between the batch's"
            " read and its write (optimistic batches)", registry=self.registry,
        )
        self.relay_lag = Gauge(
            "ledger_relay_lag_events", "Events not yet relayed: partition heads minus the relay's checkpoints",
            registry=self.registry,
            # Several workers: every one measures it (the active relay, the others on
            # stand-by from the saved checkpoints); the latest value of a live one counts.
            multiprocess_mode="livemostrecent",
        )

        # The labelled child per (method, route, status): prometheus_client's labels()
        # checks and looks it up again on every call.
        self._request_children: dict[tuple[str, str, int], Any] = {}

    def exposition(self) -> bytes:
        """The samples in Prometheus' text format: this process's, or with several worker
        processes all of theirs (counters and histograms summed)."""
        shared = os.environ.get(METRICS_DIR_ENV)
        if not shared:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, shared)
        return generate_latest(registry)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        child = self._request_children.get((method, route, status))
        if child is None:
            child = self._request_children[(method, route, status)] = self.request_latency.labels(
                method, route, str(status))
        child.observe(seconds)

    def on_conflict(self, partitions: int) -> None:
        self.partition_conflicts.inc(partitions)

    def on_commit(self, events: int, seconds: float) -> None:
        self.events_appended.inc(events)
        self.append_latency.observe(seconds)
