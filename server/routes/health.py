"""``/healthz``, ``/readyz``, ``/metrics``: is the process up, can it take sessions, how does it do.

Knows nothing about sessions beyond what ``Runtime.readiness`` and ``Metrics`` report.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from headcast.server.deps import MetricsDep, RuntimeDep
from headcast.server.engine_groups import GroupState, GroupStatus
from headcast.server.errors import ENGINE_LOADING_RETRY_AFTER_S, Problem
from headcast.server.metrics import CONTENT_TYPE

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up and answering."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(runtime: RuntimeDep) -> dict[str, Any]:
    """200 while an engine group is loaded and warm; 503 (a problem) while every group loads
    or after every group failed. ``groups`` lists each group's devices, state and sessions."""
    readiness = runtime.readiness
    body: dict[str, Any] = {
        "state": readiness.state.value,
        "engine": readiness.engine,
        "description": readiness.description,
        "groups": [_group(status) for status in readiness.groups],
    }
    if readiness.state is GroupState.READY:
        return {**body, "detail": readiness.detail, "load_seconds": readiness.load_seconds}
    headers = (
        {"Retry-After": str(ENGINE_LOADING_RETRY_AFTER_S)}
        if readiness.state is GroupState.LOADING
        else {}
    )
    raise Problem(
        503,
        f"engine-{readiness.state.value}",
        readiness.detail,
        title="The engine is not ready",
        headers=headers,
        extra=body,
    )


def _group(status: GroupStatus) -> dict[str, Any]:
    """One engine group in ``/readyz``: where it runs, its state and its sessions."""
    return {
        "index": status.index,
        "devices": list(status.devices),
        "state": status.state.value,
        "sessions": status.sessions,
        "capacity": status.capacity,
        "generation_slots": status.generation_slots,
        "generation_busy": status.generation_busy,
        "speech_waiting": status.speech_waiting,
        "warmup_rtf": status.warmup_rtf,
        "failures": status.failures,
        "last_failure": status.last_failure,
        "detail": status.detail,
    }


@router.get("/metrics")
async def metrics(metrics: MetricsDep) -> Response:
    """Prometheus text exposition."""
    return Response(content=metrics.render(), media_type=CONTENT_TYPE)
