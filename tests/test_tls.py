"""TLS and ACL options reach the connections ``make_valkey_client`` makes (no server)."""

from __future__ import annotations

import ssl
from typing import Any

from valkey.asyncio.connection import SSLConnection

from appconfig_cache import (
    make_valkey_client,
)

TLS_URL = "rediss://user:pw@127.0.0.1:6390/0"


async def test_tls_and_acl_options_pass_through_make_valkey_client(tmp_path: Any) -> None:
    """``rediss://`` selects TLS; URL credentials, keywords and CA settings reach the pool."""
    ca = str(tmp_path / "ca.pem")
    client = make_valkey_client(TLS_URL, ssl_ca_certs=ca)
    try:
        pool = client.connection_pool
        assert pool.connection_class is SSLConnection
        kwargs = pool.connection_kwargs
        assert (kwargs["username"], kwargs["password"]) == ("user", "pw")
        assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("127.0.0.1", 6390, 0)
        assert kwargs["ssl_ca_certs"] == ca
        connection = pool.make_connection()  # no I/O: nothing listens on 6390
        assert connection.username == "user" and connection.password == "pw"
        assert connection.ssl_context.ca_certs == ca
        assert connection.ssl_context.cert_reqs == ssl.CERT_REQUIRED
    finally:
        await client.aclose()

    # ACL credentials as keywords on a plain URL, and an explicit hostname check.
    client = make_valkey_client("redis://127.0.0.1:6390/0", username="acl-user", password="secret")
    try:
        kwargs = client.connection_pool.connection_kwargs
        assert (kwargs["username"], kwargs["password"]) == ("acl-user", "secret")
    finally:
        await client.aclose()
    client = make_valkey_client(TLS_URL, ssl_ca_certs=ca, ssl_check_hostname=True)
    try:
        assert client.connection_pool.make_connection().ssl_context.check_hostname is True
    finally:
        await client.aclose()

    cluster = make_valkey_client(TLS_URL, cluster=True, ssl_ca_certs=ca)
    try:
        kwargs = cluster.connection_kwargs
        assert kwargs["connection_class"] is SSLConnection
        assert (kwargs["username"], kwargs["password"]) == ("user", "pw")
        assert kwargs["ssl_ca_certs"] == ca and kwargs["ssl_cert_reqs"] == "required"
    finally:
        await cluster.aclose()


async def test_tls_checks_the_hostname_by_default(tmp_path: Any) -> None:
    ca = str(tmp_path / "ca.pem")
    client = make_valkey_client(TLS_URL, ssl_ca_certs=ca)
    cluster = make_valkey_client(TLS_URL, cluster=True, ssl_ca_certs=ca)
    try:
        assert client.connection_pool.make_connection().ssl_context.check_hostname is True
        assert cluster.connection_kwargs.get("ssl_check_hostname") is True
    finally:
        await client.aclose()
        await cluster.aclose()
