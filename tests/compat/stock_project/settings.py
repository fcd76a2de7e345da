"""Django and fma-core settings for hosting the stock FMA apps on 127.0.0.1.

Follows the stock service's own local settings where they shape API behaviour (the installed
apps, the DRF authentication order, filters, the 100 MB upload limit, ``IS_LOCAL_DEPLOYMENT``)
and departs from them only to be a hermetic test fixture: SQLite and media files live under
``FMA_STOCK_DATA_DIR``, DEBUG is off unless ``FMA_STOCK_DEBUG=1`` (the stock local settings
have it on), and django-q is given its ORM broker so that nothing needs redis. No django-q
cluster runs: aggregation is triggered through the test-only URL in ``urls.py``.

The same module doubles as fma-core's ``FMA_SETTINGS_MODULE`` (``AGGREGATOR_SETTINGS``).
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("FMA_SETTINGS_MODULE", __name__)

DATA_DIR = Path(os.environ.get("FMA_STOCK_DATA_DIR", "fma-stock-data")).resolve()

SECRET_KEY = "fma-connect-compat-tests-only"  # never deployed: a local test fixture
DEBUG = os.environ.get("FMA_STOCK_DEBUG", "") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",  # DRF's browsable API renderer uses its templates
    "django_q",  # fma_django's models and first migration depend on it
    "mptt",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "fma_django",
    "fma_django_api",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "stock_project.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(DATA_DIR / "db.sqlite3"),
        # the dev server is threaded; wait for a lock rather than fail at once
        "OPTIONS": {"timeout": 30},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"

# Local FileSystemStorage (Django's default storage), under the stock service's media URL.
MEDIA_ROOT = str(DATA_DIR / "media")
MEDIA_URL = "/mediafiles/"
STATIC_URL = "/static/"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": (
        "rest_framework.authentication.BasicAuthentication",
        "rest_framework.authentication.SessionAuthentication",
        "fma_django.authenticators.ClientAuthentication",
        "rest_framework.authentication.TokenAuthentication",
    ),
    "DEFAULT_FILTER_BACKENDS": (
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.OrderingFilter",
    ),
}
DATA_UPLOAD_MAX_MEMORY_SIZE = 100 * 1024**2

# fma_django: schedule aggregation with django-q (a DB row only) rather than AWS EventBridge.
IS_LOCAL_DEPLOYMENT = True
Q_CLUSTER = {"name": "fma-stock-compat", "orm": "default", "timeout": 60, "retry": 120}

# fma-core (read through FMA_SETTINGS_MODULE by fma_core.conf)
INSTALLED_PACKAGES = ["fma_django_connectors"]
AGGREGATOR_SETTINGS = {
    "aggregator_connector_type": "DjangoAggConnector",
    "metadata_connector": {"type": "DjangoMetadataConnector"},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    # keep 500 tracebacks in the server log even with DEBUG off
    "loggers": {"django": {"handlers": ["console"], "level": "INFO"}},
}
