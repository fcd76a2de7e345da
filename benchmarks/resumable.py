"""Resumable transfers at full size: what cuts, crashes and unchanged layers cost on the wire.

    python benchmarks/resumable.py [--size MIB] [--output DIR]

Every transfer goes through a byte-counting relay on 127.0.0.1 (fma_connect.bench.
counting_proxy) in front of ``fma-connect serve`` (a child process); the relay cuts
connections at chosen byte offsets with a reset, as a dropped link would. The model is
8 float32 tensors of ``size / 8`` MiB each, sent in msgpack with the default chunks
(8 MiB). Each case says what it bounds:

* an upload cut 5 times at random byte offsets: bytes up / payload (<= 1.1x);
* a download cut 5 times: bytes down / payload (<= 1.1x);
* the client process SIGKILLed partway (30-70%, at random) and started again with the
  same update: bytes up by both processes / payload (<= 1.2x);
* the server SIGKILLed halfway and restarted on the same data directory: the client
  resumes (bytes up / payload), and nothing was visible before the update completed;
* a second update that differs from the first in one of the 8 tensors: its bytes up /
  its size (<= 0.2x).

Every update is checked stored once and bit for bit (downloaded and compared).
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import requests

from fma_connect import ConnectError, WebClient
from fma_connect.admin import AdminClient
from fma_connect.bench.counting_proxy import counting_proxy
from fma_connect.codecs.msgpack_numpy import MsgpackCodec
from fma_connect.server.testing import ServerProcess, running_server_process

TOKEN = "resumable-benchmark"
QUIET = ("--log-level", "warning")
TENSORS = 8
MSGPACK = MsgpackCodec.media_type


def _weights(seed: int, size: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    per = size // TENSORS // 4
    return {f"layer{i}": rng.standard_normal(per, dtype=np.float32) for i in range(TENSORS)}


def _nbytes(weights: dict[str, np.ndarray]) -> int:
    return sum(a.nbytes for a in weights.values())


def _model(url: str, name: str) -> int:
    admin = AdminClient(url, TOKEN, retries=0)
    model = admin.create_model(name, requirement="require_x_updates", requirement_args=[10**6])
    return int(model["id"])


def _check(url: str, model_id: int, uuid: str, weights: dict[str, np.ndarray]) -> None:
    """The model's latest update holds exactly ``weights``."""
    latest = AdminClient(url, TOKEN, retries=0).list_updates(model_id)[0]
    response = requests.get(
        url + latest["data"], headers={"CLIENT-UUID": uuid, "Accept": MSGPACK}, timeout=600
    )
    response.raise_for_status()
    stored = dict(MsgpackCodec().decode(bytearray(response.content)))
    for name, array in weights.items():
        assert np.array_equal(stored[name], array), f"{name} differs"


def upload_cut(server: ServerProcess, size: int, rng: random.Random) -> dict[str, Any]:
    weights = _weights(1, size)
    model_id = _model(server.url, "cuts")
    with counting_proxy(server.url) as proxy:
        client = WebClient(model_id, url=proxy.url, codec="msgpack", retries=5)
        client.register()
        start = proxy.counts().up
        proxy.cut_at(up=sorted(start + rng.randrange(_nbytes(weights)) for _ in range(5)))
        client.send_update(weights)
        sent = proxy.counts().up - start
        cuts = proxy.cuts_made
    assert cuts == 5, cuts
    assert len(AdminClient(server.url, TOKEN).list_updates(model_id)) == 1
    _check(server.url, model_id, client.uuid, weights)
    return {
        "case": "upload cut 5 times",
        "ratio": sent / _nbytes(weights),
        "target": 1.1,
    }


def download_cut(server: ServerProcess, size: int, rng: random.Random) -> dict[str, Any]:
    weights = _weights(2, size)
    model_id = _model(server.url, "downloads")
    owner = WebClient(model_id, url=server.url, codec="msgpack")
    owner.register()
    owner.send_update(weights)
    AdminClient(server.url, TOKEN).aggregate(model_id)
    with counting_proxy(server.url) as proxy:
        client = WebClient(model_id, uuid=owner.uuid, url=proxy.url, codec="msgpack", retries=5)
        start = proxy.counts().down
        proxy.cut_at(down=sorted(start + rng.randrange(_nbytes(weights)) for _ in range(5)))
        latest = client.check_for_latest_model()
        received = proxy.counts().down - start
        cuts = proxy.cuts_made
    assert cuts == 5, cuts
    assert latest is not None
    for name, array in weights.items():
        assert np.array_equal(latest["values"][name], array), f"{name} differs"
    return {
        "case": "download cut 5 times",
        "ratio": received / _nbytes(weights),
        "target": 1.1,
    }


_CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    sys.path.insert(0, sys.argv[5])
    from resumable import _weights
    from fma_connect import ConnectError, WebClient

    url, model_id, uuid, size = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    client = WebClient(model_id, uuid=uuid, url=url, codec="msgpack")
    print(client.send_update(_weights(3, size))["id"], flush=True)
    """
)


def _wait_for(condition: Any, what: str, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"gave up waiting for {what}")
        time.sleep(0.01)


def client_killed(
    server: ServerProcess, size: int, workdir: Path, rng: random.Random
) -> dict[str, Any]:
    model_id = _model(server.url, "client-restart")
    owner = WebClient(model_id, url=server.url, codec="msgpack")
    owner.register()
    child = workdir / "child.py"
    child.write_text(_CHILD)
    here = str(Path(__file__).resolve().parent)
    with counting_proxy(server.url) as proxy:
        command = [
            sys.executable,
            str(child),
            proxy.url,
            str(model_id),
            owner.uuid,
            str(size),
            here,
        ]
        first = subprocess.Popen(command, stdout=subprocess.PIPE)
        at = int(size * rng.uniform(0.3, 0.7))  # a random point, not a chunk's end
        _wait_for(lambda: proxy.counts().up > at, "the first process partway")
        first.kill()
        first.wait()
        before = proxy.counts().up  # what the first process sent
        assert AdminClient(server.url, TOKEN).list_updates(model_id) == []
        subprocess.run(command, check=True, stdout=subprocess.PIPE)
        sent = proxy.counts().up
    print(
        f"client killed after sending {before / size:.3f} of the payload; the second sent "
        f"{(sent - before) / size:.3f}"
    )
    assert len(AdminClient(server.url, TOKEN).list_updates(model_id)) == 1
    _check(server.url, model_id, owner.uuid, _weights(3, size))
    return {
        "case": "client SIGKILLed partway, started again",
        "ratio": sent / size,
        "target": 1.2,
    }


def server_killed(data: Path, size: int) -> dict[str, Any]:
    weights = _weights(4, size)
    with running_server_process(data, admin_token=TOKEN, args=QUIET) as one:
        model_id = _model(one.url, "server-restart")
        with counting_proxy(one.url) as proxy:
            client = WebClient(model_id, url=proxy.url, codec="msgpack")
            client.register()
            outcome: dict[str, Any] = {}

            def send() -> None:
                # As a user would: while the server is down, send the same update again.
                for _ in range(30):
                    try:
                        outcome.update(client.send_update(weights))
                        return
                    except ConnectError as exc:
                        outcome["error"] = exc
                        time.sleep(1)

            sender = threading.Thread(target=send)
            sender.start()
            _wait_for(lambda: proxy.counts().up > size // 2, "the upload halfway")
            one.kill()
            with running_server_process(data, admin_token=TOKEN, args=QUIET) as two:
                parts = urlsplit(two.url)
                proxy.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
                sender.join(600)
                if "id" not in outcome:
                    raise outcome["error"]
                sent = proxy.counts().up
                assert len(AdminClient(two.url, TOKEN).list_updates(model_id)) == 1
                _check(two.url, model_id, client.uuid, weights)
    return {
        "case": "server SIGKILLed halfway, restarted",
        "ratio": sent / _nbytes(weights),
        "target": 1.2,
    }


def one_layer_changed(server: ServerProcess, size: int) -> dict[str, Any]:
    weights = _weights(5, size)
    model_id = _model(server.url, "one-layer")
    with counting_proxy(server.url) as proxy:
        client = WebClient(model_id, url=proxy.url, codec="msgpack")
        client.register()
        client.send_update(weights)
        weights["layer5"] = weights["layer5"] + np.float32(1.0)
        start = proxy.counts().up
        client.send_update(weights)
        sent = proxy.counts().up - start
    assert len(AdminClient(server.url, TOKEN).list_updates(model_id)) == 2
    _check(server.url, model_id, client.uuid, weights)
    return {
        "case": "second update, 1 of 8 tensors changed",
        "ratio": sent / _nbytes(weights),
        "target": 0.2,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size", type=int, default=1024, help="payload in MiB (default 1024)")
    parser.add_argument("--output", type=Path, help="write resumable.md here")
    args = parser.parse_args()
    size = args.size << 20
    rng = random.Random(0)
    rows = []
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        workdir = Path(work)
        with running_server_process(workdir / "data", admin_token=TOKEN, args=QUIET) as server:
            rows.append(upload_cut(server, size, rng))
            rows.append(download_cut(server, size, rng))
            rows.append(client_killed(server, size, workdir, rng))
            rows.append(one_layer_changed(server, size))
        rows.append(server_killed(workdir / "crash", size))
    minutes = (time.perf_counter() - began) / 60
    lines = [
        "| case | bytes on the wire / payload | target | met |",
        "|---|---|---|---|",
    ]
    for row in rows:
        met = "yes" if row["ratio"] <= row["target"] else "no"
        lines.append(f"| {row['case']} | {row['ratio']:.3f} | <= {row['target']} | {met} |")
    table = "\n".join(lines)
    header = (
        f"Command: `python benchmarks/resumable.py --size {args.size}` ({minutes:.1f} minutes); "
        f"{args.size} MiB of float32 in {TENSORS} tensors, msgpack, 8 MiB chunks.\n\n"
    )
    print(header + table)
    if args.output is not None:
        args.output.mkdir(parents=True, exist_ok=True)
        (args.output / "resumable.md").write_text(header + table + "\n")


if __name__ == "__main__":
    main()
