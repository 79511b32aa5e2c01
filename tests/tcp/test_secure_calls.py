"""``secure=True`` site-to-site calls: the payload is sealed by the caller for the target, so the
server that relays it can neither read nor change it, nor put a payload of its own in its place.

The attacks run against a real in-process server and real site agents over TLS on 127.0.0.1: a
relay hook on the server records every call and result it relays and alters them as an attacker
would. The envelope itself is also checked without a network (replays, forged certificates). A
PocEnv run checks that secure calls work between real site processes, and prints the cost of
sealing a 10 MB numpy payload.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid

import numpy as np
import pytest

from collab_core import wire
from collab_tcp.rpc import open_secure_result
from collab_tcp.secure import SEGMENT, SecureCallError, SecureChannel
from collab_tcp.server import Server

from .helpers import TIMEOUT, export_job

# -- the envelope, without a network ----------------------------------------------------------------


def _pem(kit) -> str:
    return kit.cert.read_text()


@pytest.fixture
def channels(kits):
    certs = {name: _pem(kit) for name, kit in kits.sites.items()}
    return {name: SecureChannel(kit, "job-1", certs) for name, kit in kits.sites.items()}


def test_a_sealed_call_and_its_result_round_trip(channels):
    arr = np.arange(1000, dtype=np.float32).reshape(10, 100)
    envelope, session = channels["site-1"].seal_call("site-2", "train", True, (arr, "x"), {"lr": 0.5})
    args, kwargs, target_session = channels["site-2"].open_call("site-1", "train", True, envelope)
    assert np.array_equal(args[0], arr) and args[1] == "x" and kwargs == {"lr": 0.5}
    sealed = target_session.seal_result(True, {"w": arr * 2})
    body = session.open_result(sealed, "site-2")
    assert body["ok"] is True and np.array_equal(body["value"]["w"], arr * 2)
    error = target_session.seal_result(False, error=ValueError("bad lr"))
    body = session.open_result(error, "site-2")
    assert body["ok"] is False and "bad lr" in str(body["error"])


def test_the_envelope_is_bound_to_the_call_identity(channels):
    envelope, _ = channels["site-1"].seal_call("site-2", "train", True, (1,), {})
    # the relay renames the method, the caller, or the expect flag: the signature no longer holds
    for caller, method, expect in (("site-1", "evaluate", True), ("site-3", "train", True),
                                   ("site-1", "train", False)):
        with pytest.raises(SecureCallError, match="signature does not verify"):
            channels["site-2"].open_call(caller, method, expect, envelope)
    # delivered to another site: that site cannot open it
    with pytest.raises(SecureCallError, match="signature does not verify"):
        channels["site-3"].open_call("site-1", "train", True, envelope)
    channels["site-2"].open_call("site-1", "train", True, envelope)  # the real one still opens


def test_a_replayed_call_is_refused(channels):
    envelope, _ = channels["site-1"].seal_call("site-2", "train", True, ("once",), {})
    assert channels["site-2"].open_call("site-1", "train", True, envelope)[0] == ("once",)
    with pytest.raises(SecureCallError, match="replay"):
        channels["site-2"].open_call("site-1", "train", True, envelope)


def test_segments_cannot_be_altered_dropped_or_reordered(channels):
    big = np.arange(SEGMENT // 4 * 2 + 100, dtype=np.uint32)  # three segments
    envelope, _ = channels["site-1"].seal_call("site-2", "train", True, (big,), {})
    ct = envelope["ct"]
    assert len(ct) == 3
    for changed in (ct[:2], [ct[1], ct[0], ct[2]], ct[:1] + ct[2:]):
        with pytest.raises(SecureCallError, match="failed authentication"):
            channels["site-2"].open_call("site-1", "train", True, dict(envelope, ct=changed))
    flipped = bytearray(bytes(ct[1]))
    flipped[1000] ^= 1
    with pytest.raises(SecureCallError, match="segment 2 of 3.*altered"):
        channels["site-2"].open_call("site-1", "train", True,
                                     dict(envelope, ct=[ct[0], wire.Blob(bytes(flipped)), ct[2]]))
    args, _, _ = channels["site-2"].open_call("site-1", "train", True, envelope)
    assert np.array_equal(args[0], big)


def test_certificates_from_the_server_are_checked_against_the_project_ca(kits):
    other_ca = kits.other_site  # a "site-1" of another project: another CA
    forged = {"site-1": _pem(other_ca), "site-2": _pem(kits.sites["site-2"]),
              "site-3": _pem(kits.sites["site-3"])}
    ch = SecureChannel(kits.sites["site-2"], "job-1", forged)
    with pytest.raises(SecureCallError, match="not issued by this project's CA"):
        ch.peer("site-1")
    # a real certificate of the project, given under another site's name
    swapped = SecureChannel(kits.sites["site-1"], "job-1", {"site-2": _pem(kits.sites["site-3"])})
    with pytest.raises(SecureCallError, match="'CN': 'site-3'.*not.*'CN': 'site-2'"):
        swapped.seal_call("site-2", "train", True, (), {})
    missing = SecureChannel(kits.sites["site-1"], "job-1", {})
    with pytest.raises(SecureCallError, match="no certificate for site-2"):
        missing.seal_call("site-2", "train", True, (), {})
    # the server's own certificate is not a site's
    server_as_site = SecureChannel(kits.sites["site-1"], "job-1", {"server": _pem(kits.server)})
    with pytest.raises(SecureCallError, match="'OU': 'server'"):
        server_as_site.peer("server")


def test_site_certificates_allow_key_agreement_and_older_ones_are_refused(kits):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    def usage(kit):
        cert = x509.load_pem_x509_certificate(kit.cert.read_bytes())
        return cert, cert.extensions.get_extension_for_class(x509.KeyUsage).value

    for kit in kits.sites.values():
        assert usage(kit)[1].key_agreement and usage(kit)[1].digital_signature
    for kit in (kits.server, kits.admin):
        assert not usage(kit)[1].key_agreement  # nothing is sealed for them
    # site-2's certificate as an older provisioning wrote it: the same key, no keyAgreement
    cert, ku = usage(kits.sites["site-2"])
    ca_key = serialization.load_pem_private_key((kits.root / kits.project / "ca" / "ca.key").read_bytes(), None)
    old_ku = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                           data_encipherment=False, key_agreement=False, key_cert_sign=False,
                           crl_sign=False, encipher_only=False, decipher_only=False)
    builder = (x509.CertificateBuilder().subject_name(cert.subject).issuer_name(cert.issuer)
               .public_key(cert.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(cert.not_valid_before_utc).not_valid_after(cert.not_valid_after_utc)
               .add_extension(old_ku, critical=True))
    old = builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()
    ch = SecureChannel(kits.sites["site-1"], "job-1", {"site-2": old})
    with pytest.raises(SecureCallError, match="does not allow key agreement.*re-provision"):
        ch.seal_call("site-2", "train", True, (), {})


def test_an_unsealed_success_for_a_secure_call_is_refused(channels):
    from collab_core.runtime import Call

    _, session = channels["site-1"].seal_call("site-2", "train", True, (), {})
    call = Call(caller="site-1", target="site-2", method="train", args=(), kwargs={}, secure=True)
    with pytest.raises(SecureCallError, match="arrived unsealed"):
        open_secure_result(session, call, {"t": "result", "ok": True, "value": "forged"})
    # an error outside the envelope (a refusal, "not connected") passes through as it came
    msg = {"t": "result", "ok": False, "error": "site-2 is not connected"}
    assert open_secure_result(session, call, msg) is msg


# -- a hostile relay ---------------------------------------------------------------------------------

ATTACK_JOB = """
from pathlib import Path
import numpy as np
from collab_core import CollabCallError, collab

SECRET_FILE = Path({secret_file!r})
RAN = []

def pattern():
    return np.arange(4096, dtype=np.float64) * 1.000123 + 0.5

class Server:
    @collab.main
    def run(self):
        return collab.clients["site-1"].ask()

class Client:
    @collab.publish
    def ask(self):
        secret, public = SECRET_FILE.read_text().split()
        out = {{}}
        try:
            out["secure"] = collab.clients["site-2"](secure=True).keep(secret, pattern())
        except CollabCallError as exc:
            out["secure_error"] = str(exc)
        out["plain"] = collab.clients["site-2"].keep(public, pattern())
        out["ran"] = collab.clients["site-2"].ran()
        return out

    @collab.publish
    def keep(self, text, arr):
        RAN.append([collab.site_name, collab.caller, text])
        return {{"back": text[::-1], "sum": float(arr.sum()), "arr": arr * 2}}

    @collab.publish
    def ran(self):
        return [r for r in RAN if r[0] == collab.site_name]
"""


class Relay:
    """Hooks on the server's ``call`` and ``result`` handlers: every relayed message is recorded
    as the wire frame it was, and ``on_call`` / ``on_result`` may change it before it goes on."""

    def __init__(self, server: Server, on_call=None, on_result=None):
        self.frames: list[tuple[str, bool, bytes]] = []  # (kind, sealed, frame bytes)
        self.on_call, self.on_result = on_call, on_result
        self.server = server
        server._site_handlers = dict(Server._site_handlers, call=self._call, result=self._result)

    def _record(self, kind: str, msg: dict) -> None:
        self.frames.append((kind, "sealed" in msg, b"".join(bytes(p) for p in wire.frame_parts(msg))))

    def _call(self, server: Server, conn, msg: dict) -> None:
        self._record("call", msg)
        if self.on_call is not None and "sealed" in msg:
            msg = self.on_call(server, msg)
        Server._site_call(server, conn, msg)

    def _result(self, server: Server, conn, msg: dict) -> None:
        self._record("result", msg)
        if self.on_result is not None and "sealed" in msg:
            msg = self.on_result(server, msg)
        Server._site_result(server, conn, msg)


def _attack(make_cluster, tmp_path, on_call=None, on_result=None):
    secret, public = f"SECRET-{uuid.uuid4().hex}", f"PUBLIC-{uuid.uuid4().hex}"
    tmp_path.mkdir(parents=True, exist_ok=True)
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(f"{secret} {public}")
    cluster = make_cluster()
    for site in ("site-1", "site-2"):
        cluster.start_site(site)
    relay = Relay(cluster.server, on_call, on_result)
    job_dir = export_job(tmp_path, ATTACK_JOB.format(secret_file=str(secret_file)), job_name="attack",
                         min_clients=2)
    done = cluster.run_job(job_dir, sites=["site-1", "site-2"])
    assert done["status"] == "finished", done["error"]
    return done, relay, secret, public


def _pattern_bytes() -> bytes:
    return (np.arange(4096, dtype=np.float64) * 1.000123 + 0.5).tobytes()


def test_the_relay_sees_no_plaintext_of_a_secure_call(make_cluster, tmp_path):
    done, relay, secret, public = _attack(make_cluster, tmp_path)
    r = done["result"]
    assert r["secure"]["back"] == secret[::-1] and r["plain"]["back"] == public[::-1]
    assert np.array_equal(r["secure"]["arr"], (np.arange(4096) * 1.000123 + 0.5) * 2)
    assert r["ran"] == [["site-2", "site-1", secret], ["site-2", "site-1", public]]
    sealed = [f for kind, is_sealed, f in relay.frames if is_sealed]
    plain = [f for kind, is_sealed, f in relay.frames if not is_sealed and kind in ("call", "result")]
    assert len(sealed) == 2, "one sealed call and its sealed result pass through the server"
    arr, doubled = _pattern_bytes()[:512], (np.frombuffer(_pattern_bytes(), np.float64) * 2).tobytes()[:512]
    relayed = b"".join(sealed)
    for needle in (secret.encode(), secret[::-1].encode(), arr, doubled):
        assert needle not in relayed
    # the same check finds the plain call's payload in what the server relays: it can see it
    seen = b"".join(plain)
    for needle in (public.encode(), public[::-1].encode(), arr, doubled):
        assert needle in seen


def _flip(blob) -> wire.Blob:
    data = bytearray(bytes(blob))
    data[len(data) // 2] ^= 0x40
    return wire.Blob(bytes(data))


def test_an_altered_call_is_refused_by_its_target(make_cluster, tmp_path):
    def alter(server, msg):
        sealed = dict(msg["sealed"])
        sealed["ct"] = [_flip(sealed["ct"][0]), *sealed["ct"][1:]]
        return dict(msg, sealed=sealed)

    done, _, secret, public = _attack(make_cluster, tmp_path, on_call=alter)
    r = done["result"]
    assert "secure" not in r
    assert "SecureCallError" in r["secure_error"] and "failed authentication" in r["secure_error"]
    assert "altered" in r["secure_error"] and "keep() from site-1" in r["secure_error"]
    assert r["ran"] == [["site-2", "site-1", public]], "the altered call never ran"
    assert "refused a call" in done["logs"]["site-2"]


def test_a_payload_substituted_by_the_server_is_refused(make_cluster, tmp_path, kits):
    def substitute(server: Server, msg):
        # the attacker seals its own arguments for site-2, with the key it has: the server's
        certs = server._certificates(["site-2"])
        forger = SecureChannel(kits.server, msg["job"], certs)
        envelope, _ = forger.seal_call("site-2", msg["method"], msg.get("expect", True),
                                       ("FORGED", np.zeros(3)), {})
        return dict(msg, sealed=envelope)

    done, _, _, public = _attack(make_cluster, tmp_path, on_call=substitute)
    r = done["result"]
    assert "site-1's signature does not verify" in r["secure_error"]
    assert r["ran"] == [["site-2", "site-1", public]], "the forged call never ran"


def test_an_altered_or_replaced_result_is_refused_by_the_caller(make_cluster, tmp_path):
    def alter(server, msg):
        sealed = dict(msg["sealed"])
        sealed["ct"] = [_flip(c) for c in sealed["ct"]]
        return dict(msg, sealed=sealed)

    done, _, secret, public = _attack(make_cluster, tmp_path, on_result=alter)
    r = done["result"]
    assert "failed authentication" in r["secure_error"] and "result of the secure call" in r["secure_error"]
    assert r["plain"]["back"] == public[::-1]

    def replace(server, msg):
        return {"t": "result", "job": msg["job"], "id": msg["id"], "ok": True, "value": {"back": "forged"}}

    done, _, _, _ = _attack(make_cluster, tmp_path / "again", on_result=replace)
    assert "arrived unsealed" in done["result"]["secure_error"]


# -- PocEnv: real site processes --------------------------------------------------------------------

POC_DRIVER = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    from collab_core import CollabCallError, CollabRecipe, collab
    from collab_tcp import PocEnv

    class Site:
        @collab.publish
        def scale(self, arr, factor=1.0):
            return {"arr": arr * factor, "by": collab.site_name, "caller": collab.caller,
                    "sealed": collab.context.secure}

        @collab.publish
        def fail(self):
            raise ValueError("no data on " + collab.site_name)

        @collab.publish
        def echo(self, arr):
            return arr

        @collab.publish
        def peers(self):
            arr = np.arange(12, dtype=np.int64).reshape(3, 4)
            out = {"one": collab.clients["site-2"](secure=True).scale(arr, factor=3.0),
                   "plain": collab.clients["site-2"].scale(arr, factor=2.0),
                   "group": dict(collab.other_clients(secure=True).scale(arr)),
                   "server": collab.server(secure=True).hello(arr)}
            try:
                collab.clients["site-2"](secure=True).fail()
            except CollabCallError as exc:
                out["error"] = str(exc)
            return out

        @collab.publish
        def overhead(self):
            big = np.random.default_rng(0).random(10 * 1000 * 1000 // 8)  # 10 MB of float64
            times = {}
            for secure in (False, True, False, True):
                t0 = time.perf_counter()
                back = collab.clients["site-2"](secure=secure).echo(big)
                times.setdefault(str(secure), []).append(time.perf_counter() - t0)
                assert np.array_equal(back, big)
            return {k: min(v) for k, v in times.items()}

    class Server:
        @collab.main
        def run(self):
            return {"peers": collab.clients["site-1"].peers(),
                    "overhead": collab.clients["site-1"].overhead()}

        @collab.publish
        def hello(self, arr):
            return {"sum": int(arr.sum()), "caller": collab.caller}

    if __name__ == "__main__":
        recipe = CollabRecipe(job_name="pocsecure", server=Server(), client=Site(), min_clients=3)
        run = recipe.execute(PocEnv(num_clients=3, workspace=sys.argv[1]))
        assert run.status == "finished", run.error
        with open(sys.argv[2], "w") as f:
            r = run.result
            json.dump({"error": r["peers"].get("error"),
                       "raw": {"one": r["peers"]["one"]["arr"].tolist(), "by": r["peers"]["one"]["by"],
                               "caller": r["peers"]["one"]["caller"],
                               "sealed": [r["peers"]["one"]["sealed"], r["peers"]["plain"]["sealed"]],
                               "plain": r["peers"]["plain"]["arr"].tolist(),
                               "group": {s: [v["by"], v["caller"], v["arr"].tolist()]
                                         for s, v in r["peers"]["group"].items()},
                               "server": r["peers"]["server"]},
                       "overhead": r["overhead"]}, f)
""")


def test_secure_calls_between_poc_site_processes(tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(POC_DRIVER)
    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, str(driver), str(tmp_path / "ws"), str(out)],
                          capture_output=True, text=True, timeout=TIMEOUT * 8, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    raw = data["raw"]
    arr = np.arange(12).reshape(3, 4)
    assert raw["one"] == (arr * 3.0).tolist() and raw["by"] == "site-2" and raw["caller"] == "site-1"
    assert raw["plain"] == (arr * 2.0).tolist()  # a plain call beside it is unchanged
    # the target can tell a call its caller sealed from a plain one (e.g. one the server made up)
    assert raw["sealed"] == [True, False]
    assert raw["group"] == {"site-2": ["site-2", "site-1", arr.tolist()],
                            "site-3": ["site-3", "site-1", arr.tolist()]}
    assert raw["server"] == {"sum": 66, "caller": "site-1"}  # to the server: TLS alone
    assert "ValueError: no data on site-2" in data["error"]  # the target's error, sealed
    plain, secure = data["overhead"]["False"], data["overhead"]["True"]
    print(f"\n10 MB numpy payload, site-1 -> site-2 and back through the server (PocEnv): "
          f"plain {plain * 1000:.0f} ms, secure {secure * 1000:.0f} ms "
          f"(+{(secure - plain) * 1000:.0f} ms, x{secure / plain:.2f})")
