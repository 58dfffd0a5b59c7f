"""Self-signed test credentials for trying a TLS deployment locally.

`make_credentials(dir, hosts, clients)` writes, with the `cryptography` package:

    ca.crt, ca.key           a throw-away certificate authority (valid `days` days)
    server.pem, server.key   the SuperLink's certificate, signed by the CA; its
                             subjectAltName lists every entry of `hosts` (IPs and DNS
                             names) - a client must dial one of them
    client_<k>, client_<k>.pub
                             SuperNode authentication key pairs (ECDSA P-384, OpenSSH
                             format, as Flower 1.39 expects); the server registers the
                             .pub files, client k starts with the private file

For real deployments use certificates from your own CA; these are for local trials.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True)
class Credentials:
    """Paths written by `make_credentials`."""

    dir: Path
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_keys: tuple[Path, ...]  # private keys; the public key is the same path + ".pub"

    def public_key(self, client: int) -> Path:
        """Path of client `client`'s public key: its private key's path plus ".pub"."""
        return self.client_keys[client].with_name(self.client_keys[client].name + ".pub")


def _write(path: Path, data: bytes, secret: bool = False) -> None:
    path.write_bytes(data)
    if secret:
        os.chmod(path, 0o600)


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def client_key_pair(path: Path) -> Path:
    """Write an ECDSA P-384 key pair in OpenSSH format to `path` and `path`.pub."""
    key = ec.generate_private_key(ec.SECP384R1())
    _write(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                   serialization.NoEncryption()), secret=True)
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _write(path.with_name(path.name + ".pub"), pub + b"\n")
    return path


def make_credentials(out: Path | str, hosts: Sequence[str] = DEFAULT_HOSTS, clients: int = 3,
                     days: int = 30) -> Credentials:
    """Create a test CA, a server certificate for `hosts` and `clients` node key pairs.

    Args:
        out: folder for the files (created).
        hosts: IP addresses and DNS names the server certificate is valid for (its SAN).
        clients: number of node key pairs (client_0, client_0.pub, ...).
        days: validity of the certificates.

    Returns:
        The paths written.

    Raises:
        ValueError: if `hosts` is empty or `clients` is negative.
    """
    if not hosts:
        raise ValueError("hosts: need at least one address or DNS name for the server certificate")
    if clients < 0:
        raise ValueError(f"clients: must be >= 0, got {clients}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)

    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedsim test CA")])
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False,
                                            encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
               .sign(ca_key, hashes.SHA256()))

    server_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    server_cert = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
                   .issuer_name(ca_name).public_key(server_key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
                   .add_extension(_san(hosts), critical=False)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                  critical=False)
                   .sign(ca_key, hashes.SHA256()))

    _write(out / "ca.key", _pem_key(ca_key), secret=True)
    _write(out / "ca.crt", ca_cert.public_bytes(serialization.Encoding.PEM))
    _write(out / "server.key", _pem_key(server_key), secret=True)
    _write(out / "server.pem", server_cert.public_bytes(serialization.Encoding.PEM))
    keys = tuple(client_key_pair(out / f"client_{k}") for k in range(clients))
    return Credentials(out, out / "ca.crt", out / "server.pem", out / "server.key", keys)
