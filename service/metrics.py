"""Every tandem_* Prometheus metric, in one place, on a registry passed in.

Base units, `_total` / `_seconds` / `_bytes` suffixes, fixed label sets and
explicit buckets. Gauges that describe the process (memory, queue depth) are
read when Prometheus scrapes, through callbacks.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service.runtime.memory import device_memory, process_rss_bytes
from service.runtime.specs import StepOutcome, TrainResult

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
SYNC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
PUBLISH_LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60)
PUBLISH_OUTCOMES = ("written", "failed")
PHASE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
STEP_PHASES = ("queue", "prepare", "forward_backward")
"""TrainStep phases every step goes through; an applied step also runs OPTIMIZER_PHASES."""
OPTIMIZER_PHASES = ("optimizer", "sync")


class ThroughputMeter:
    """Events per second over a sliding window (thread-safe)."""

    def __init__(self, window_seconds: float = 10.0) -> None:
        self._window = window_seconds
        self._events: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def add(self, count: int) -> None:
        """Record ``count`` events now (and forget those out of the window: memory stays bounded when nobody scrapes)."""
        now = time.monotonic()
        with self._lock:
            self._events.append((now, count))
            self._forget_before(now - self._window)

    def rate(self) -> float:
        """Events per second in the last window."""
        with self._lock:
            self._forget_before(time.monotonic() - self._window)
            return sum(c for _, c in self._events) / self._window

    def _forget_before(self, cutoff: float) -> None:
        while self._events and self._events[0][0] < cutoff:
            self._events.popleft()


class Metrics:
    """The service's metrics; docs/deploy.md says what each one means."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter("tandem_requests_total", "RPCs finished, by method and gRPC status code.", ["rpc", "code"], registry=registry)
        self.request_seconds = Histogram(
            "tandem_request_duration_seconds", "RPC latency, by method.", ["rpc"], buckets=LATENCY_BUCKETS, registry=registry
        )
        self._request_series: dict[tuple[str, str], tuple[Counter, Histogram]] = {}
        """Each (method, status code)'s children of ``requests`` and ``request_seconds``, looked up on first use:
        ``labels()`` checks and locks on every call, and every RPC records both."""
        self.time_to_first_token = Histogram(
            "tandem_time_to_first_token_seconds", "Generate: seconds from request to the first token (streamed calls; whole_samples calls are not counted).", buckets=LATENCY_BUCKETS, registry=registry
        )
        self.generated_tokens = Counter("tandem_generated_tokens_total", "Tokens generated.", registry=registry)
        self.trained_tokens = Counter("tandem_trained_tokens_total", "Tokens with non-zero loss weight trained on.", registry=registry)
        self.train_steps = Counter("tandem_train_steps_total", "TrainStep calls, by outcome.", ["outcome"], registry=registry)
        for outcome in StepOutcome:
            self.train_steps.labels(outcome.value)
        self.train_phase_seconds = Histogram(
            "tandem_train_step_phase_seconds",
            "TrainStep: seconds in each phase (queue, prepare, forward_backward; optimizer and sync on applied steps).",
            ["phase"],
            buckets=PHASE_BUCKETS,
            registry=registry,
        )
        for phase in STEP_PHASES + OPTIMIZER_PHASES:
            self.train_phase_seconds.labels(phase)
        self.train_loss = Gauge("tandem_train_loss", "Loss of the last TrainStep with a finite loss.", registry=registry)
        self.train_grad_norm = Gauge("tandem_train_grad_norm", "Gradient norm (before clipping) of the last applied optimizer step.", registry=registry)
        self.adapter_version = Gauge("tandem_adapter_version", "Version of the adapter being trained (sampler role: being served).", registry=registry)
        self.adapter_publish_lag_seconds = Histogram(
            "tandem_adapter_publish_lag_seconds",
            "Sampler role: seconds from a version's publish to the adapter store until this server serves it.",
            buckets=PUBLISH_LAG_BUCKETS,
            registry=registry,
        )
        self.adapter_publishes = Counter(
            "tandem_adapter_publishes_total", "Trainer role: adapter versions published to the adapter store, by outcome.", ["outcome"], registry=registry
        )
        for outcome in PUBLISH_OUTCOMES:
            self.adapter_publishes.labels(outcome)
        self.lora_sync_seconds = Histogram(
            "tandem_lora_sync_seconds", "Seconds to bring a new adapter to the engine.", buckets=SYNC_BUCKETS, registry=registry
        )
        self.model_load_seconds = Gauge("tandem_model_load_seconds", "Seconds the last LoadModel took.", registry=registry)
        self.model_loaded = Gauge("tandem_model_loaded", "1 when a model is loaded.", registry=registry)
        self.process_memory = Gauge("tandem_process_resident_memory_bytes", "Resident set size of the server.", registry=registry)
        self.process_memory.set_function(process_rss_bytes)
        self.gpu_memory = Gauge(
            "tandem_gpu_memory_bytes", "Accelerator memory where the model lives, by kind (allocated, reserved, total).", ["kind"], registry=registry
        )
        self.bind_device_memory(device_memory)
        self._generated_rate = ThroughputMeter()
        self._trained_rate = ThroughputMeter()
        Gauge(
            "tandem_generated_tokens_per_second", "Generated tokens per second over the last 10 s.", registry=registry
        ).set_function(self._generated_rate.rate)
        Gauge("tandem_trained_tokens_per_second", "Trained tokens per second over the last 10 s.", registry=registry).set_function(
            self._trained_rate.rate
        )
        self.queue_depth = Gauge("tandem_queue_depth", "Device-loop work items waiting to start.", registry=registry)
        self.running_requests = Gauge("tandem_running_requests", "Samples held by the engine (queued or decoding).", registry=registry)
        self.kv_cache_usage = Gauge("tandem_kv_cache_usage_ratio", "Fraction of the engine's KV cache in use (vLLM).", registry=registry)
        self.generation_samples = Gauge(
            "tandem_generation_samples", "Samples admitted to Generate calls (queued or decoding), bounded by max_queued_generations.", registry=registry
        )

    def bind_load_gauges(
        self,
        queue_depth: Callable[[], float],
        running_requests: Callable[[], float],
        kv_cache_usage: Callable[[], float],
        generation_samples: Callable[[], float],
    ) -> None:
        """Read these gauges from the runtime at scrape time."""
        self.queue_depth.set_function(queue_depth)
        self.running_requests.set_function(running_requests)
        self.kv_cache_usage.set_function(kv_cache_usage)
        self.generation_samples.set_function(generation_samples)

    def bind_device_memory(self, read: Callable[[], tuple[int, int, int]]) -> None:
        """Read accelerator memory (allocated, reserved, total bytes) with ``read`` at scrape time."""
        for index, kind in enumerate(("allocated", "reserved", "total")):
            self.gpu_memory.labels(kind).set_function(lambda i=index: read()[i])

    def record_request(self, rpc: str, code: str, seconds: float) -> None:
        """Count one finished RPC of method ``rpc`` with status ``code``, and its latency."""
        series = self._request_series.get((rpc, code))
        if series is None:
            series = self._request_series[rpc, code] = (self.requests.labels(rpc, code), self.request_seconds.labels(rpc))
        count, latency = series
        count.inc()
        latency.observe(seconds)

    def record_generated(self, tokens: int) -> None:
        """Count generated tokens."""
        self.generated_tokens.inc(tokens)
        self._generated_rate.add(tokens)

    def record_trained(self, tokens: int) -> None:
        """Count trained tokens."""
        self.trained_tokens.inc(tokens)
        self._trained_rate.add(tokens)

    def record_train_result(self, result: TrainResult) -> None:
        """Phase timings, loss and gradient norm of one TrainStep (phases it did not run are not observed)."""
        applied = result.outcome is StepOutcome.APPLIED
        for phase in STEP_PHASES + (OPTIMIZER_PHASES if applied else ()):
            self.train_phase_seconds.labels(phase).observe(getattr(result.seconds, phase))
        if math.isfinite(result.loss):
            self.train_loss.set(result.loss)
        if applied:
            self.train_grad_norm.set(result.grad_norm)
