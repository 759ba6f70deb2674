"""A loopback TLS front for the test PostgreSQL server, whose own TLS may be off.

It answers a client's SSLRequest with 'S', completes the TLS handshake with a certificate
for 127.0.0.1 issued by a CA of its own, and relays the decrypted bytes to the server in
the clear. A client that checks the certificate (`sslmode=verify-full`) connects only when
it is given that CA's file (`sslrootcert`); tests use it to see that a connection's TLS
options really reach the driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import ssl
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SSL_REQUEST = struct.pack("!ii", 8, 80877103)
WAIT_S = 10.0


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(directory: Path, label: str) -> tuple[Path, ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA; its certificate written to `<label>-ca.pem`."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"aflow test CA {label}"))
        .issuer_name(_name(f"aflow test CA {label}"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    path = directory / f"{label}-ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, key, cert


def make_server_cert(
    directory: Path, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate
) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 issued by the CA: (certificate file, key file)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / "server.pem", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return cert_path, key_path


@dataclass
class TlsFront:
    port: int
    ca_file: Path  # the CA that issued the front's certificate
    other_ca_file: Path  # a CA that did not
    handshakes: int = 0


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        with contextlib.suppress(ConnectionError, ssl.SSLError, RuntimeError):
            writer.close()


@contextlib.asynccontextmanager
async def tls_front(upstream_host: str, upstream_port: int, directory: Path) -> AsyncIterator[TlsFront]:
    """Serve the front on a free loopback port while the block runs."""
    ca_file, ca_key, ca_cert = make_ca(directory, "front")
    other_ca_file, _, _ = make_ca(directory, "other")
    cert_file, key_file = make_server_cert(directory, ca_key, ca_cert)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    tasks: set[asyncio.Task[None]] = set()
    front = TlsFront(0, ca_file, other_ca_file)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        upstream: asyncio.StreamWriter | None = None
        try:
            if await asyncio.wait_for(reader.readexactly(8), WAIT_S) != SSL_REQUEST:
                return  # only clients that ask for TLS are served
            writer.write(b"S")
            await writer.drain()
            await asyncio.wait_for(writer.start_tls(context), WAIT_S)
            front.handshakes += 1
            up_reader, upstream = await asyncio.wait_for(
                asyncio.open_connection(upstream_host, upstream_port), WAIT_S)
            await asyncio.gather(_pump(reader, upstream), _pump(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ssl.SSLError):
            pass  # a client that gave up, e.g. on our certificate
        finally:
            for w in (writer, upstream):
                if w is not None:
                    with contextlib.suppress(ConnectionError, ssl.SSLError, RuntimeError):
                        w.close()
            tasks.discard(task)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    front.port = server.sockets[0].getsockname()[1]
    try:
        yield front
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        if tasks:
            await asyncio.wait(list(tasks), timeout=WAIT_S)
        await asyncio.wait_for(server.wait_closed(), WAIT_S)
