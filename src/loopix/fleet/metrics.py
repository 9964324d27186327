"""`--metrics-port`: a running fleet's aggregate figures at http://127.0.0.1:PORT/metrics.

Cardinality stays bounded whatever the fleet's size: no label names an identity (per-identity
counters are read on request: `loopix-client fleet stats`); the only label is the stream.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from loopix.client.schedule import STREAM_NAMES

__all__ = ["FleetCollector", "serve_fleet_metrics"]


class FleetCollector(Collector):
    """Reads the fleet's totals when Prometheus scrapes (plain ints: safe from the exporter thread)."""

    def __init__(self, fleet: Any):
        self.fleet = fleet

    def collect(self) -> Iterator[Any]:
        f = self.fleet
        s = f.stats
        yield GaugeMetricFamily("loopix_fleet_identities", "Identities in the running fleet", value=len(f))
        yield GaugeMetricFamily("loopix_fleet_identities_connected", "Identities registered at their provider",
                                value=s.connected)
        sent = CounterMetricFamily("loopix_fleet_sent_packets", "Packets sent, by stream", labels=["stream"])
        for k, n in enumerate(s.sent):
            sent.add_metric([STREAM_NAMES[k]], n)
        yield sent
        for name, text, value in (
            ("real_sent_packets", "Payload packets that carried a real message", s.real_sent),
            ("received_packets", "Packets received from the providers (loops included)", s.received),
            ("loops_back", "Loop cover packets that came back", s.loops_back),
            ("messages_received", "Whole messages received, every identity", s.messages_received),
            ("messages_sent", "Messages queued for sending, every identity", f.messages_sent_total),
            ("messages_incomplete", "Messages whose fragments did not all arrive in time", s.messages_incomplete),
            ("dropped_unconnected_packets", "Packets not sent: their identity was not connected",
             s.dropped_unconnected),
        ):
            yield CounterMetricFamily(f"loopix_fleet_{name}", text, value=value)


def serve_fleet_metrics(fleet: Any, port: int, addr: str = "127.0.0.1"):
    """Start the exporter on a daemon thread; returns (server, thread)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(fleet))
    return start_http_server(port, addr, registry=registry)
