"""TEST HARNESS EXTENSION, not part of the stock service: run one aggregation round now.

The stock service aggregates from a django-q schedule (every minute) that calls
``fma_core.workflows.tasks.agg_service(model_id)`` and then the schedule's hook
``post_agg_service_hook(task)``, which marks the updates used COMPLETE (or FAILED when the
task raised). ``run_round`` makes those same two stock calls synchronously, so tests need
neither a django-q cluster nor redis, nor to wait for the clock.
"""

from __future__ import annotations

import traceback
from types import SimpleNamespace
from typing import Any

from fma_core.workflows import tasks
from rest_framework import authentication, permissions
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView


def run_round(model_id: int) -> dict[str, Any]:
    """Run the stock aggregation task for one model as django-q would, hook included.

    Returns:
        ``{"aggregate": new aggregate id or None, "success": bool, "error": str or None}``.
        ``aggregate`` is None when nothing was aggregated (no pending updates from registered
        clients, or the model's requirement not met); ``success`` is False when the stock
        task raised, in which case the updates it had taken are now FAILED, as in stock.
    """
    error: str | None = None
    aggregate_id: int | None = None
    try:
        aggregate_id = tasks.agg_service(model_id)
    except Exception:  # django-q records any failure and reports it to the hook
        error = traceback.format_exc(limit=3)
    task = SimpleNamespace(args=(model_id,), kwargs={}, success=error is None)
    tasks.post_agg_service_hook(task)
    return {"aggregate": aggregate_id, "success": error is None, "error": error}


class AggregateNowView(APIView):
    """``POST /test-only/aggregate/<model_id>/`` (staff only) → 200 with ``run_round``'s dict."""

    authentication_classes = [
        authentication.TokenAuthentication,
        authentication.BasicAuthentication,
    ]
    permission_classes = [permissions.IsAdminUser]

    def post(self, request: Request, model_id: int) -> Response:
        """Run one round for ``model_id`` and report what happened."""
        return Response(run_round(model_id))
