"""Provisioning and TLS identity: the project CA, one startup kit per participant, and the TLS
contexts and peer identity the TCP backend uses.

``provision`` (or ``collab provision``) writes::

    OUT/
      ca/ca.crt, ca/ca.key          the project CA; the project owner keeps it, it is in no kit
      server/kit.json, ca.crt, cert.pem, key.pem
      <site>/kit.json, ca.crt, cert.pem, key.pem
      <admin>/kit.json, ca.crt, cert.pem, key.pem

Every participant has its own EC P-256 key. A leaf certificate's subject says who it is:
``O`` = project, ``OU`` = role (``server``, ``site`` or ``admin``), ``CN`` = name. The TCP backend
takes a peer's identity from its verified certificate (:func:`peer_identity`), never from a
message or from ``kit.json``. See ``docs/provisioning.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import logging
import os
import re
import secrets
import shutil
import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from collab_core.errors import CollabError
from collab_core.registry import Command

log = logging.getLogger("collab.tcp.kit")

ROLES = ("server", "site", "admin")
SCHEMA = "collab.kit"
VERSION = 1
KIT_FILE = "kit.json"
CA_DIR = "ca"
CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
SERVER_NAME = "server"
#: Names no site or admin may take: the server's, and the CA folder's.
RESERVED_NAMES = (SERVER_NAME, CA_DIR)

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
_DNS_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_LOOPBACK_NAMES = ("localhost",)
_CLOCK_SKEW = dt.timedelta(hours=1)


class AuthError(CollabError):
    """A peer could not be authenticated: no verified certificate, another project, unknown role."""


class KitError(CollabError, ValueError):
    """Provisioning was given bad input, or a startup kit is missing, malformed or inconsistent."""


class KitExistsError(KitError, FileExistsError):
    """``provision`` would overwrite an existing kit folder."""


# -- validation ------------------------------------------------------------------------------------


def check_name(name: object, what: str = "name") -> str:
    """Return ``name`` if it is a valid project or participant name; else raise KitError."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise KitError(
            f"invalid {what} {name!r}: use 1 to 64 characters from letters, digits and '_.@-', "
            f"starting with a letter or digit (e.g. 'site-1', 'admin@example.org')"
        )
    return name


def check_host(host: object) -> str:
    """Return ``host`` if it is an IP address or a DNS name, else raise :class:`KitError`."""
    if isinstance(host, str) and host:
        try:
            ipaddress.ip_address(host)
            return host
        except ValueError:
            pass
        labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
        if len(host) <= 253 and all(_DNS_LABEL_RE.fullmatch(label) for label in labels):
            return host
    raise KitError(
        f"invalid server host {host!r}: give a DNS name (fl.example.org) or an IP address "
        f"(10.0.0.5, or [::1] for IPv6 in HOST:PORT)"
    )


def check_port(port: object) -> int:
    """Return ``port`` if it is an int in 1..65535, else raise :class:`KitError`."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise KitError(f"invalid server port {port!r}: use a number from 1 to 65535")
    return port


def parse_server(address: object) -> tuple[str, int]:
    """Split ``"HOST:PORT"`` (``"[::1]:8002"`` for IPv6) into a checked ``(host, port)``."""
    if not isinstance(address, str) or ":" not in address:
        raise KitError(
            f"invalid server address {address!r}: write it as HOST:PORT, e.g. fl.example.org:8002"
        )
    host, _, port_text = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            if ipaddress.ip_address(host).version != 6:
                raise ValueError
        except ValueError:
            raise KitError(
                f"invalid server address {address!r}: brackets are for IPv6 addresses only"
            ) from None
    elif ":" in host:
        raise KitError(
            f"invalid server address {address!r}: write an IPv6 address in brackets, "
            f"e.g. [::1]:8002"
        )
    if not port_text.isdigit():
        raise KitError(
            f"invalid server address {address!r}: the port must be a number from 1 to 65535"
        )
    return check_host(host), check_port(int(port_text))


def format_server(host: str, port: int) -> str:
    """``"HOST:PORT"``, with IPv6 addresses in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_MODULE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


def _check_modules(modules: object) -> tuple[str, ...] | None:
    """``allowed_modules`` of a kit: None, or dotted module names."""
    if modules is None:
        return None
    if isinstance(modules, str) or not all(isinstance(m, str) and _MODULE_RE.fullmatch(m) for m in modules):  # type: ignore[union-attr]
        raise KitError(f"allowed_modules must be a list of dotted module names, got {modules!r}")
    return tuple(modules)  # type: ignore[arg-type]


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower().rstrip(".") in _LOOPBACK_NAMES


def _check_participants(
    project: str, sites: Iterable[str], admins: Iterable[str]
) -> tuple[list[str], list[str]]:
    check_name(project, "project name")
    if isinstance(sites, str) or isinstance(admins, str):
        raise KitError("pass sites and admins as lists of names, e.g. sites=['site-1', 'site-2']")
    sites, admins = list(sites), list(admins)
    if not sites:
        raise KitError(
            "a project needs at least one site: pass sites=['site-1', ...] (--sites site-1,...)"
        )
    # casefolded name -> "role 'name'": kit folders must differ on case-insensitive filesystems too
    seen: dict[str, str] = {}
    for role, names in (("site", sites), ("admin", admins)):
        for name in names:
            check_name(name, f"{role} name")
            if name.casefold() in RESERVED_NAMES:
                raise KitError(
                    f"{role} name {name!r} is reserved ({', '.join(RESERVED_NAMES)} name the "
                    f"server kit and the CA folder); pick another name"
                )
            previous = seen.get(name.casefold())
            if previous is not None:
                raise KitError(
                    f"participant name {name!r} is given twice (as {previous} and as {role} "
                    f"{name!r}); every site and admin needs its own name (names that differ only "
                    f"in case clash too)"
                )
            seen[name.casefold()] = f"{role} {name!r}"
    return sites, admins


# -- certificates ----------------------------------------------------------------------------------


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Write ``key`` as unencrypted PKCS#8 PEM, readable by its owner only (mode 0600)."""
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to a file that already existed
        os.write(fd, data)
    finally:
        os.close(fd)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _validity(valid_days: int) -> tuple[dt.datetime, dt.datetime]:
    now = dt.datetime.now(dt.timezone.utc)
    return now - _CLOCK_SKEW, now + dt.timedelta(days=valid_days)


def _make_ca(project: str, valid_days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, project),
            # a random suffix tells two provisionings of the same project apart in error messages
            x509.NameAttribute(NameOID.COMMON_NAME, f"collab CA {secrets.token_hex(4)}"),
        ]
    )
    not_before, not_after = _validity(valid_days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _san_for(host: str) -> list[x509.GeneralName]:
    """The server certificate's subjectAltName entries for ``host`` (plus loopback aliases)."""
    names: list[x509.GeneralName] = []

    def add(entry: str) -> None:
        try:
            general: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(entry))
        except ValueError:
            general = x509.DNSName(entry)
        if general not in names:
            names.append(general)

    add(host)
    if _is_loopback(host):
        for alias in ("localhost", "127.0.0.1", "::1"):
            add(alias)
    return names


def _make_leaf(
    project: str,
    name: str,
    role: str,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    valid_days: int,
    server_host: str,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, project),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    not_before, not_after = _validity(valid_days)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if role == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(min(not_after, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                # a site's key also seals secure=True calls for it (ECDH, collab_tcp.secure)
                key_agreement=role == "site",
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if role == "server":
        builder = builder.add_extension(
            x509.SubjectAlternativeName(_san_for(server_host)), critical=False
        )
    return builder.sign(ca_key, hashes.SHA256()), key


# -- provisioning ----------------------------------------------------------------------------------


def provision(
    project: str,
    server: str,
    sites: list[str],
    admins: list[str],
    out: str | Path,
    *,
    allow_custom_code: bool = True,
    allowed_modules: Iterable[str] | None = None,
    valid_days: int = 825,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write the project CA and one startup kit per participant; return {participant name: kit dir}.

    ``allow_custom_code=False`` makes sites refuse a job's own code: they build only objects from
    ``allowed_modules`` (modules and their submodules; default: collab's standard recipes,
    ``collab_core.recipes``), checked before anything is imported.

    ``server`` is ``"HOST:PORT"`` as sites will dial it. The server's kit is named ``"server"``.
    An existing, non-empty ``out`` is refused unless ``overwrite=True``, which replaces the CA
    folder and the kit folders of the participants given (other folders in ``out`` are left
    alone). Raises :class:`KitError` on bad input.
    """
    host, port = parse_server(server)
    sites, admins = _check_participants(project, sites, admins)
    modules = _check_modules(allowed_modules)
    if isinstance(valid_days, bool) or not isinstance(valid_days, int) or valid_days < 1:
        raise KitError(f"invalid valid_days {valid_days!r}: use a whole number of days, at least 1")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise KitExistsError(f"{out} exists and is not a folder; pick another output folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise KitExistsError(
            f"{out} already exists and is not empty; pick another output folder, or pass "
            f"overwrite=True (--force) to replace its CA and kits (every old kit stops working)"
        )

    participants = (
        [(SERVER_NAME, "server")] + [(s, "site") for s in sites] + [(a, "admin") for a in admins]
    )
    targets = [out / CA_DIR] + [out / name for name, _ in participants]
    for target in targets:
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.exists():
            shutil.rmtree(target)
    out.mkdir(parents=True, exist_ok=True)

    ca_cert, ca_key = _make_ca(project, valid_days)
    ca_dir = out / CA_DIR
    ca_dir.mkdir()
    os.chmod(ca_dir, 0o700)
    _write_cert(ca_dir / CA_CERT_FILE, ca_cert)
    _write_key(ca_dir / CA_KEY_FILE, ca_key)

    server_text = format_server(host, port)
    written: dict[str, Path] = {}
    for name, role in participants:
        kit_dir = out / name
        kit_dir.mkdir()
        cert, key = _make_leaf(project, name, role, ca_cert, ca_key, valid_days, host)
        _write_cert(kit_dir / CA_CERT_FILE, ca_cert)
        _write_cert(kit_dir / CERT_FILE, cert)
        _write_key(kit_dir / KEY_FILE, key)
        doc = {
            "schema": SCHEMA,
            "version": VERSION,
            "project": project,
            "name": name,
            "role": role,
            "server": server_text,
            "allow_custom_code": bool(allow_custom_code),
        }
        if modules is not None:
            doc["allowed_modules"] = list(modules)
        (kit_dir / KIT_FILE).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        written[name] = kit_dir
    log.info("provisioned project %r: %d kits in %s", project, len(written), out)
    return written


# -- kits ------------------------------------------------------------------------------------------


def _public_der(public_key: Any) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _subject_fields(name: x509.Name) -> dict[str, str]:
    fields = {
        "O": name.get_attributes_for_oid(NameOID.ORGANIZATION_NAME),
        "OU": name.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME),
        "CN": name.get_attributes_for_oid(NameOID.COMMON_NAME),
    }
    return {k: str(v[0].value) for k, v in fields.items() if len(v) == 1}


@attrs.frozen
class Kit:
    """One participant's startup kit, as read by :meth:`Kit.load`.

    ``name``, ``role`` and ``project`` are what ``kit.json`` says; the peer at the other end of a
    connection trusts only the certificate (:func:`peer_identity`).
    """

    path: Path
    project: str
    name: str
    role: str
    server_host: str
    server_port: int
    allow_custom_code: bool
    ca_cert: Path
    cert: Path
    key: Path
    #: what a kit that forbids custom code lets jobs build (None: collab's standard recipes)
    allowed_modules: tuple[str, ...] | None = None

    @property
    def server_address(self) -> str:
        """``"HOST:PORT"`` of the server this kit dials (or, for the server kit, is reached at)."""
        return format_server(self.server_host, self.server_port)

    @classmethod
    def load(cls, path: str | Path, *, check: bool = True) -> Kit:
        """Read the kit in folder ``path`` (or ``path/kit.json``).

        With ``check`` (the default) also make sure that ``cert.pem`` was issued by ``ca.crt``,
        matches ``key.pem``, names the same project, role and participant as ``kit.json``, and
        has not expired. Raises :class:`KitError` with what is wrong and how to fix it.
        """
        path = Path(path)
        if path.name == KIT_FILE and path.is_file():
            path = path.parent
        if not path.exists():
            raise KitError(
                f"no startup kit at {path}: the folder does not exist (run `collab provision`, "
                f"then copy the participant's kit folder here)"
            )
        if not path.is_dir():
            raise KitError(f"{path} is not a folder; give the kit folder that holds {KIT_FILE}")
        kit_file = path / KIT_FILE
        if not kit_file.is_file():
            raise KitError(
                f"{path} is not a startup kit: {KIT_FILE} is missing (a kit folder holds "
                f"{KIT_FILE}, {CA_CERT_FILE}, {CERT_FILE} and {KEY_FILE})"
            )
        try:
            doc = json.loads(kit_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise KitError(
                f"{kit_file} is not valid JSON ({exc}); restore it from the provisioned kit"
            ) from None
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
            raise KitError(f'{kit_file} is not a collab kit file (expected "schema": "{SCHEMA}")')
        if doc.get("version") != VERSION:
            raise KitError(
                f"{kit_file} has version {doc.get('version')!r}, but this collab-tcp reads version "
                f"{VERSION}; re-provision the kit or install a collab-tcp that matches it"
            )
        fields = {
            "project": str,
            "name": str,
            "role": str,
            "server": str,
            "allow_custom_code": bool,
        }
        for key, typ in fields.items():
            if not isinstance(doc.get(key), typ):
                raise KitError(
                    f"{kit_file}: field {key!r} is missing or not a {typ.__name__} "
                    f"(got {doc.get(key)!r}); restore it from the provisioned kit"
                )
        try:
            check_name(doc["project"], "project name")
            check_name(doc["name"], "participant name")
            host, port = parse_server(doc["server"])
        except KitError as exc:
            raise KitError(f"{kit_file}: {exc}") from None
        if doc["role"] not in ROLES:
            raise KitError(
                f"{kit_file}: unknown role {doc['role']!r}; roles are {', '.join(ROLES)}"
            )
        try:
            allowed = _check_modules(doc.get("allowed_modules"))
        except KitError as exc:
            raise KitError(f"{kit_file}: {exc}") from None
        missing = [f for f in (CA_CERT_FILE, CERT_FILE, KEY_FILE) if not (path / f).is_file()]
        if missing:
            raise KitError(
                f"kit {path} is incomplete: {', '.join(missing)} missing; copy the whole "
                f"kit folder written by `collab provision`"
            )
        kit = cls(
            path=path,
            project=doc["project"],
            name=doc["name"],
            role=doc["role"],
            server_host=host,
            server_port=port,
            allow_custom_code=doc["allow_custom_code"],
            ca_cert=path / CA_CERT_FILE,
            cert=path / CERT_FILE,
            key=path / KEY_FILE,
            allowed_modules=allowed,
        )
        if check:
            kit._check_files()
        return kit

    def _check_files(self) -> None:
        """Cross-check the certificate against the CA, the key and ``kit.json``."""
        try:
            ca = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
            cert = x509.load_pem_x509_certificate(self.cert.read_bytes())
            key = serialization.load_pem_private_key(self.key.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise KitError(
                f"kit {self.path}: cannot read its certificates or key ({exc}); "
                f"restore the files from the provisioned kit"
            ) from None
        try:
            cert.verify_directly_issued_by(ca)
        except (InvalidSignature, ValueError, TypeError):
            raise KitError(
                f"kit {self.path}: {CERT_FILE} was not issued by its {CA_CERT_FILE}; the "
                f"files come from different provisionings, re-copy the kit"
            ) from None
        if _public_der(key.public_key()) != _public_der(cert.public_key()):
            raise KitError(
                f"kit {self.path}: {KEY_FILE} is not the key of {CERT_FILE}; re-copy the kit"
            )
        subject = _subject_fields(cert.subject)
        claimed = {"O": self.project, "OU": self.role, "CN": self.name}
        wrong = [
            f"{k}={subject.get(k)!r} in the certificate but {v!r} in {KIT_FILE}"
            for k, v in claimed.items()
            if subject.get(k) != v
        ]
        if wrong:
            raise KitError(
                f"kit {self.path}: {KIT_FILE} does not match {CERT_FILE} ({'; '.join(wrong)}); "
                f"the certificate decides who this is, restore {KIT_FILE} from the provisioned kit"
            )
        expires = cert.not_valid_after_utc
        if expires <= dt.datetime.now(dt.timezone.utc):
            raise KitError(
                f"kit {self.path}: its certificate expired on {expires:%Y-%m-%d}; "
                f"re-provision the project"
            )
        mode = self.key.stat().st_mode & 0o777
        if os.name == "posix" and mode & 0o077:
            log.warning(
                "%s can be read by other users (mode %o); run chmod 600 on it", self.key, mode
            )

    def with_server(self, host: str, port: int) -> Kit:
        """The same kit, dialing (or listening as) ``host:port`` instead."""
        return attrs.evolve(self, server_host=check_host(host), server_port=check_port(port))

    def _context(self, server_side: bool) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT
        try:
            ctx.load_verify_locations(cafile=str(self.ca_cert))
            ctx.load_cert_chain(certfile=str(self.cert), keyfile=str(self.key))
        except (OSError, ssl.SSLError) as exc:
            raise KitError(
                f"kit {self.path}: cannot load its certificates or key into TLS ({exc}); "
                f"restore the files from the provisioned kit"
            ) from None
        return ctx

    def server_context(self) -> ssl.SSLContext:
        """The server's TLS context: TLS 1.3 only; clients must present a project certificate."""
        if self.role != "server":
            raise KitError(
                f"kit {self.path} is the {self.role} kit of {self.name!r}; only the server "
                f"kit can accept connections (use client_context())"
            )
        ctx = self._context(server_side=True)
        ctx.num_tickets = 0  # no session resumption: nothing to send after the handshake
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """A site's or admin's TLS context: TLS 1.3 only, presents this kit's certificate and
        verifies the server's against the project CA and ``server_host``.

        Wrap with ``ctx.wrap_socket(sock, server_hostname=kit.server_host)``.
        """
        if self.role not in ("site", "admin"):
            raise KitError(
                f"kit {self.path} is the server kit; it accepts connections "
                f"(use server_context()), sites and admins dial out"
            )
        ctx = self._context(server_side=False)
        ctx.check_hostname = True
        return ctx


def peer_identity(ssl_sock: ssl.SSLSocket | ssl.SSLObject, project: str) -> tuple[str, str]:
    """``(name, role)`` from the peer's verified certificate: CN = name, OU = role, O = project.

    Raises :class:`AuthError` if there is no verified certificate, it belongs to another project,
    or its role or name is not valid.
    """
    cert = ssl_sock.getpeercert()
    if not cert:
        raise AuthError(
            "the peer presented no verified certificate; connect with a kit's TLS context "
            "(CERT_REQUIRED against the project CA)"
        )
    fields: dict[str, list[str]] = {}
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            fields.setdefault(key, []).append(value)
    values: dict[str, str] = {}
    for key in ("organizationName", "organizationalUnitName", "commonName"):
        found = fields.get(key, [])
        if len(found) != 1:
            raise AuthError(
                f"the peer's certificate has {len(found)} {key} entries, expected one; "
                f"it was not written by `collab provision`"
            )
        values[key] = found[0]
    if values["organizationName"] != project:
        raise AuthError(
            f"the peer's certificate is for project {values['organizationName']!r}, not {project!r}"
        )
    role = values["organizationalUnitName"]
    if role not in ROLES:
        raise AuthError(
            f"the peer's certificate has unknown role {role!r}; roles are {', '.join(ROLES)}"
        )
    name = values["commonName"]
    if not NAME_RE.fullmatch(name):
        raise AuthError(f"the peer's certificate has an invalid name {name!r}")
    return name, role


# -- the `collab provision` command ----------------------------------------------------------------


def _split_names(values: list[str] | None) -> list[str]:
    return [n.strip() for value in values or [] for n in value.split(",") if n.strip()]


def _provision_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--project", required=True, help="project name; every certificate carries it"
    )
    parser.add_argument(
        "--server",
        required=True,
        metavar="HOST:PORT",
        help="the address sites dial, e.g. fl.example.org:8002 ([::1]:8002 for IPv6)",
    )
    parser.add_argument(
        "--sites",
        required=True,
        action="append",
        metavar="NAME[,NAME...]",
        help="site names, comma-separated (repeatable)",
    )
    parser.add_argument(
        "--admin",
        required=True,
        action="append",
        metavar="NAME[,NAME...]",
        help="admin names (people who submit jobs), comma-separated (repeatable)",
    )
    parser.add_argument(
        "--out", default=None, metavar="DIR", help="output folder; default ./collab-<project>-kits"
    )
    parser.add_argument(
        "--no-custom-code",
        action="store_true",
        help="kits say sites must refuse jobs that bring their own code: they build only objects "
        "from --allowed-modules (default: collab's standard recipes)",
    )
    parser.add_argument(
        "--allowed-modules",
        action="append",
        default=None,
        metavar="MODULE[,MODULE...]",
        help="with --no-custom-code: installed modules (and their submodules) that jobs may use",
    )
    parser.add_argument(
        "--valid-days",
        type=int,
        default=825,
        metavar="DAYS",
        help="certificate lifetime in days (default 825)",
    )
    parser.add_argument(
        "--force", action="store_true", help="replace the CA and kits in an existing output folder"
    )


def _provision_run(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else Path(f"collab-{args.project}-kits")
    kits = provision(
        args.project,
        args.server,
        _split_names(args.sites),
        _split_names(args.admin),
        out,
        allow_custom_code=not args.no_custom_code,
        allowed_modules=_split_names(args.allowed_modules) if args.allowed_modules else None,
        valid_days=args.valid_days,
        overwrite=args.force,
    )
    print(f"project {args.project!r}, server {args.server}: {len(kits)} kits in {out.resolve()}")
    width = max(len(name) for name in kits)
    print(f"  {'CA'.ljust(width)}  {(out / CA_DIR).resolve()}  (keep it private: it is in no kit)")
    for name, path in kits.items():
        print(f"  {name.ljust(width)}  {path.resolve()}")
    print("Send each kit folder to its participant only, over a secure channel.")
    return 0


def provision_command() -> Command:
    """The ``collab provision`` subcommand."""
    return Command(
        "provision",
        "write a project CA and a TLS startup kit for the server, each site and each admin",
        _provision_arguments,
        _provision_run,
    )


__all__ = [
    "ROLES",
    "AuthError",
    "KitError",
    "KitExistsError",
    "Kit",
    "provision",
    "peer_identity",
    "provision_command",
    "parse_server",
    "format_server",
]
