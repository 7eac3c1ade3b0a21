"""OpenTelemetry spans `workflow` → `step` → `llm_call`, only when asked for.

Spans are on when the `otel` extra is installed and `ECLFLOW_OTEL`, the standard
`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_TRACES_EXPORTER` is set (or a provider is installed with
`use_provider`); otherwise `span()` costs one function call and imports nothing. Where they go
follows OpenTelemetry's `OTEL_TRACES_EXPORTER`: `otlp` (the default), `console` (to stderr:
stdout carries the run's result), `none` (no spans; so does `OTEL_SDK_DISABLED=true`).
Attributes follow the GenAI semantic conventions (`gen_ai.request.model`,
`gen_ai.usage.input_tokens`, …) plus eclflow's run and step.

A collector that cannot be reached is said once, in one line, and holds the process's exit for
at most EXIT_WAIT seconds (OpenTelemetry's exporter would retry for about 8 s, a line each time).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

_UNSET: Any = object()
_tracer: Any = _UNSET

EXIT_WAIT = 2.0  # seconds the exit waits for the last spans to reach the collector


def _wanted() -> bool:
    flag = os.environ.get("ECLFLOW_OTEL", "").strip().lower()
    if flag in ("0", "false", "no", "off"):
        return False
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if "none" in _exporter_names():
        return False
    return any(
        (
            flag,
            os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"),
            os.environ.get("OTEL_TRACES_EXPORTER"),
        )
    )


def _exporter_names() -> list[str]:
    """OTEL_TRACES_EXPORTER as a list (`otlp,console`); `otlp` when unset."""
    given = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    return [n.strip() for n in given.split(",") if n.strip()] or ["otlp"]


def _setup() -> Any:
    """A tracer from the global provider, creating one with the exporters asked for if none is
    set (and one who installed a provider of their own keeps it)."""
    if not _wanted():
        return None
    try:
        from opentelemetry import trace
    except ImportError:
        _not_installed("OpenTelemetry is not installed")
        return None
    provider = trace.get_tracer_provider()
    if type(provider).__name__ in ("ProxyTracerProvider", "NoOpTracerProvider"):
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError:
            return None
        exporters = _exporters()
        if not exporters:  # (spans would be made, and sent nowhere)
            return None
        provider = TracerProvider(
            resource=Resource.create({"service.name": "eclflow"}), shutdown_on_exit=False
        )
        for exporter in exporters:
            provider.add_span_processor(BatchSpanProcessor(exporter))
        import atexit

        atexit.register(_close, provider, exporters)
        trace.set_tracer_provider(provider)
    return trace.get_tracer("eclflow")


def _not_installed(what: str) -> None:
    """Spans asked for by name (ECLFLOW_OTEL) that cannot be sent: say why nothing comes."""
    if os.environ.get("ECLFLOW_OTEL"):
        _warn(
            f"ECLFLOW_OTEL is set, but {what}: no spans are recorded (pip install 'eclflow[otel]')"
        )


def _warn(message: str) -> None:
    import logging

    logging.getLogger("eclflow.observe").warning(message)


def _exporters() -> list[Any]:
    """The span exporters OTEL_TRACES_EXPORTER names (one line for a name eclflow lacks)."""
    exporters: list[Any] = []
    for name in _exporter_names():
        if name == "console":
            import sys

            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            exporters.append(ConsoleSpanExporter(out=sys.stderr))
        elif name == "otlp":
            otlp = _otlp()
            if otlp is None:
                _not_installed("no OTLP exporter is installed")
            else:
                exporters.append(otlp)
        else:
            _warn(
                f"OTEL_TRACES_EXPORTER names {name!r}, which eclflow has no exporter for (it "
                "knows otlp, console and none)"
            )
    return exporters


def _otlp() -> Any:
    """The OTLP exporter (HTTP, else gRPC) behind `_Collector`; None when neither is installed."""
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[no-redef]
                OTLPSpanExporter,
            )
        except ImportError:
            return None
    import logging

    # its retry lines ("Transient error … retrying in 1.08s", one per attempt) give way to one
    # line of ours
    logging.getLogger("opentelemetry.exporter.otlp").setLevel(logging.CRITICAL)
    return _collector_class()(OTLPSpanExporter())


def _collector_class() -> Any:
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class _Collector(SpanExporter):  # type: ignore[misc]
        """The OTLP exporter, saying once (in one line) why spans did not reach the collector."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner
            self.endpoint = str(getattr(inner, "_endpoint", None) or _endpoint())
            self.said = False
            self.closed = False

        def export(self, spans: Any) -> Any:
            result = self.inner.export(spans)
            if result is not SpanExportResult.SUCCESS:
                self.failed("could not be reached" if not _connects(self.endpoint) else None)
            return result

        def failed(self, why: str | None) -> None:
            if not self.said:
                self.said = True
                _warn(
                    f"the OpenTelemetry collector at {self.endpoint} {why or 'refused the spans'}:"
                    " spans are not sent (OTEL_EXPORTER_OTLP_ENDPOINT says where it is)"
                )

        def shutdown(self) -> None:
            if not self.closed:  # (twice: by the exit, then by its span processor)
                self.closed = True
                self.inner.shutdown()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return bool(self.inner.force_flush(timeout_millis))

    return _Collector


def _connects(url: str, timeout: float = 0.5) -> bool:
    """Whether a TCP connection to the URL's host and port is made within `timeout` seconds."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url if "://" in url else f"http://{url}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        with socket.create_connection((parts.hostname or "localhost", port), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def _endpoint() -> str:
    traces = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if traces:
        return traces
    base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "http://localhost:4318"
    return base.rstrip("/") + "/v1/traces"


def _close(provider: Any, exporters: list[Any]) -> None:
    """At exit: send the last spans, waiting at most EXIT_WAIT seconds for the collector. One
    that takes no connection is not waited for; one still not answering then is stopped (its
    retries end). Either is said, once."""
    import threading

    collectors = [e for e in exporters if hasattr(e, "failed")]
    for collector in collectors:
        if not _connects(collector.endpoint):
            collector.shutdown()  # (the last spans fail at once, and say so)
    closing = threading.Thread(target=provider.shutdown, daemon=True)
    closing.start()
    closing.join(EXIT_WAIT)
    if closing.is_alive():
        for collector in collectors:
            collector.shutdown()  # (ends the wait between its attempts)
        closing.join(0.5)
        for collector in collectors:  # (still sending: connected, and no answer)
            collector.failed(f"did not answer within {EXIT_WAIT:g}s")


def tracer() -> Any:
    global _tracer
    if _tracer is _UNSET:
        _tracer = _setup()
    return _tracer


def use_provider(provider: Any) -> None:
    """Send spans to this TracerProvider (tests use the SDK's in-memory exporter); None: off."""
    global _tracer
    _tracer = provider.get_tracer("eclflow") if provider is not None else None


def reset() -> None:
    """Decide again from the environment on the next span."""
    global _tracer
    _tracer = _UNSET


def enabled() -> bool:
    return tracer() is not None


OFF = nullcontext(None)  # what span() gives when tracing is off


def span(name: str, **attributes: Any) -> AbstractContextManager[Any]:
    """A span named `name` under the current one; yields None when tracing is off."""
    t = tracer()
    if t is None:
        return OFF
    return _span(t, name, attributes)


@contextmanager
def _span(t: Any, name: str, attributes: dict[str, Any]) -> Iterator[Any]:
    attrs = {k: v for k, v in attributes.items() if v is not None}
    with t.start_as_current_span(name, attributes=attrs) as s:
        yield s


def set_attributes(s: Any, **attributes: Any) -> None:
    if s is not None:
        s.set_attributes({k: v for k, v in attributes.items() if v is not None})


def record_error(s: Any, message: str) -> None:
    if s is not None:
        from opentelemetry.trace import Status, StatusCode

        s.set_status(Status(StatusCode.ERROR, message))
