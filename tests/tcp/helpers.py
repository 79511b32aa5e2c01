"""Shared helpers of the TCP end-to-end tests: job projects in tmp_path, an in-process server with
site agents on threads, site and server processes, raw TLS/TCP peers that speak the chunk protocol.

Every wait here is bounded; a helper that runs out of time raises AssertionError with what it saw.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import ssl
import struct
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from collab_core import CollabRecipe, wire
from collab_tcp.admin import AdminClient
from collab_tcp.kit import Kit
from collab_tcp.server import Server
from collab_tcp.site import SiteAgent

#: The bound for waits that should be short in a healthy system.
TIMEOUT = 30.0
CHUNK_HEADER = struct.Struct("<IBI")
START, END = 1, 2
LOCAL = "127.0.0.1"


def wait_for(predicate: Callable[[], Any], timeout: float = TIMEOUT, interval: float = 0.02,
             what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCAL, 0))
        return s.getsockname()[1]


# -- job projects ---------------------------------------------------------------------------------


def load_module(path: Path, name: str):
    """Import the file ``path`` as module ``name`` (registered in sys.modules, so export works)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def job_module(tmp_path: Path, source: str, prefix: str = "tcpjob") -> Iterator[Any]:
    """Write ``source`` to a uniquely named module in its own folder under ``tmp_path`` and import
    it for the duration of the block (removed from sys.modules afterwards, so that servers and
    sites in this process import the job's own copy)."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    folder = tmp_path / f"src-{name}"
    folder.mkdir(parents=True)
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    try:
        yield load_module(path, name)
    finally:
        sys.modules.pop(name, None)


def export_job(tmp_path: Path, source: str, *, server: str = "Server()", client: str = "Client()",
               job_name: str = "job", min_clients: int = 1) -> Path:
    """Export a job whose server and client are built by the expressions ``server`` and ``client``
    evaluated in the module ``source`` (e.g. ``"Server(rounds=2)"``); return the job folder."""
    with job_module(tmp_path, source) as mod:
        recipe = CollabRecipe(job_name=job_name, server=eval(server, vars(mod)),  # noqa: S307 (test code)
                              client=eval(client, vars(mod)), min_clients=min_clients)
        return recipe.export(tmp_path / f"job-{job_name}-{uuid.uuid4().hex[:6]}")


# -- an in-process server with site agents on threads ---------------------------------------------


class Cluster:
    """A Server on 127.0.0.1:<free port> and SiteAgents on threads, all in this process."""

    def __init__(self, kits: Any, root: Path, *, heartbeat: float = 0.5, dead_after: float = 5.0,
                 server_heartbeat: float | None = None, server_dead_after: float | None = None):
        self.kits = kits
        self.root = Path(root)
        self.heartbeat = heartbeat
        self.dead_after = dead_after
        self.server = Server(kits.server, self.root / "server", host=LOCAL, port=0,
                             heartbeat=server_heartbeat or heartbeat,
                             dead_after=server_dead_after or dead_after)
        self.address = self.server.start()
        self.agents: dict[str, SiteAgent] = {}
        self.threads: dict[str, threading.Thread] = {}
        self._admins: list[AdminClient] = []

    def site_kit(self, name: str) -> Kit:
        return self.kits.sites[name].with_server(*self.address)

    def start_site(self, name: str, wait: bool = True, **kwargs: Any) -> SiteAgent:
        kit = kwargs.pop("kit", None) or self.site_kit(name)
        agent = SiteAgent(kit, self.root / "sites" / f"{name}-{uuid.uuid4().hex[:4]}",
                          heartbeat=kwargs.pop("heartbeat", self.heartbeat),
                          dead_after=kwargs.pop("dead_after", self.dead_after), **kwargs)
        thread = threading.Thread(target=agent.run, name=f"agent-{name}", daemon=True)
        thread.start()
        self.agents[name] = agent
        self.threads[name] = thread
        if wait:
            self.wait_sites([name])
        return agent

    def stop_site(self, name: str, timeout: float = 10.0) -> None:
        agent = self.agents.pop(name)
        thread = self.threads.pop(name)
        agent.stop()
        thread.join(timeout)
        assert not thread.is_alive(), f"site agent {name} did not stop within {timeout} s"

    def connected(self) -> list[str]:
        return self.server._connected()

    def wait_sites(self, names, timeout: float = TIMEOUT) -> None:
        wait_for(lambda: set(names) <= set(self.connected()), timeout,
                 what=f"sites {sorted(names)} to connect (connected: {self.connected()})")

    def admin(self) -> AdminClient:
        admin = AdminClient(self.kits.admin, address=self.address, timeout=TIMEOUT).connect()
        self._admins.append(admin)
        return admin

    def run_job(self, job_dir: Path, *, sites: list[str] | None = None, timeout: float = 60.0,
                wait_timeout: float = 20.0, on_log=None) -> dict:
        with AdminClient(self.kits.admin, address=self.address, timeout=TIMEOUT) as admin:
            job = admin.submit(job_dir, sites=sites, wait_timeout=wait_timeout)
            return admin.follow(job, on_log=on_log, timeout=timeout)

    def close(self) -> None:
        for admin in self._admins:
            admin.close()
        for name in list(self.agents):
            self.stop_site(name)
        self.server.stop()


class ProcCluster(Cluster):
    """An in-process Server (inspectable) with real site processes (``collab site start``) that
    find it through a port file."""

    def __init__(self, kits: Any, root: Path, **options: Any):
        super().__init__(kits, root, **options)
        self.port_file = self.root / "server.port"
        write_port_file(self.port_file, self.address)
        self.procs: dict[str, subprocess.Popen] = {}

    def log_path(self, name: str) -> Path:
        return self.root / "processes" / f"{name}.log"

    def start_site(self, name: str, wait: bool = True, **kwargs: Any) -> subprocess.Popen:  # type: ignore[override]
        proc = start_site_process(self.kits.sites[name].path, self.port_file, self.root / "sites" / name,
                                  self.log_path(name), heartbeat=kwargs.get("heartbeat", self.heartbeat),
                                  dead_after=kwargs.get("dead_after", self.dead_after))
        self.procs[name] = proc
        if wait:
            def up():
                if proc.poll() is not None:
                    raise AssertionError(f"site {name} exited with {proc.returncode}:\n{tail(self.log_path(name))}")
                return name in self.connected()

            wait_for(up, TIMEOUT, what=f"site process {name} to connect")
        return proc

    def stop_site(self, name: str, timeout: float = 10.0) -> None:  # type: ignore[override]
        terminate([self.procs.pop(name)], timeout)

    def close(self) -> None:
        procs = list(self.procs.values())
        self.procs.clear()
        try:
            terminate(procs, 10.0)
        finally:
            super().close()


def job_record(server: Server, job_id: str):
    return server.jobs[job_id]


# -- processes ------------------------------------------------------------------------------------


def collab_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "collab_core.cli", *args]


def spawn(args: list[str], log_path: Path, env: dict[str, str] | None = None, **kwargs: Any) -> subprocess.Popen:
    """Start ``args`` in its own session with output to ``log_path`` (``env``: extra variables)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})),
                                start_new_session=True, **kwargs)


def start_site_process(kit_path: Path, port_file: Path, workspace: Path, log_path: Path, *,
                       heartbeat: float = 0.5, dead_after: float = 5.0, **kwargs: Any) -> subprocess.Popen:
    return spawn(collab_cmd("site", "start", "--kit", str(kit_path), "--port-file", str(port_file),
                            "--workspace", str(workspace), "--heartbeat", str(heartbeat),
                            "--dead-after", str(dead_after)), log_path, **kwargs)


def start_server_process(kit_path: Path, port_file: Path, workspace: Path, log_path: Path, *, port: int = 0,
                         heartbeat: float = 0.5, dead_after: float = 5.0, **kwargs: Any) -> subprocess.Popen:
    return spawn(collab_cmd("server", "start", "--kit", str(kit_path), "--host", LOCAL, "--port", str(port),
                            "--port-file", str(port_file), "--workspace", str(workspace),
                            "--heartbeat", str(heartbeat), "--dead-after", str(dead_after)), log_path,
                 **kwargs)


def read_port_file(port_file: Path, proc: subprocess.Popen | None = None, timeout: float = TIMEOUT,
                   log_path: Path | None = None) -> tuple[str, int]:
    def ready():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode}:\n{tail(log_path)}")
        return port_file.exists()

    wait_for(ready, timeout, what=f"{port_file} to be written")
    host, _, port = port_file.read_text().strip().rpartition(":")
    return host, int(port)


def write_port_file(port_file: Path, address: tuple[str, int]) -> None:
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(f"{address[0]}:{address[1]}")
    os.replace(tmp, port_file)


def tail(path: Path | None, lines: int = 40) -> str:
    if path is None:
        return ""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no output)"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def terminate(procs: list[subprocess.Popen], timeout: float = 10.0, sig: int = signal.SIGTERM) -> dict[int, int]:
    """Send ``sig`` to every process still running and wait for each (bounded); SIGKILL stragglers
    and raise AssertionError naming them. Returns {pid: return code}."""
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(sig)
    deadline = time.monotonic() + timeout
    stuck = []
    for p in procs:
        try:
            p.wait(max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            stuck.append(p)
    for p in stuck:
        kill_group(p)
    if stuck:
        raise AssertionError(f"processes {[p.args[3:5] for p in stuck]} did not exit within {timeout} s of {sig!r}")
    return {p.pid: p.returncode for p in procs}


def kill_group(p: subprocess.Popen) -> None:
    """Last-resort cleanup: SIGKILL the process group (each process was started in its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, signal.SIGCONT)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        p.wait(10)


def run_cli(args: list[str], timeout: float = 60.0, **kwargs: Any) -> subprocess.CompletedProcess:
    return subprocess.run(collab_cmd(*args), capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"), **kwargs)


def set_kit_server(kit_path: Path, address: tuple[str, int]) -> None:
    """Point a kit folder at ``host:port`` (kit.json's "server"; the certificates do not change)."""
    doc = json.loads((kit_path / "kit.json").read_text())
    doc["server"] = f"{address[0]}:{address[1]}"
    (kit_path / "kit.json").write_text(json.dumps(doc, indent=2))



#: A job that calls every site once; a server that runs it "still serves".
SMALL_JOB = """
from collab_core import collab

class Server:
    @collab.main
    def run(self):
        return sorted(collab.clients.hello())

class Client:
    @collab.publish
    def hello(self):
        return collab.site_name
"""

MiB = 1 << 20


# -- measuring a process --------------------------------------------------------------------------


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


class PeakRss:
    """The growth of a process's peak RSS over a block: VmHWM after minus VmRSS before (VmHWM is
    reset to the current RSS first where the kernel allows it, so a peak reached before the
    block does not hide one reached in it)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.growth = 0

    def __enter__(self) -> PeakRss:
        with contextlib.suppress(OSError):
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        self.before = status_kib(self.pid, "VmRSS") * 1024
        return self

    def __exit__(self, *exc: object) -> None:
        self.growth = status_kib(self.pid, "VmHWM") * 1024 - self.before


# -- a real server process and a real site --------------------------------------------------------


class ServerProcess:
    """A real server process (`collab server start`) in ``root``; ``still_serves`` proves it works."""

    def __init__(self, kits, root: Path, **kwargs: Any):
        self.kits = kits
        self.root = root
        self.port_file = root / "server.port"
        self.log = root / "processes" / "server.log"
        self.proc = start_server_process(kits.server.path, self.port_file, root / "server", self.log,
                                         heartbeat=0.5, dead_after=10.0, **kwargs)
        self.address = read_port_file(self.port_file, self.proc, log_path=self.log)
        self.sites: list = []

    @property
    def pid(self) -> int:
        return self.proc.pid

    def attacker(self) -> ssl.SSLSocket:
        """A TLS connection authenticated as site-1 (a provisioned kit), before any hello."""
        ctx = self.kits.sites["site-1"].with_server(*self.address).client_context()
        return tls_connect(ctx, self.address)

    def attacker_with_timeout(self, timeout: float) -> ssl.SSLSocket:
        ctx = self.kits.sites["site-1"].with_server(*self.address).client_context()
        return tls_connect(ctx, self.address, timeout=timeout)

    def wait_log(self, text: str, timeout: float = TIMEOUT) -> str:
        def found():
            assert self.proc.poll() is None, f"the server exited:\n{tail(self.log)}"
            for line in self.log.read_text(errors="replace").splitlines():
                if text in line:
                    return line
            return None

        return wait_for(found, timeout, what=f"the server to log {text!r}")

    def still_serves(self, tmp_path: Path) -> None:
        """A real site process connects and a small job runs on it."""
        name = "site-2"
        if not self.sites:
            site_log = self.root / "processes" / f"{name}.log"
            self.sites.append(start_site_process(self.kits.sites[name].path, self.port_file,
                                                 self.root / "sites" / name, site_log,
                                                 heartbeat=0.5, dead_after=10.0))
        job_dir = export_job(tmp_path, SMALL_JOB, job_name=f"after-{uuid.uuid4().hex[:6]}")
        with AdminClient(self.kits.admin, address=self.address, timeout=TIMEOUT) as admin:
            wait_for(lambda: name in admin.status()["sites"], what=f"{name} to connect")
            job = admin.submit(job_dir, sites=[name], wait_timeout=20)
            done = admin.follow(job, timeout=60)
        assert done["status"] == "finished", (done, tail(self.log))
        assert done["result"] == [[name, name]] or done["result"] == [(name, name)], done["result"]

    def stop(self) -> None:
        try:
            terminate(self.sites, 10.0)
        finally:
            terminate([self.proc], 10.0)


# -- raw peers ------------------------------------------------------------------------------------


def tls_connect(ctx: ssl.SSLContext, address: tuple[str, int], timeout: float = 10.0) -> ssl.SSLSocket:
    raw = socket.create_connection(address, timeout=timeout)
    try:
        return ctx.wrap_socket(raw, server_hostname=LOCAL)
    except BaseException:
        raw.close()
        raise


def chunk(sid: int, flags: int, data: bytes) -> bytes:
    return CHUNK_HEADER.pack(sid, flags, len(data)) + data


def message_bytes(msg: Any, sid: int = 1) -> bytes:
    """One message as a single START|END chunk, as a Connection sends a small message."""
    return chunk(sid, START | END, b"".join(bytes(p) for p in wire.frame_parts(msg)))


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        got = sock.recv(n - len(buf))
        if not got:
            raise EOFError("closed")
        buf += got
    return bytes(buf)


def recv_message(sock: socket.socket, timeout: float = 10.0, skip_pings: bool = True) -> dict:
    """Read chunks until one whole non-ping message arrived (raises EOFError when the peer closes)."""
    sock.settimeout(timeout)
    streams: dict[int, bytearray] = {}
    while True:
        sid, flags, n = CHUNK_HEADER.unpack(_recv_exact(sock, CHUNK_HEADER.size))
        data = _recv_exact(sock, n)
        if flags & START:
            streams[sid] = bytearray()
        streams[sid] += data
        if flags & END:
            frame = streams.pop(sid)
            msg = wire.read_frame(__import__("io").BytesIO(bytes(frame)))
            if skip_pings and msg.get("t") == "ping":
                continue
            return msg


def wait_closed_by_peer(sock: socket.socket, timeout: float = 10.0) -> str:
    """Read (and drop) whatever comes until the peer closes; return how it ended. AssertionError if
    the connection is still open after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"the peer kept the connection open for {timeout} s")
        sock.settimeout(remaining)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except (ssl.SSLError, ConnectionError) as exc:
            return f"error: {exc!r}"
        if not data:
            return "eof"


def forged_context(ca_dir: Path, demo_ca_cert: Path, tmp: Path, *, project: str, name: str, role: str) -> ssl.SSLContext:
    """A client TLS context that presents a certificate signed by the CA in ``ca_dir`` (the project
    CA's private folder) with any subject and a clientAuth usage: what a leaked CA key, or two
    projects sharing a CA, would let someone build."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, project),
                                 x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                                 x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    tmp.mkdir(parents=True, exist_ok=True)
    stem = f"{project}-{role}-{uuid.uuid4().hex[:6]}"
    cert_path, key_path = tmp / f"{stem}.pem", tmp / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(cafile=str(demo_ca_cert))
    ctx.load_cert_chain(str(cert_path), str(key_path))
    return ctx
