"""TLS between the clients and ``fma-connect serve``, with a throwaway CA made per module.

Every connection here is real TLS on 127.0.0.1: a round through HTTPS with both
clients, mutual TLS, and each way a handshake fails (another CA, an expired
certificate, plain HTTP to the TLS port and TLS to a plain one, no client certificate)
ending in a ConnectError that says what to do.
"""

from __future__ import annotations

import asyncio
import datetime
import ssl
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import urllib3

from fma_connect import AdminClient, WebClient
from fma_connect.cli import main
from fma_connect.exceptions import ConfigurationError, ConnectError
from fma_connect.server.serve import plain_http_warning
from fma_connect.server.testing import RunningServer, running_server, running_server_process
from fma_connect.server.tls import TLSError, is_loopback, server_context

trustme = pytest.importorskip("trustme", reason="the TLS tests make their CA with trustme")
aio = pytest.importorskip("fma_connect.aio", reason="the asyncio client needs the aio extra")

WEIGHTS = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, np.float32)}


@dataclass(frozen=True)
class Pki:
    """PEM files of a test CA, another CA, and certificates they signed."""

    ca: Path  # the CA the server's certificate chains to
    other_ca: Path  # a CA nobody here used
    server: Path  # certificate + key for 127.0.0.1, signed by ``ca``
    expired: Path  # the same, valid in 2020 only
    client: Path  # a client certificate + key signed by ``ca``
    stranger: Path  # a client certificate + key signed by ``other_ca``


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    where = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()
    files = Pki(*(where / f"{name}.pem" for name in Pki.__dataclass_fields__))
    ca.cert_pem.write_to_path(files.ca)
    other.cert_pem.write_to_path(files.other_ca)
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(files.server)
    ca.issue_cert(
        "127.0.0.1",
        not_before=datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC),
        not_after=datetime.datetime(2020, 12, 31, tzinfo=datetime.UTC),
    ).private_key_and_cert_chain_pem.write_to_path(files.expired)
    ca.issue_cert("client-1").private_key_and_cert_chain_pem.write_to_path(files.client)
    other.issue_cert("client-2").private_key_and_cert_chain_pem.write_to_path(files.stranger)
    return files


@pytest.fixture
def https(pki: Pki, tmp_path: Path) -> Iterator[RunningServer]:
    with running_server(tmp_path / "data", tls=server_context(pki.server)) as running:
        yield running


@pytest.fixture
def mutual(pki: Pki, tmp_path: Path) -> Iterator[RunningServer]:
    context = server_context(pki.server, client_ca=pki.ca)
    with running_server(tmp_path / "data", tls=context) as running:
        yield running


def _model(server: RunningServer, ca: Path, cert: Path | None = None) -> int:
    with AdminClient(server.url, server.admin_token, retries=0, verify=ca, cert=cert) as admin:
        created = admin.create_model("tls", requirement="require_x_updates", requirement_args=[1])
    model: int = created["id"]
    return model


def _round(client: WebClient) -> None:
    """Register, send one update, and get it back as the aggregate (one client's round)."""
    client.register()
    client.send_update(WEIGHTS, None, num_examples=1)
    latest = client.check_for_latest_model(like=WEIGHTS)
    assert latest is not None
    for name, value in WEIGHTS.items():
        np.testing.assert_array_equal(latest["values"][name], value)


def test_a_round_runs_over_https_with_the_ca_given_as_verify(
    https: RunningServer, pki: Pki
) -> None:
    assert https.url.startswith("https://127.0.0.1:")
    model = _model(https, pki.ca)
    with WebClient(model, url=https.url, codec="msgpack", verify=pki.ca, retries=0) as client:
        _round(client)


def test_a_large_update_goes_whole_over_https(https: RunningServer, pki: Pki) -> None:
    # 40 MiB: a resumable upload of 8 MiB chunks, each read in pieces of megabytes
    # through TLS into the server's shared read buffer (server/protocol.py).
    weights = {"w": np.random.default_rng(7).standard_normal(10 << 20, np.float32)}
    model = _model(https, pki.ca)
    with WebClient(model, url=https.url, codec="msgpack", verify=pki.ca, retries=0) as client:
        client.register()
        client.send_update(weights, None, num_examples=1)
        latest = client.check_for_latest_model(like=weights)
    assert latest is not None
    np.testing.assert_array_equal(latest["values"]["w"], weights["w"])


def test_the_async_client_runs_a_round_over_https(https: RunningServer, pki: Pki) -> None:
    model = _model(https, pki.ca)

    async def round_() -> None:
        async with aio.AsyncWebClient(
            model, url=https.url, codec="msgpack", verify=str(pki.ca), retries=0
        ) as client:
            await client.register()
            await client.send_update(WEIGHTS, None, num_examples=1)
            latest = await client.check_for_latest_model(like=WEIGHTS)
            assert latest is not None
            np.testing.assert_array_equal(latest["values"]["w"], WEIGHTS["w"])

    asyncio.run(round_())


def test_verify_false_skips_the_check_and_says_so(https: RunningServer, pki: Pki) -> None:
    model = _model(https, pki.ca)
    with (
        WebClient(model, url=https.url, verify=False, retries=0) as client,
        pytest.warns(urllib3.exceptions.InsecureRequestWarning),
    ):
        assert client.register()


@pytest.mark.parametrize("ca", ["default", "other"])
def test_a_certificate_from_a_ca_the_client_does_not_trust_is_refused(
    https: RunningServer, pki: Pki, ca: str
) -> None:
    verify: bool | Path = True if ca == "default" else pki.other_ca
    with (
        WebClient(1, url=https.url, verify=verify, retries=0) as client,
        pytest.raises(ConnectError) as caught,
    ):
        client.register()
    message = str(caught.value)
    assert "certificate verify failed" in message
    assert "not signed by a CA this client trusts: pass verify=" in message


def test_an_update_refused_at_the_handshake_was_never_sent(https: RunningServer) -> None:
    with (
        WebClient(1, uuid.uuid4(), url=https.url, retries=0) as client,
        pytest.raises(ConnectError) as caught,
    ):
        client.send_update(WEIGHTS)
    message = str(caught.value)
    assert "cannot reach the service" in message and "outcome is unknown" not in message
    assert "pass verify= (on the command line --cacert)" in message


def test_an_expired_certificate_is_refused_as_expired(pki: Pki, tmp_path: Path) -> None:
    with running_server(tmp_path / "data", tls=server_context(pki.expired)) as expired:
        for client in (WebClient(1, url=expired.url, verify=pki.ca, retries=0),):
            with client, pytest.raises(ConnectError, match="certificate has expired"):
                client.register()

        async def register() -> None:
            async with aio.AsyncWebClient(1, url=expired.url, verify=pki.ca, retries=0) as client:
                await client.register()

        with pytest.raises(ConnectError, match="the service's certificate has expired"):
            asyncio.run(register())


def test_plain_http_to_the_tls_port_says_to_use_https(https: RunningServer) -> None:
    plain = https.url.replace("https://", "http://")
    with WebClient(1, url=plain, retries=0) as client, pytest.raises(ConnectError) as caught:
        client.register()
    assert "if the service serves HTTPS on this port, use an https:// URL" in str(caught.value)


def test_https_to_a_plain_port_says_it_does_not_speak_tls(server: RunningServer) -> None:
    url = server.url.replace("http://", "https://")
    with WebClient(1, url=url, retries=0) as client, pytest.raises(ConnectError) as caught:
        client.register()
    assert "does not speak TLS on this port: use an http:// URL" in str(caught.value)

    async def register() -> None:
        async with aio.AsyncWebClient(1, url=url, retries=0) as client:
            await client.register()

    with pytest.raises(ConnectError, match="does not speak TLS on this port"):
        asyncio.run(register())


def test_mutual_tls_serves_a_client_whose_certificate_its_ca_signed(
    mutual: RunningServer, pki: Pki
) -> None:
    model = _model(mutual, pki.ca, cert=pki.client)
    with WebClient(
        model, url=mutual.url, codec="msgpack", verify=pki.ca, cert=pki.client, retries=0
    ) as client:
        _round(client)


@pytest.mark.parametrize("cert", ["none", "stranger"])
def test_mutual_tls_refuses_a_client_without_a_certificate_of_its_ca(
    mutual: RunningServer, pki: Pki, cert: str
) -> None:
    client_cert = None if cert == "none" else pki.stranger
    with (
        WebClient(1, url=mutual.url, verify=pki.ca, cert=client_cert, retries=0) as client,
        pytest.raises(ConnectError) as caught,
    ):
        client.register()
    # TLS 1.3: the client learns at its first read or write, as a connection closed.
    assert "requires client certificates (mutual TLS), pass cert= (on the command line" in str(
        caught.value
    )


def test_tls_options_that_are_not_files_are_configuration_errors(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(ConfigurationError, match="verify must be True .*no such file"):
        WebClient(1, url="https://127.0.0.1:1", verify=str(missing))
    with pytest.raises(ConfigurationError, match="cert must be the path of a PEM file"):
        WebClient(1, url="https://127.0.0.1:1", cert=(pki.client, missing))
    with pytest.raises(ConfigurationError, match="verify must be True"):
        AdminClient("https://127.0.0.1:1", "token", verify="yes")
    (tmp_path / "junk.pem").write_text("not a certificate")
    for make in (WebClient, aio.AsyncWebClient):
        with pytest.raises(ConfigurationError, match="not PEM CA certificates"):
            make(1, url="https://127.0.0.1:1", verify=tmp_path / "junk.pem")
        with pytest.raises(ConfigurationError, match="or a certificate and its key"):
            make(1, url="https://127.0.0.1:1", cert=pki.ca)  # a certificate without its key


def test_the_server_context_names_the_file_that_is_wrong(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(TLSError, match="--tls-cert .*missing.pem: no such file"):
        server_context(tmp_path / "missing.pem")
    with pytest.raises(TLSError, match="holds no private key: give its key file as --tls-key"):
        server_context(pki.ca)  # a certificate without its key
    with pytest.raises(TLSError, match="not a PEM certificate chain and its matching private key"):
        server_context(pki.ca, pki.client)  # a key, but not this certificate's
    with pytest.raises(TLSError, match="--tls-client-ca .*: not a file"):
        server_context(pki.server, client_ca=tmp_path)
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(TLSError, match="--tls-client-ca .*: not a PEM file of CA certificates"):
        server_context(pki.server, client_ca=tmp_path / "junk.pem")
    context = server_context(pki.server, client_ca=pki.ca)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_serve_runs_https_and_the_admin_cli_checks_it_against_cacert(
    pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with running_server_process(tmp_path / "data", args=("--tls-cert", str(pki.server))) as child:
        assert child.url.startswith("https://127.0.0.1:")
        assert not any("WARNING: serving plain HTTP" in line for line in child.output)
        base = ["admin", "--url", child.url, "--token", child.admin_token]
        assert main([*base, "--cacert", str(pki.ca), "models"]) == 0
        capsys.readouterr()
        assert main([*base, "models"]) == 1  # not signed by a default CA
        assert "pass verify=" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tls-key", "k.pem"], "--tls-key and --tls-client-ca need --tls-cert"),
        (["--tls-cert", "missing.pem"], "--tls-cert missing.pem: no such file"),
    ],
)
def test_serve_refuses_tls_options_it_cannot_use(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--port", "0", "--data-dir", str(tmp_path / "data"), *args]) == 1
    assert f"error: {message}" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()  # refused before the data directory opened


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.1.2.3", False),
        ("fl.example.org", False),
    ],
)
def test_only_loopback_addresses_serve_plain_http_without_a_warning(
    host: str, loopback: bool
) -> None:
    assert is_loopback(host) is loopback
    warning = plain_http_warning(host, tls=False)
    if loopback:
        assert warning is None
    else:
        assert warning is not None and warning.startswith(f"WARNING: serving plain HTTP on {host}")
        assert "clear text" in warning and "--tls-cert" in warning
    assert plain_http_warning(host, tls=True) is None  # TLS anywhere: nothing to warn of


def test_a_ca_given_as_verify_is_the_only_one_the_async_client_trusts(pki: Pki) -> None:
    from fma_connect._tls import ssl_context

    context = ssl_context(pki.ca, None)
    assert isinstance(context, ssl.SSLContext)
    assert context.cert_store_stats()["x509_ca"] == 1  # not the system's CAs beside it
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
