"""URLs: the stock API and token endpoint as the stock service mounts them, plus our additions.

Ours, not stock: ``MEDIA_URL`` is served even with DEBUG off (the stock project serves media
only in DEBUG, and relies on S3 otherwise), and ``/test-only/aggregate/<model_id>/`` runs one
stock aggregation round on demand (a test harness extension; see ``harness.py``).
"""

from __future__ import annotations

from django.conf import settings
from django.urls import include, path, re_path
from django.views.static import serve
from rest_framework.authtoken.views import obtain_auth_token

from stock_project.harness import AggregateNowView

urlpatterns = [
    path("api/", include("fma_django_api.urls")),
    path("api-token-auth/", obtain_auth_token, name="api_token_auth"),
    re_path(
        rf"^{settings.MEDIA_URL.lstrip('/')}(?P<path>.*)$",
        serve,
        {"document_root": settings.MEDIA_ROOT},
    ),
    path("test-only/aggregate/<int:model_id>/", AggregateNowView.as_view()),
]
