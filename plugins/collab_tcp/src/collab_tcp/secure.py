"""End-to-end protection of site-to-site calls (``secure=True``), so that the server relaying them
can neither read nor change their payloads.

A site-to-site call travels site A -> server -> site B, over two TLS connections: TLS protects
each hop, but the server sees the call in the clear in between. With ``secure=True`` the payload
(the arguments, and the result on the way back) is sealed by A for B:

* A takes B's certificate from the deploy message and verifies it itself against the project CA
  (the ``ca.crt`` of A's own kit), with ``O`` = project, ``OU`` = site and ``CN`` = B. The server
  cannot forge a certificate the CA did not sign.
* A makes a fresh P-256 key pair for the call and does ECDH with B's certificate key
  (ephemeral-static, as in ECIES); HKDF-SHA256 derives two AES-256-GCM keys from the shared
  secret, one for the request and one for the response.
* A signs (ECDSA P-256, SHA-256, with its own certificate key) the call's identity -- project,
  job, caller, target, method, whether a result is expected, a random call nonce -- together with
  the ephemeral public key and B's certificate fingerprint. B verifies the signature with A's
  certificate (also from the deploy message, verified against B's CA) and checks that its name
  is the caller the server relayed. The server cannot make a valid signature, so it cannot
  substitute a payload of its own.
* The plaintext (one wire frame of ``{"args", "kwargs"}``) is encrypted in segments of
  :data:`SEGMENT` bytes (the STREAM construction: a counter and a last-segment flag in each nonce,
  the call's identity and the segment's index in its associated data), so a segment cannot be
  altered, reordered, dropped or cut off unnoticed, and no single AES-GCM operation gets near the
  library's 2 GiB limit.
* B answers with the result sealed under the response key: only A (who made the ephemeral key)
  and B (who holds the certificate key) can derive it, so the result is confidential to A and
  authenticated as B's. A refuses an unsealed or altered result of a secure call.
* B remembers the nonces of the secure calls it accepted in the job (bounded) and refuses a
  replay.

What the server still sees: who calls whom, the method's name, whether a result is expected, and
the sizes. There is no forward secrecy against B's certificate key: whoever later holds B's
``key.pem`` and recorded the relayed bytes can decrypt them.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import secrets
import threading
from collections import OrderedDict
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import NameOID

from collab_core import wire
from collab_core.errors import CollabError

#: Version tag of the envelope and of every derivation; part of each key's derivation and each AAD.
PROTOCOL = "collab-secure-call/1"
#: Plaintext bytes per AES-GCM segment.
SEGMENT = 4 << 20
#: Secure calls a site remembers per job to refuse replays.
REPLAY_WINDOW = 1 << 16
_POINT = 65  # an uncompressed P-256 point
_SIG_MAX = 80  # a DER ECDSA P-256 signature is at most 72 bytes


class SecureCallError(CollabError):
    """A ``secure=True`` call could not be protected, or what arrived failed verification."""


def _pem_cert(text: object, name: str) -> x509.Certificate:
    if not isinstance(text, str):
        raise SecureCallError(
            f"the deploy message holds no certificate for {name}: a secure call to or from {name} "
            f"needs it (is {name} a participant of this job?)")
    try:
        return x509.load_pem_x509_certificate(text.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise SecureCallError(f"the certificate given for {name} is not a PEM certificate ({exc})") from None


def _subject(cert: x509.Certificate) -> dict[str, str]:
    out = {}
    for key, oid in (("O", NameOID.ORGANIZATION_NAME), ("OU", NameOID.ORGANIZATIONAL_UNIT_NAME),
                     ("CN", NameOID.COMMON_NAME)):
        attrs = cert.subject.get_attributes_for_oid(oid)
        if len(attrs) == 1:
            out[key] = str(attrs[0].value)
    return out


def _public_point(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def _aad(*fields: object) -> bytes:
    # JSON of strings, ints and bools: one unambiguous encoding of the call's identity
    return json.dumps([PROTOCOL, *fields], separators=(",", ":")).encode("utf-8")


class _Peer:
    __slots__ = ("key", "fingerprint")

    def __init__(self, cert: x509.Certificate):
        key = cert.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        self.key = key
        self.fingerprint = cert.fingerprint(hashes.SHA256())


class Session:
    """The keys of one secure call, on either side: seals and opens its result."""

    def __init__(self, identity: bytes, response_key: bytes):
        self._identity = identity
        self._key = AESGCM(response_key)

    def seal_result(self, ok: bool, value: Any = None, error: BaseException | None = None) -> dict:
        """The sealed result (``ok`` and the value or error inside), for the message's ``sealed``."""
        body = {"ok": bool(ok), "value": value} if ok else {"ok": False, "error": error}
        return {"v": PROTOCOL, "ct": _encrypt(self._key, b"result" + self._identity, body)}

    def open_result(self, sealed: object, who: str) -> dict:
        """``{"ok": ..., "value"/"error": ...}`` from a sealed result; SecureCallError if it fails."""
        if not isinstance(sealed, dict) or sealed.get("v") != PROTOCOL:
            raise SecureCallError(f"the result of the secure call from {who} is not a {PROTOCOL} envelope")
        body = _decrypt(self._key, b"result" + self._identity, sealed.get("ct"),
                        f"the result of the secure call from {who}")
        if not isinstance(body, dict) or not isinstance(body.get("ok"), bool):
            raise SecureCallError(f"the sealed result from {who} holds no result")
        return body


def _encrypt(key: AESGCM, aad: bytes, obj: Any) -> list[wire.Blob]:
    data = memoryview(b"".join(wire.frame_parts(obj)))
    count = max(1, -(-len(data) // SEGMENT))
    out = []
    for i in range(count):
        last = i == count - 1
        nonce = i.to_bytes(11, "big") + (b"\x01" if last else b"\x00")
        piece = data[i * SEGMENT:(i + 1) * SEGMENT]
        out.append(wire.Blob(key.encrypt(nonce, piece, aad + b"|" + nonce)))
    return out


def _decrypt(key: AESGCM, aad: bytes, segments: object, what: str) -> Any:
    if not isinstance(segments, list) or not segments:
        raise SecureCallError(f"{what} carries no ciphertext")
    plain = []
    for i, seg in enumerate(segments):
        if not isinstance(seg, (wire.Blob, bytes)):
            raise SecureCallError(f"{what}: segment {i} is a {type(seg).__name__}, not bytes")
        last = i == len(segments) - 1
        nonce = i.to_bytes(11, "big") + (b"\x01" if last else b"\x00")
        try:
            data = seg.view if isinstance(seg, wire.Blob) else seg
            plain.append(key.decrypt(nonce, data, aad + b"|" + nonce))
        except InvalidTag:
            raise SecureCallError(
                f"{what} failed authentication (AES-GCM tag of segment {i + 1} of {len(segments)}): "
                f"it was altered, truncated or replaced on the way (or sealed for another call); "
                f"refused") from None
    data = b"".join(plain)
    reader = io.BytesIO(data)
    try:
        obj = wire.read_frame(reader)
    except wire.WireError as exc:
        raise SecureCallError(f"{what} decrypted to a malformed frame: {exc}") from None
    if reader.tell() != len(data):
        raise SecureCallError(f"{what} has bytes after its frame")
    return obj


class SecureChannel:
    """One site's end of the secure calls of one job.

    ``certs`` (from the deploy message, so from the untrusted server) maps participant names to
    PEM certificates; each is verified against ``kit``'s own CA, project and the expected name
    before its key is used.
    """

    def __init__(self, kit: Any, job: str, certs: object):
        self.project = kit.project
        self.name = kit.name
        self.job = job
        self._certs = certs if isinstance(certs, dict) else {}
        try:
            self._ca = x509.load_pem_x509_certificate(kit.ca_cert.read_bytes())
            own = x509.load_pem_x509_certificate(kit.cert.read_bytes())
            key = serialization.load_pem_private_key(kit.key.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise SecureCallError(f"cannot read the kit's CA or key for secure calls ({exc})") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
            raise SecureCallError(f"the key of kit {kit.path} is not an EC P-256 key; re-provision the project")
        self._key = key
        self._me = _Peer(own)  # this site's own certificate, from its kit (not from the server)
        self._lock = threading.Lock()
        self._peers: dict[str, _Peer] = {}
        self._seen: OrderedDict[tuple[str, int], None] = OrderedDict()

    def peer(self, name: str) -> _Peer:
        """The verified certificate key of participant ``name``."""
        with self._lock:
            peer = self._peers.get(name)
        if peer is not None:
            return peer
        cert = _pem_cert(self._certs.get(name), name)
        try:
            cert.verify_directly_issued_by(self._ca)
        except (InvalidSignature, ValueError, TypeError):
            raise SecureCallError(
                f"the certificate given for {name} was not issued by this project's CA: refusing "
                f"to use it (the relay substituted it, or the kits come from different provisionings)"
            ) from None
        subject = _subject(cert)
        want = {"O": self.project, "OU": "site", "CN": name}
        if subject != want:
            raise SecureCallError(
                f"the certificate given for {name} is for {subject}, not {want}: refusing to use it")
        now = dt.datetime.now(dt.timezone.utc)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise SecureCallError(f"the certificate of {name} is not valid now (expired or not yet valid)")
        key = cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
            raise SecureCallError(f"the certificate of {name} has no EC P-256 key; re-provision the project")
        try:
            usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
            agreement = usage.key_agreement
        except x509.ExtensionNotFound:
            agreement = False
        if not agreement:
            raise SecureCallError(
                f"the certificate of {name} does not allow key agreement (keyUsage), which secure "
                f"calls need; it was provisioned by an older collab: re-provision the project")
        peer = _Peer(cert)
        with self._lock:
            self._peers[name] = peer
        return peer

    def _identity(self, caller: str, target: str, method: str, expect: bool, nonce: int) -> bytes:
        return _aad(self.project, self.job, caller, target, method, bool(expect), nonce)

    @staticmethod
    def _keys(shared: bytes, epk: bytes, fingerprint: bytes, identity: bytes) -> tuple[bytes, bytes]:
        okm = HKDF(algorithm=hashes.SHA256(), length=64, salt=epk + fingerprint,
                   info=b"keys" + identity).derive(shared)
        return okm[:32], okm[32:]

    def seal_call(self, target: str, method: str, expect: bool, args: tuple, kwargs: dict) -> tuple[dict, Session]:
        """The envelope for a call's ``sealed`` field, and the session that opens its result."""
        peer = self.peer(target)
        nonce = secrets.randbits(63)
        identity = self._identity(self.name, target, method, expect, nonce)
        ephemeral = ec.generate_private_key(ec.SECP256R1())
        epk = _public_point(ephemeral.public_key())
        request_key, response_key = self._keys(ephemeral.exchange(ec.ECDH(), peer.key), epk,
                                               peer.fingerprint, identity)
        signature = self._key.sign(b"sign" + identity + epk + peer.fingerprint, ec.ECDSA(hashes.SHA256()))
        ct = _encrypt(AESGCM(request_key), b"call" + identity, {"args": list(args), "kwargs": kwargs})
        envelope = {"v": PROTOCOL, "nonce": nonce, "epk": epk, "sig": signature, "ct": ct}
        return envelope, Session(identity, response_key)

    def open_call(self, caller: str, method: str, expect: bool, envelope: object) -> tuple[tuple, dict, Session]:
        """Verify and decrypt a sealed call relayed from ``caller``; SecureCallError naming what failed."""
        what = f"the secure call {method}() from {caller}"
        if not isinstance(envelope, dict) or envelope.get("v") != PROTOCOL:
            raise SecureCallError(f"{what} is not a {PROTOCOL} envelope")
        nonce, epk, sig = envelope.get("nonce"), envelope.get("epk"), envelope.get("sig")
        if type(nonce) is not int or not 0 <= nonce < 1 << 63:
            raise SecureCallError(f"{what} has no valid nonce")
        if not isinstance(epk, bytes) or len(epk) != _POINT or not isinstance(sig, bytes) or len(sig) > _SIG_MAX:
            raise SecureCallError(f"{what} has a malformed key or signature")
        sender = self.peer(caller)
        me = self._me
        identity = self._identity(caller, self.name, method, expect, nonce)
        try:
            sender.key.verify(sig, b"sign" + identity + epk + me.fingerprint, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise SecureCallError(
                f"{what}: {caller}'s signature does not verify (the call's key, identity or target "
                f"was altered or substituted on the way, or it was not sent by {caller}); refused") from None
        try:
            ephemeral = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), epk)
        except ValueError:
            raise SecureCallError(f"{what} has an invalid ephemeral key") from None
        with self._lock:
            if (caller, nonce) in self._seen:
                raise SecureCallError(f"{what} is a replay of a call already received; refused")
        request_key, response_key = self._keys(self._key.exchange(ec.ECDH(), ephemeral), epk,
                                               me.fingerprint, identity)
        body = _decrypt(AESGCM(request_key), b"call" + identity, envelope.get("ct"), what)
        if not isinstance(body, dict) or not isinstance(body.get("args"), list) or not isinstance(body.get("kwargs"), dict):
            raise SecureCallError(f"{what} decrypted to something that is not arguments")
        with self._lock:
            if (caller, nonce) in self._seen:
                raise SecureCallError(f"{what} is a replay of a call already received; refused")
            self._seen[(caller, nonce)] = None
            if len(self._seen) > REPLAY_WINDOW:
                self._seen.popitem(last=False)
        return tuple(body["args"]), body["kwargs"], Session(identity, response_key)


def certificate_pem(tls_sock: Any) -> str | None:
    """The PEM of the certificate a TLS peer presented (the server hands these to the sites)."""
    try:
        der = tls_sock.getpeercert(binary_form=True)
    except (AttributeError, ValueError, OSError):
        return None
    if not der:
        return None
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM).decode("ascii")




__all__ = ["PROTOCOL", "SEGMENT", "SecureCallError", "SecureChannel", "Session", "certificate_pem"]
