"""Prepare the data dir and serve the stock FMA apps on 127.0.0.1 with Django's dev server.

Run inside the stock venv, with ``tests/compat`` on PYTHONPATH::

    python -m stock_project.serve READY_FILE [PORT]

Applies migrations, creates (or reuses) the superuser ``admin`` and its DRF token, binds
``127.0.0.1:PORT`` (0, the default, lets the OS pick a free port, so there is no race), writes
``{"port", "username", "password", "token", "user_id"}`` as JSON to READY_FILE once the socket
listens, then serves until SIGTERM or SIGINT. It uses the same WSGI server and request handler
as ``manage.py runserver --noreload`` (so, like it, it drops headers containing underscores).
"""

from __future__ import annotations

import json
import os
import signal
import socketserver
import sys
from pathlib import Path
from types import FrameType

ADMIN_USERNAME = "admin"
ADMIN_PASSWORD = "admin-password"  # a throwaway account in a throwaway local database


def _bootstrap() -> tuple[int, str]:
    """Migrate the database and return ``(superuser id, token key)``."""
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from rest_framework.authtoken.models import Token

    call_command("migrate", interactive=False, verbosity=0)
    user = User.objects.filter(username=ADMIN_USERNAME).first()
    if user is None:
        user = User.objects.create_superuser(ADMIN_USERNAME, "", ADMIN_PASSWORD)
    token, _ = Token.objects.get_or_create(user=user)
    return user.pk, token.key


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str]) -> None:
    """Bootstrap, listen, announce through the ready file, serve until signalled."""
    ready_file = Path(argv[0])
    port = int(argv[1]) if len(argv) > 1 else 0
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "stock_project.settings")

    import django
    from django.conf import settings
    from django.core.servers.basehttp import WSGIRequestHandler, WSGIServer
    from django.core.wsgi import get_wsgi_application

    django.setup()
    Path(settings.MEDIA_ROOT).mkdir(parents=True, exist_ok=True)
    user_id, token = _bootstrap()

    # the same class runserver builds for its threaded mode
    server_cls = type(
        "WSGIServer", (socketserver.ThreadingMixIn, WSGIServer), {"daemon_threads": True}
    )
    httpd = server_cls(("127.0.0.1", port), WSGIRequestHandler)
    httpd.set_app(get_wsgi_application())
    signal.signal(signal.SIGTERM, _stop)

    info = {
        "port": httpd.server_address[1],
        "username": ADMIN_USERNAME,
        "password": ADMIN_PASSWORD,
        "token": token,
        "user_id": user_id,
    }
    tmp = ready_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(info))
    tmp.replace(ready_file)  # atomic: the launcher never reads a half-written file
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()


if __name__ == "__main__":
    main(sys.argv[1:])
