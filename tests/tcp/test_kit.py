"""Provisioning, startup kits and TLS identity, with real TLS 1.3 handshakes on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import attrs
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from collab_core import cli
from collab_tcp.kit import (
    ROLES,
    AuthError,
    Kit,
    KitError,
    KitExistsError,
    parse_server,
    peer_identity,
    provision,
    provision_command,
)

TIMEOUT = 5.0


# -- helpers ---------------------------------------------------------------------------------------


def handshake(
    server_kit: Kit,
    client_ctx: ssl.SSLContext,
    *,
    project: str,
    server_hostname: str = "127.0.0.1",
) -> dict[str, Any]:
    """Accept one TLS connection with ``server_kit`` while a client connects with ``client_ctx``.

    Returns what each side saw: ``server_identity`` / ``server_error`` (from the accept thread),
    ``client_identity``, ``client_data`` (b"ok" when the server got through) / ``client_error``.
    """
    result: dict[str, Any] = {}
    server_ctx = server_kit.server_context()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(TIMEOUT)
    port = listener.getsockname()[1]

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            conn.settimeout(TIMEOUT)
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                result["server_version"] = tls.version()
                result["server_identity"] = peer_identity(tls, project)
                tls.sendall(b"ok")
                tls.recv(1)  # wait for the client to close
        except Exception as exc:  # reported to the test, not lost in the thread
            result["server_error"] = exc

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
            with client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
                result["client_identity"] = peer_identity(tls, project)
                # In TLS 1.3 the client finishes its handshake before the server has checked the
                # client's certificate: a rejection shows up on the first read.
                result["client_data"] = tls.recv(2)
    except (ssl.SSLError, OSError, AuthError) as exc:
        result["client_error"] = exc
    finally:
        thread.join(TIMEOUT)
        listener.close()
    assert not thread.is_alive(), "the server side did not finish in time"
    return result


def rejected_by_server(result: dict[str, Any]) -> bool:
    """The server refused the client: its handshake raised, and the client got no data."""
    return isinstance(result.get("server_error"), ssl.SSLError) and result.get("client_data") in (
        None,
        b"",
    )


def subject(cert_path: Path) -> dict[str, str]:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return {attr.rfc4514_attribute_name: str(attr.value) for attr in cert.subject}


def public_key_bytes(key_path: Path) -> bytes:
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def copy_kit(kit: Kit, dest: Path) -> Path:
    shutil.copytree(kit.path, dest)
    return dest


# -- provisioning ----------------------------------------------------------------------------------


def test_provision_writes_every_kit(tmp_path: Path) -> None:
    out = tmp_path / "kits"
    kits = provision(
        "proj", "fl.example.org:8002", ["site-1", "site-2"], ["alice@example.org"], out
    )
    assert list(kits) == ["server", "site-1", "site-2", "alice@example.org"]
    assert sorted(p.name for p in out.iterdir()) == sorted(["ca", *kits])
    assert sorted(p.name for p in (out / "ca").iterdir()) == ["ca.crt", "ca.key"]

    ca_key = (out / "ca" / "ca.key").read_bytes()
    ca_pem = (out / "ca" / "ca.crt").read_bytes()
    public_keys = set()
    for name, kit_dir in kits.items():
        assert kit_dir == out / name
        assert sorted(p.name for p in kit_dir.iterdir()) == [
            "ca.crt",
            "cert.pem",
            "key.pem",
            "kit.json",
        ]
        doc = json.loads((kit_dir / "kit.json").read_text())
        role = "server" if name == "server" else "admin" if "@" in name else "site"
        assert doc == {
            "schema": "collab.kit",
            "version": 1,
            "project": "proj",
            "name": name,
            "role": role,
            "server": "fl.example.org:8002",
            "allow_custom_code": True,
        }
        kit = Kit.load(kit_dir)
        assert (kit.project, kit.name, kit.role) == ("proj", name, role)
        assert (kit.server_host, kit.server_port, kit.server_address) == (
            "fl.example.org",
            8002,
            "fl.example.org:8002",
        )
        assert (kit.ca_cert, kit.cert, kit.key) == (
            kit_dir / "ca.crt",
            kit_dir / "cert.pem",
            kit_dir / "key.pem",
        )
        assert kit.ca_cert.read_bytes() == ca_pem
        # the CA key is in no kit, under any file name
        for f in kit_dir.iterdir():
            assert ca_key not in f.read_bytes()
        assert stat.S_IMODE(os.stat(kit.key).st_mode) == 0o600
        public_keys.add(public_key_bytes(kit.key))
    assert stat.S_IMODE(os.stat(out / "ca" / "ca.key").st_mode) == 0o600
    public_keys.add(public_key_bytes(out / "ca" / "ca.key"))
    assert len(public_keys) == len(kits) + 1, "every participant (and the CA) has its own key"


def test_certificate_profile(tmp_path: Path) -> None:
    kits = provision(
        "proj", "fl.example.org:8002", ["site-1"], ["admin"], tmp_path / "k", valid_days=30
    )
    ca = x509.load_pem_x509_certificate((tmp_path / "k" / "ca" / "ca.crt").read_bytes())
    assert ca.subject == ca.issuer
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature
    ca.verify_directly_issued_by(ca)

    for name, role in (("server", "server"), ("site-1", "site"), ("admin", "admin")):
        cert = x509.load_pem_x509_certificate((kits[name] / "cert.pem").read_bytes())
        cert.verify_directly_issued_by(ca)
        assert subject(kits[name] / "cert.pem") == {"O": "proj", "OU": role, "CN": name}
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        eku = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        expected = (
            ExtendedKeyUsageOID.SERVER_AUTH if role == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
        )
        assert eku == [expected]
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert 30 <= lifetime.days <= 31
        assert isinstance(cert.public_key(), type(ca.public_key()))  # EC P-256 like the CA
        assert cert.public_key().curve.name == "secp256r1"
    server = x509.load_pem_x509_certificate((kits["server"] / "cert.pem").read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["fl.example.org"]
    assert san.get_values_for_type(x509.IPAddress) == []


@pytest.mark.parametrize(
    "server, dns, ips",
    [
        ("10.1.2.3:8002", [], ["10.1.2.3"]),
        ("127.0.0.1:8002", ["localhost"], ["127.0.0.1", "::1"]),
        ("localhost:8002", ["localhost"], ["127.0.0.1", "::1"]),
        ("[::1]:8002", ["localhost"], ["::1", "127.0.0.1"]),
        ("[2001:db8::5]:443", [], ["2001:db8::5"]),
    ],
)
def test_server_subject_alt_names(
    tmp_path: Path, server: str, dns: list[str], ips: list[str]
) -> None:
    kits = provision("proj", server, ["site-1"], [], tmp_path / "k")
    cert = x509.load_pem_x509_certificate((kits["server"] / "cert.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == dns
    assert sorted(str(ip) for ip in san.get_values_for_type(x509.IPAddress)) == sorted(ips)
    assert Kit.load(kits["site-1"]).server_address == server


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"project": "my project"}, "invalid project name 'my project'"),
        ({"project": ""}, "invalid project name ''"),
        ({"project": "x" * 65}, "1 to 64 characters"),
        ({"sites": ["-site"]}, "invalid site name '-site'"),
        ({"sites": ["site/1"]}, "invalid site name 'site/1'"),
        ({"sites": [".."]}, "invalid site name '..'"),
        ({"sites": ["server"]}, "site name 'server' is reserved"),
        ({"sites": ["CA"]}, "site name 'CA' is reserved"),
        ({"admins": ["server"]}, "admin name 'server' is reserved"),
        ({"sites": []}, "at least one site"),
        ({"sites": "site-1"}, "lists of names"),
        ({"sites": ["site-1", "site-1"]}, "'site-1' is given twice"),
        ({"sites": ["site-1", "Site-1"]}, "differ only in case"),
        ({"admins": ["site-1"]}, "as site 'site-1' and as admin 'site-1'"),
        ({"server": "fl.example.org"}, "write it as HOST:PORT"),
        ({"server": "fl.example.org:http"}, "the port must be a number"),
        ({"server": "fl.example.org:0"}, "port 0: use a number from 1 to 65535"),
        ({"server": "fl.example.org:65536"}, "port 65536"),
        ({"server": ":8002"}, "invalid server host ''"),
        ({"server": "bad_host!:8002"}, "invalid server host 'bad_host!'"),
        ({"server": "::1:8002"}, "IPv6 address in brackets"),
        ({"server": "[10.0.0.1]:8002"}, "brackets are for IPv6"),
        ({"valid_days": 0}, "invalid valid_days 0"),
    ],
)
def test_provision_rejects_bad_input(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {
        "project": "proj",
        "server": "fl.example.org:8002",
        "sites": ["site-1"],
        "admins": ["admin"],
        "out": tmp_path / "k",
    }
    args.update(kwargs)
    with pytest.raises(KitError, match=message.replace("(", r"\(").replace(".", r"\.")):
        provision(**args)
    assert not (tmp_path / "k").exists(), "nothing is written when the input is bad"


def test_provision_refuses_existing_folder(tmp_path: Path) -> None:
    out = tmp_path / "k"
    provision("proj", "fl.example.org:8002", ["site-1", "site-2"], [], out)
    old_ca = (out / "ca" / "ca.crt").read_bytes()
    with pytest.raises(KitExistsError, match="already exists.*overwrite=True"):
        provision("proj", "fl.example.org:8002", ["site-1"], [], out)
    assert (out / "ca" / "ca.crt").read_bytes() == old_ca
    (tmp_path / "file").write_text("x")
    with pytest.raises(KitExistsError, match="not a folder"):
        provision("proj", "fl.example.org:8002", ["site-1"], [], tmp_path / "file")

    kits = provision(
        "proj", "fl.example.org:9000", ["site-1"], [], out, overwrite=True, allow_custom_code=False
    )
    assert (out / "ca" / "ca.crt").read_bytes() != old_ca
    kit = Kit.load(kits["site-1"])
    assert (kit.server_port, kit.allow_custom_code) == (9000, False)
    assert kit.ca_cert.read_bytes() == (out / "ca" / "ca.crt").read_bytes()
    # an existing empty folder is fine without overwrite
    (tmp_path / "empty").mkdir()
    assert provision("proj", "fl.example.org:8002", ["site-1"], [], tmp_path / "empty")


# -- loading kits ----------------------------------------------------------------------------------


def test_kits_fixture(kits: Any) -> None:
    assert (kits.server.name, kits.server.role) == ("server", "server")
    assert {n: (k.name, k.role) for n, k in kits.sites.items()} == {
        f"site-{i}": (f"site-{i}", "site") for i in (1, 2, 3)
    }
    assert (kits.admin.name, kits.admin.role) == ("admin@example.org", "admin")
    assert (kits.other_site.project, kits.other_site.name) == ("other", "site-1")
    assert kits.server.server_address == "127.0.0.1:1"


def test_load_accepts_kit_json_path(kits: Any) -> None:
    assert Kit.load(kits.server.path / "kit.json") == kits.server
    assert Kit.load(str(kits.server.path)) == kits.server


def _edit_json(kit_dir: Path, **changes: Any) -> None:
    doc = json.loads((kit_dir / "kit.json").read_text())
    for key, value in changes.items():
        if value is _DELETE:
            del doc[key]
        else:
            doc[key] = value
    (kit_dir / "kit.json").write_text(json.dumps(doc))


_DELETE = object()


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: shutil.rmtree(d), "the folder does not exist"),
        (lambda d: (d / "kit.json").unlink(), "kit.json is missing"),
        (lambda d: (d / "kit.json").write_text("{not json"), "is not valid JSON"),
        (lambda d: (d / "kit.json").write_text("[]"), 'expected "schema": "collab.kit"'),
        (lambda d: _edit_json(d, schema="collab.job"), "not a collab kit file"),
        (lambda d: _edit_json(d, version=2), "has version 2, but this collab-tcp reads version 1"),
        (lambda d: _edit_json(d, name=_DELETE), "field 'name' is missing"),
        (
            lambda d: _edit_json(d, allow_custom_code="yes"),
            "'allow_custom_code' is missing or not a bool",
        ),
        (lambda d: _edit_json(d, role="root"), "unknown role 'root'"),
        (lambda d: _edit_json(d, server="nowhere"), "write it as HOST:PORT"),
        (lambda d: (d / "key.pem").unlink(), "key.pem missing"),
        (lambda d: [(d / f).unlink() for f in ("ca.crt", "cert.pem")], "ca.crt, cert.pem missing"),
        (lambda d: (d / "cert.pem").write_text("garbage"), "cannot read its certificates or key"),
    ],
)
def test_load_reports_broken_kits(kits: Any, tmp_path: Path, damage: Any, message: str) -> None:
    kit_dir = copy_kit(kits.sites["site-1"], tmp_path / "site-1")
    damage(kit_dir)
    with pytest.raises(KitError, match=message.replace("(", r"\(").replace(".", r"\.")):
        Kit.load(kit_dir)


def test_load_reports_mixed_files(kits: Any, tmp_path: Path) -> None:
    kit_dir = copy_kit(kits.sites["site-1"], tmp_path / "site-1")
    shutil.copy(kits.sites["site-2"].key, kit_dir / "key.pem")
    with pytest.raises(KitError, match="key.pem is not the key of cert.pem"):
        Kit.load(kit_dir)
    kit_dir = copy_kit(kits.sites["site-1"], tmp_path / "site-1b")
    shutil.copy(kits.other_site.ca_cert, kit_dir / "ca.crt")
    with pytest.raises(KitError, match="cert.pem was not issued by its ca.crt"):
        Kit.load(kit_dir)
    with pytest.raises(KitError, match="not a folder"):
        Kit.load(kit_dir / "cert.pem")


def test_with_server(kits: Any) -> None:
    moved = kits.sites["site-1"].with_server("localhost", 4242)
    assert (moved.server_host, moved.server_port, moved.name) == ("localhost", 4242, "site-1")
    assert kits.sites["site-1"].server_port == 1  # frozen: the original is unchanged
    with pytest.raises(KitError, match="port 0"):
        kits.sites["site-1"].with_server("127.0.0.1", 0)
    with pytest.raises(KitError, match="invalid server host"):
        kits.sites["site-1"].with_server("not a host", 80)


def test_contexts(kits: Any) -> None:
    server_ctx = kits.server.server_context()
    client_ctx = kits.sites["site-1"].client_context()
    for ctx in (server_ctx, client_ctx):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
        assert ctx.verify_mode == ssl.CERT_REQUIRED
        assert len(ctx.get_ca_certs()) == 1  # the project CA, and no system CAs
    assert client_ctx.check_hostname
    with pytest.raises(KitError, match="only the server kit can accept connections"):
        kits.sites["site-1"].server_context()
    with pytest.raises(KitError, match="is the server kit"):
        kits.server.client_context()
    assert kits.admin.client_context().verify_mode == ssl.CERT_REQUIRED


# -- real handshakes -------------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["site-1", "site-3", "admin"])
def test_handshake_identifies_the_client(kits: Any, who: str) -> None:
    client = kits.admin if who == "admin" else kits.sites[who]
    result = handshake(kits.server, client.client_context(), project="demo")
    assert "server_error" not in result and "client_error" not in result, result
    assert result["server_version"] == "TLSv1.3"
    assert result["server_identity"] == (client.name, "admin" if who == "admin" else "site")
    assert result["client_identity"] == ("server", "server")  # the server's cert verified
    assert result["client_data"] == b"ok"


def test_handshake_by_hostname(kits: Any) -> None:
    """A loopback server cert also names localhost; check_hostname refuses any other name."""
    site = kits.sites["site-2"].with_server("localhost", 8002)
    result = handshake(
        kits.server, site.client_context(), project="demo", server_hostname=site.server_host
    )
    assert result["server_identity"] == ("site-2", "site")
    result = handshake(
        kits.server, site.client_context(), project="demo", server_hostname="fl.example.org"
    )
    assert isinstance(result["client_error"], ssl.SSLCertVerificationError)
    assert "fl.example.org" in str(result["client_error"])


def test_site_of_another_project_is_refused(kits: Any) -> None:
    result = handshake(kits.server, kits.other_site.client_context(), project="demo")
    # the client cannot even verify the server: it is not signed by project other's CA
    assert isinstance(result["client_error"], ssl.SSLCertVerificationError)
    assert "server_identity" not in result

    # even a client that skips checking the server is refused by the server
    ctx = kits.other_site.client_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    result = handshake(kits.server, ctx, project="demo")
    assert rejected_by_server(result), result
    assert "server_identity" not in result


def test_server_of_another_project_is_refused(kits: Any) -> None:
    result = handshake(kits.other_server, kits.sites["site-1"].client_context(), project="demo")
    assert isinstance(result["client_error"], ssl.SSLCertVerificationError)
    assert "server_identity" not in result


def test_client_without_certificate_is_refused(kits: Any) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(kits.server.ca_cert))  # trusts the server, has no cert
    result = handshake(kits.server, ctx, project="demo")
    assert rejected_by_server(result), result
    assert "certificate" in str(result["server_error"]).lower()


def test_client_with_tls12_only_is_refused(kits: Any) -> None:
    ctx = kits.sites["site-1"].client_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    result = handshake(kits.server, ctx, project="demo")
    assert isinstance(result["server_error"], ssl.SSLError)
    assert isinstance(result["client_error"], OSError)  # an alert or a reset


def test_certificates_cannot_swap_roles(kits: Any) -> None:
    """Extended key usage keeps roles apart: the server cert cannot dial in, a site cert cannot serve."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(kits.server.ca_cert))
    ctx.load_cert_chain(str(kits.server.cert), str(kits.server.key))
    result = handshake(kits.server, ctx, project="demo")
    assert rejected_by_server(result), result
    assert "purpose" in str(result["server_error"])

    site = kits.sites["site-2"]
    impostor = attrs.evolve(kits.server, cert=site.cert, key=site.key)
    result = handshake(impostor, kits.sites["site-1"].client_context(), project="demo")
    assert isinstance(result["client_error"], ssl.SSLCertVerificationError)
    assert "purpose" in str(result["client_error"])


def test_tampered_kit_json_does_not_change_identity(kits: Any, tmp_path: Path) -> None:
    kit_dir = copy_kit(kits.sites["site-1"], tmp_path / "site-1")
    _edit_json(kit_dir, name="site-2")
    with pytest.raises(KitError, match="CN='site-1' in the certificate but 'site-2' in kit.json"):
        Kit.load(kit_dir)
    _edit_json(kit_dir, name="site-1", role="admin")
    with pytest.raises(KitError, match="OU='site' in the certificate but 'admin' in kit.json"):
        Kit.load(kit_dir)

    _edit_json(kit_dir, name="site-2", role="site")
    forged = Kit.load(kit_dir, check=False)
    assert forged.name == "site-2"
    result = handshake(kits.server, forged.client_context(), project="demo")
    assert result["server_identity"] == ("site-1", "site"), "identity comes from the certificate"


def test_peer_identity_wrong_project(kits: Any) -> None:
    result = handshake(kits.server, kits.sites["site-1"].client_context(), project="another")
    assert isinstance(result["server_error"], AuthError)
    assert "project 'demo', not 'another'" in str(result["server_error"])
    assert isinstance(result["client_error"], AuthError)


def test_peer_identity_without_verified_certificate(kits: Any) -> None:
    """A socket whose peer certificate was not verified (CERT_NONE) gives no identity."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(str(kits.sites["site-1"].cert), str(kits.sites["site-1"].key))
    result = handshake(kits.server, ctx, project="demo")
    assert result["server_identity"] == ("site-1", "site")
    assert isinstance(result["client_error"], AuthError)
    assert "no verified certificate" in str(result["client_error"])


def test_roles() -> None:
    assert ROLES == ("server", "site", "admin")
    assert parse_server("[::1]:80") == ("::1", 80)


# -- the `collab provision` command ----------------------------------------------------------------


def _collab() -> list[str]:
    script = Path(sys.executable).parent / "collab"
    return [str(script)] if script.exists() else [sys.executable, "-m", "collab_core.cli"]


def test_cli_provision(tmp_path: Path) -> None:
    args = [
        *_collab(),
        "provision",
        "--project",
        "hospitals",
        "--server",
        "fl.example.org:8002",
        "--sites",
        "site-1,site-2",
        "--admin",
        "alice@example.org,bob",
        "--no-custom-code",
    ]
    done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "collab-hospitals-kits"
    for name in ("server", "site-1", "site-2", "alice@example.org", "bob"):
        assert str(out / name) in done.stdout
        kit = Kit.load(out / name)
        assert (kit.project, kit.allow_custom_code) == ("hospitals", False)
    assert "ca" in done.stdout and (out / "ca" / "ca.key").is_file()

    again = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert again.returncode == 1
    assert "already exists" in again.stderr and "--force" in again.stderr
    assert "Traceback" not in again.stderr


def test_cli_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "kits"
    base = ["provision", "--project", "p", "--server", "127.0.0.1:8002", "--out", str(out)]
    assert cli.main([*base, "--sites", "a", "--sites", "b,c", "--admin", "adm"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a", "adm", "b", "c", "ca", "server"]
    assert Kit.load(out / "a").allow_custom_code is True
    old = (out / "ca" / "ca.crt").read_bytes()
    assert cli.main([*base, "--sites", "a", "--admin", "adm"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert cli.main([*base, "--sites", "a", "--admin", "adm", "--force", "--valid-days", "10"]) == 0
    assert (out / "ca" / "ca.crt").read_bytes() != old
    assert cli.main([*base, "--sites", "server", "--admin", "adm", "--force"]) == 1
    assert "reserved" in capsys.readouterr().err
    assert provision_command().name == "provision"
