"""Peak memory of the reference server's rounds of 10 updates, as a multiple of the model.

    python benchmarks/sparse_round_memory.py

Ten clients send updates of a 4M-parameter float32 model (16 MB) in msgpack and in the
sparse codec (also to a model with ``aggregate_fraction``, whose round adds a sparse
step), for two rounds: the first from the initial model, the second from the first
aggregate. The clients restore what
they fetch ``like=`` the initial model, so their updates (and the mean) stay float32:
without it a model that went through plain JSON comes back float64, twice the model.
The peak is what Python's tracemalloc saw (numpy arrays included) while the admin's
aggregate call ran, server in process.
"""

from __future__ import annotations

import tempfile
import tracemalloc

import numpy as np

from fma_connect import WebClient
from fma_connect.admin import AdminClient
from fma_connect.server.testing import running_server

N = 4_000_000


def main() -> None:
    """Print the peak of each round."""
    rng = np.random.default_rng(0)
    initial = {"w": rng.standard_normal(N).astype(np.float32)}
    with tempfile.TemporaryDirectory() as data, running_server(data) as (url, token):
        admin = AdminClient(url, token)
        for codec, fraction in (("msgpack", None), ("sparse", None), ("sparse", 0.1)):
            model = admin.create_model(
                codec,
                initial_model=initial,
                requirement="require_x_updates",
                requirement_args=[10**6],  # rounds run when the admin asks
                aggregate_fraction=fraction,
            )["id"]
            label = codec if fraction is None else f"{codec}, aggregate_fraction {fraction}"
            clients = [WebClient(model, url=url, codec=codec) for _ in range(10)]
            for round_ in (1, 2):
                for client in clients:
                    latest = client.check_for_latest_model(like=initial)
                    assert latest is not None
                    step = rng.standard_normal(N).astype(np.float32) * 0.01
                    client.send_update(
                        {"w": latest["values"]["w"] + step}, base_aggregate=latest["aggregate"]
                    )
                tracemalloc.start()
                admin.aggregate(model)
                _, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
                print(
                    f"{label} round {round_}: peak {peak / 1e6:.1f} MB = "
                    f"{peak / (4 * N):.2f}x the model"
                )


if __name__ == "__main__":
    main()
