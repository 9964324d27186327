"""`--prometheus-port`: a node's counters at http://127.0.0.1:PORT/metrics for Prometheus.

The same numbers the node posts to the directory every second, read when Prometheus scrapes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


class NodeCollector(Collector):
    def __init__(self, read: Callable[[], dict[str, Any]]):
        self.read = read

    def collect(self) -> Iterator[Any]:
        for _ in range(3):  # the node's loop may resize a dict while we copy it: try again
            try:
                m = self.read()
                break
            except RuntimeError:
                continue
        else:
            return
        labels = ["kind", "host"]
        values = [str(m.get("kind", "")), str(m.get("host", ""))]
        received = CounterMetricFamily("loopix_node_received_packets", "Packets received", labels=labels)
        received.add_metric(values, m.get("received", 0))
        yield received
        forwarded = CounterMetricFamily("loopix_node_forwarded_packets", "Packets forwarded", labels=labels)
        forwarded.add_metric(values, m.get("forwarded", 0))
        yield forwarded
        dropped = CounterMetricFamily("loopix_node_dropped_packets", "Packets dropped, by reason",
                                      labels=[*labels, "reason"])
        for reason, n in (m.get("dropped") or {}).items():
            dropped.add_metric([*values, reason], n)
        yield dropped
        sent = CounterMetricFamily("loopix_node_sent_packets", "Packets sent, by next hop", labels=[*labels, "peer"])
        for peer, n in (m.get("sent") or {}).items():
            sent.add_metric([*values, peer], n)
        yield sent
        queue = GaugeMetricFamily("loopix_node_queue_packets", "Packets held or waiting", labels=labels)
        queue.add_metric(values, m.get("queue", 0))
        yield queue
        known = {"pubKey", "host", "kind", "sent", "received", "forwarded", "dropped", "queue"}
        for key, value in m.items():
            if key not in known and isinstance(value, int | float):
                extra = CounterMetricFamily(f"loopix_node_{_snake(key)}", f"the node's {key} counter", labels=labels)
                extra.add_metric(values, value)
                yield extra


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).strip("_")


def serve_node_metrics(read: Callable[[], dict[str, Any]], port: int, addr: str = "127.0.0.1"):
    """Start the exporter on a daemon thread; returns (server, thread)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(read))
    return start_http_server(port, addr, registry=registry)
