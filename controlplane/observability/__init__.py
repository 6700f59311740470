"""Prometheus metrics, structured logs and request ids."""

from __future__ import annotations

from controlplane.observability.metrics import Metrics, MetricsMiddleware, metrics_endpoint

__all__ = ["Metrics", "MetricsMiddleware", "metrics_endpoint"]
