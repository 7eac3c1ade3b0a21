"""OpenTelemetry spans `workflow` → `step` → `llm_call`, only when asked for.

Spans are on when the `otel` extra is installed and `ECLFLOW_OTEL` or the standard
`OTEL_EXPORTER_OTLP_ENDPOINT` is set (or a provider is installed with `use_provider`); otherwise
`span()` costs one function call and imports nothing. Attributes follow the GenAI semantic
conventions (`gen_ai.request.model`, `gen_ai.usage.input_tokens`, …) plus eclflow's run and step.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

_UNSET: Any = object()
_tracer: Any = _UNSET


def _wanted() -> bool:
    flag = os.environ.get("ECLFLOW_OTEL", "").strip().lower()
    if flag in ("0", "false", "no", "off"):
        return False
    return bool(flag) or bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def _setup() -> Any:
    """A tracer from the global provider, creating an OTLP-exporting one if none is set."""
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
        exporter = _exporter()
        if exporter is None:  # (spans would be made, and sent nowhere)
            _not_installed("no OTLP exporter is installed")
            return None
        provider = TracerProvider(resource=Resource.create({"service.name": "eclflow"}))
        provider.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
    return trace.get_tracer("eclflow")


def _not_installed(what: str) -> None:
    """Spans asked for by name (ECLFLOW_OTEL) that cannot be sent: say why nothing comes."""
    if os.environ.get("ECLFLOW_OTEL"):
        import logging

        logging.getLogger("eclflow.observe").warning(
            f"ECLFLOW_OTEL is set, but {what}: no spans are recorded (pip install 'eclflow[otel]')"
        )


def _exporter() -> Any:
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[no-redef]
                OTLPSpanExporter,
            )
        except ImportError:
            return None
    return OTLPSpanExporter()


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
