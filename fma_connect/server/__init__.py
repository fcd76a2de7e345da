"""The reference FMA server: the stock service's REST contract on Starlette and uvicorn.

Install with ``pip install fma-connect[server]``; run with ``fma-connect serve``, or
build the ASGI app with :func:`create_app`. Tests run it in-process with
:func:`fma_connect.server.testing.running_server`.

Modules: :mod:`.app` (the app and its errors), ``routes_*`` (HTTP handlers),
:mod:`.service` (what the routes do: :mod:`.service_models`, :mod:`.service_updates`
with :mod:`.json_weights`), :mod:`.rounds` (aggregation rounds, with
:mod:`.policies` deciding when and :mod:`.deadlines` keeping time, :mod:`.leases` across
replicas), :mod:`.aggregators` (how a round combines updates; :mod:`.mean` the
arithmetic), :mod:`.aggregation` (requirements), :mod:`.store` (metadata: the parts
:mod:`.store_core`, :mod:`.store_clients`, :mod:`.store_models`, :mod:`.store_updates`,
:mod:`.store_rounds`; on :mod:`.database`: SQLite or PostgreSQL, with :mod:`.migrations`),
:mod:`.keys` (the identity tables, with :mod:`.enrolment` and :mod:`.nonces`), :mod:`.blobs`
(payloads: files, or objects of :mod:`.object_store`), :mod:`.uploads` (resumable
uploads), :mod:`.weights` (codecs on the wire), :mod:`.jsonstream` (JSON answers written
in pieces), :mod:`.structure` (tensor names and shapes), :mod:`.auth`,
:mod:`.validation`, :mod:`.schemas` (JSON Schemas), :mod:`.jsonvalues` (bounds on kept
JSON), :mod:`.limits`, :mod:`.bounds` (slow and numerous clients), :mod:`.protocol` (the
seam onto uvicorn), :mod:`.shapes`, :mod:`.locks`.
"""

from __future__ import annotations

from .app import create_app
from .service import Service

__all__ = ["Service", "create_app"]
