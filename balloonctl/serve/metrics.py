"""``/metrics``: the service's latest snapshots in the Prometheus text format.

One custom collector reads ``HostService.latest`` at scrape time, so a VM that leaves the
inventory leaves the output with it (no per-VM metric objects to leak). The poll-duration
histogram is kept by the service (``ServeHealth``) and exported by the same collector, in a
registry of the service's own (several services in one process, as in ``demo --hosts``,
never collide). ``METRICS`` lists
every name exported; deploy/ and docs/serve.md use only these (a test checks).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from balloonctl.model import HintMode, VmStatus
from balloonctl.serve.parts import POLL_BUCKETS
from balloonctl.serve.service import HostService

__all__ = ["METRICS", "Exporter", "SnapshotCollector"]

P = "balloonctl_"

# name (as exposed, counters with _total) -> (type, help)
METRICS: dict[str, tuple[str, str]] = {
    f"{P}vm_up": ("gauge", "1 when the VM's QMP socket answered the last poll"),
    f"{P}vm_status": ("gauge", "1 for the VM's current status word (ok, converging, ...)"),
    f"{P}vm_actual_bytes": ("gauge", "Memory the guest has now (QEMU query-balloon actual)"),
    f"{P}vm_guest_ram_bytes": ("gauge", "The VM's configured RAM"),
    f"{P}vm_target_bytes": ("gauge", "The balloon target balloonctl set, while it stands"),
    f"{P}vm_floor_bytes": ("gauge", "The lowest target balloonctl sets without --force"),
    f"{P}vm_free_bytes": ("gauge", "Guest free memory (stat-free-memory)"),
    f"{P}vm_cached_bytes": ("gauge", "Guest page cache (stat-disk-caches)"),
    f"{P}vm_available_bytes": ("gauge", "Guest available memory (stat-available-memory)"),
    f"{P}vm_swap_in_bytes_total": ("counter", "Bytes the guest swapped in (stat-swap-in)"),
    f"{P}vm_swap_out_bytes_total": ("counter", "Bytes the guest swapped out (stat-swap-out)"),
    f"{P}vm_major_faults_total": ("counter", "Guest major page faults (stat-major-faults)"),
    f"{P}vm_stats_age_seconds": ("gauge", "Seconds since the guest last reported its stats"),
    f"{P}vm_stats_interval_seconds": ("gauge", "The guest stats polling interval (0: off)"),
    f"{P}vm_hint_enabled": ("gauge", "1 when the cache-first hint is on"),
    f"{P}vm_hint_mode": ("gauge", "1 for how the cache-first hint is honoured"),
    f"{P}vm_foreign_target": ("gauge", "1 when another writer moved a target balloonctl set"),
    f"{P}vm_foreign_writes_total": ("counter", "Targets balloonctl set that another writer moved"),
    f"{P}host_memory_total_bytes": ("gauge", "Host MemTotal"),
    f"{P}host_memory_available_bytes": ("gauge", "Host MemAvailable"),
    f"{P}host_memory_free_bytes": ("gauge", "Host MemFree"),
    f"{P}host_memory_cached_bytes": ("gauge", "Host page cache (Cached)"),
    f"{P}host_swap_total_bytes": ("gauge", "Host SwapTotal"),
    f"{P}host_swap_free_bytes": ("gauge", "Host SwapFree"),
    f"{P}host_guest_ram_bytes": ("gauge", "The sum of the guests' RAM on this host"),
    f"{P}host_psi_memory_some_ratio": ("gauge", "Share of time some tasks stalled on memory"),
    f"{P}host_psi_memory_full_ratio": ("gauge", "Share of time all tasks stalled on memory"),
    f"{P}host_ksm_running": ("gauge", "1 when KSM is merging pages"),
    f"{P}host_ksm_pages_shared": ("gauge", "KSM pages_shared"),
    f"{P}host_ksm_pages_sharing": ("gauge", "KSM pages_sharing"),
    f"{P}host_ksm_saved_bytes": ("gauge", "Bytes KSM saves (pages_sharing pages)"),
    f"{P}host_up": ("gauge", "1 when the host's memory files were read at the last poll"),
    f"{P}auto_enabled": ("gauge", "1 when auto runs the policy every cycle (absent: no auto)"),
    f"{P}auto_decisions_total": ("counter", "Decisions auto made, by action"),
    f"{P}auto_changes_total": ("counter", "Targets auto sent (and journaled), by action"),
    f"{P}auto_cycles_total": ("counter", "Cycles auto ran"),
    f"{P}serve_vms": ("gauge", "VMs in the service's inventory"),
    f"{P}serve_polls_total": ("counter", "Polls of every VM done"),
    f"{P}serve_errors_total": ("counter", "Failures by where (poll, api, host, journal, auto) "
                                          "and kind"),
    f"{P}serve_stream_dropped_total": ("counter", "Stream items dropped for slow readers"),
    f"{P}serve_poll_duration_seconds": ("histogram", "How long one poll of every VM took"),
}


def _bound(seconds: float) -> str:
    return "+Inf" if seconds == float("inf") else repr(seconds)


def _family(name: str, labels: list[str]) -> GaugeMetricFamily | CounterMetricFamily:
    kind, text = METRICS[name]
    if kind == "counter":
        return CounterMetricFamily(name.removesuffix("_total"), text, labels=labels)
    return GaugeMetricFamily(name, text, labels=labels)


class SnapshotCollector(Collector):
    """Builds every gauge and counter from the service's latest state at scrape time."""

    def __init__(self, service: HostService) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        service = self.service
        names = [n for n in service.names if n in service.latest]
        vm: dict[str, Any] = {key: _family(key, ["vm"]) for key in METRICS
                              if key.startswith(f"{P}vm_") and key not in
                              (f"{P}vm_status", f"{P}vm_hint_mode")}
        status = _family(f"{P}vm_status", ["vm", "status"])
        mode = _family(f"{P}vm_hint_mode", ["vm", "mode"])

        def put(key: str, name: str, value: float | None) -> None:
            if value is not None:
                vm[f"{P}{key}"].add_metric([name], float(value))

        for name in names:
            s = service.latest[name]
            stats = s.stats if s.stats is not None and s.stats.reported else None
            put("vm_up", name, 1 if s.reachable else 0)
            for word in VmStatus:
                status.add_metric([name, word.value], 1.0 if s.status is word else 0.0)
            put("vm_actual_bytes", name, s.actual)
            put("vm_guest_ram_bytes", name, s.guest_ram)
            put("vm_target_bytes", name, s.target)
            put("vm_floor_bytes", name, s.floor)
            if stats is not None:
                put("vm_free_bytes", name, stats.free_memory)
                put("vm_cached_bytes", name, stats.disk_caches)
                put("vm_available_bytes", name, stats.available_memory)
                put("vm_swap_in_bytes_total", name, stats.swap_in)
                put("vm_swap_out_bytes_total", name, stats.swap_out)
                put("vm_major_faults_total", name, stats.major_faults)
            put("vm_stats_age_seconds", name, s.stats_age)
            put("vm_stats_interval_seconds", name, s.polling_interval)
            if s.reachable:
                put("vm_hint_enabled", name, 1 if s.hint.enabled else 0)
                for m in HintMode:
                    mode.add_metric([name, m.value], 1.0 if s.hint.mode is m else 0.0)
            put("vm_foreign_target", name, 1 if service.foreign(name) else 0)
            put("vm_foreign_writes_total", name, service.health.foreign_writes.get(name, 0))
        yield from vm.values()
        yield status
        yield mode
        yield from self._host()
        yield from self._service()

    def _host(self) -> Iterator[Metric]:
        service = self.service
        if service.host_root is None:
            return
        host = service.host
        up = _family(f"{P}host_up", [])
        up.add_metric([], 0.0 if host is None or service.host_error else 1.0)
        yield up
        if host is None:
            return
        guest_ram = sum(s.guest_ram or 0 for s in service.latest.values())
        values: list[tuple[str, float | None]] = [
            ("host_memory_total_bytes", host.total),
            ("host_memory_available_bytes", host.available),
            ("host_memory_free_bytes", host.free),
            ("host_memory_cached_bytes", host.cached),
            ("host_swap_total_bytes", host.swap_total),
            ("host_swap_free_bytes", host.swap_free),
            ("host_guest_ram_bytes", guest_ram),
        ]
        if host.psi is not None:
            values += [("host_psi_memory_some_ratio", host.psi.some_avg10 / 100),
                       ("host_psi_memory_full_ratio", host.psi.full_avg10 / 100)]
        if host.ksm is not None:
            values += [("host_ksm_running", 1 if host.ksm.run else 0),
                       ("host_ksm_pages_shared", host.ksm.pages_shared),
                       ("host_ksm_pages_sharing", host.ksm.pages_sharing),
                       ("host_ksm_saved_bytes", host.ksm.saved)]
        for key, value in values:
            family: GaugeMetricFamily | CounterMetricFamily
            if key.startswith("host_psi"):
                family = GaugeMetricFamily(f"{P}{key}", METRICS[f"{P}{key}"][1],
                                           labels=["window"])
                family.add_metric(["avg10"], float(value or 0))
            else:
                family = _family(f"{P}{key}", [])
                family.add_metric([], float(value or 0))
            yield family

    def _service(self) -> Iterator[Metric]:
        service, health = self.service, self.service.health
        if service.auto is not None:
            enabled = _family(f"{P}auto_enabled", [])
            enabled.add_metric([], 1.0 if service.auto_on else 0.0)
            yield enabled
        cycles = _family(f"{P}auto_cycles_total", [])
        cycles.add_metric([], float(health.auto_cycles))
        yield cycles
        for key, counts in (("auto_decisions_total", health.auto_decisions),
                            ("auto_changes_total", health.auto_changes)):
            family = _family(f"{P}{key}", ["action"])
            for action, count in sorted(counts.items()):
                family.add_metric([action], float(count))
            yield family
        vms = _family(f"{P}serve_vms", [])
        vms.add_metric([], float(len(service.names)))
        yield vms
        polls = _family(f"{P}serve_polls_total", [])
        polls.add_metric([], float(health.polls))
        yield polls
        errors = _family(f"{P}serve_errors_total", ["where", "kind"])
        for (where, kind), count in sorted(health.errors.items()):
            errors.add_metric([where, kind], float(count))
        yield errors
        poll = HistogramMetricFamily(f"{P}serve_poll_duration_seconds",
                                     METRICS[f"{P}serve_poll_duration_seconds"][1])
        poll.add_metric([], [(_bound(b), float(n)) for b, n in
                             zip(POLL_BUCKETS, health.poll_buckets, strict=True)],
                        sum_value=health.poll_seconds_sum)
        yield poll
        dropped = _family(f"{P}serve_stream_dropped_total", [])
        dropped.add_metric([], float(health.stream_dropped))
        yield dropped


class Exporter:
    """The metrics of one service in a registry of their own."""

    def __init__(self, service: HostService) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SnapshotCollector(service))

    def render(self) -> tuple[bytes, str]:
        """The text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
