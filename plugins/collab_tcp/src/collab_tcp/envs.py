"""PocEnv (a server and one process per site on this machine) and ProdEnv (submit to a running
server with an admin kit)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from collab_core import filters, progress, topology, workspaces
from collab_core.errors import RecipeError
from collab_core.lifeline import new_lifeline
from collab_core.progress import level_of as _level_of
from collab_core.run import Run
from collab_core.runtime import SERVER

from .admin import AdminClient, AdminError
from .kit import Kit, provision

log = logging.getLogger("collab.tcp.env")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no output)"


def _run_from_done(job_name: str, done: dict, workspace: Path, env: str, started: float) -> Run:
    logs: dict[str, Path] = {}
    for site, text in (done.get("logs") or {}).items():
        path = workspace / "logs" / site / "log.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        logs[site] = path
    return Run(job_name=job_name, status=done["status"], result=done.get("result"), error=done.get("error"),
               workspace=workspace, logs=logs, env=env, duration_s=time.monotonic() - started,
               tracking=done.get("tracking") or {},
               sites=[SERVER, *(p for p in done.get("participants") or [] if p != SERVER)])


class PocEnv:
    """Run a recipe as real processes on this machine: one server, one process per site, talking
    over mutually authenticated TLS on 127.0.0.1 (a throw-away project is provisioned for it).

    Everything is started for the run and stopped after it; ``stop(clean_poc=True)`` also removes
    the workspace (kits, every process's output, the job's logs). ``progress`` is what the console
    shows while the job runs, as for SimEnv: ``"normal"`` (default), ``"verbose"`` (every site's
    log lines too) or ``"off"``; None reads ``$COLLAB_PROGRESS``.
    """

    name = "poc"

    def __init__(self, num_clients: int | tuple[int, ...] | None = None, *, clients: list[str] | None = None,
                 parents: dict[str, str] | None = None,
                 workspace: str | Path | None = None, start_timeout: float = 60.0,
                 job_timeout: float | None = None, heartbeat: float = 1.0, dead_after: float = 30.0,
                 progress: bool | str | None = None):
        self.progress = progress if progress is None else _level_of(progress, "PocEnv")  # `progress` is the argument here
        #: a hierarchy (num_clients=(3, 2), or clients= with parents=): every site is still its own
        #: process dialling the server; a parent's calls to its children are relayed by the server
        self.topology = topology.resolve("PocEnv", num_clients, clients, parents, SERVER)
        self.clients = list(self.topology.sites)
        self.num_clients = len(self.clients)
        self.workspace = Path(workspace) if workspace is not None else None
        self.start_timeout = start_timeout
        self.job_timeout = job_timeout
        self.heartbeat = heartbeat
        self.dead_after = dead_after
        self.processes: dict[str, subprocess.Popen] = {}
        self.address: tuple[str, int] | None = None
        self._used: list[Path] = []
        self._lifeline: tuple[int, int] | None = None

    def __repr__(self) -> str:
        shape = f", hierarchy: {self.topology.describe()}" if self.topology.is_hierarchical else ""
        return f"PocEnv(num_clients={self.num_clients}{shape})"

    # -- processes --------------------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str], ws: Path) -> None:
        """Start a collab process that stops by itself when this process dies (lifeline pipe)."""
        out = ws / "processes" / f"{name}.log"
        out.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1", COLLAB_BACKEND_TYPE="poc")  # collab.backend_type
        if self._lifeline is None:
            self._lifeline = new_lifeline()
        read_end = self._lifeline[0]
        with open(out, "ab") as f:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "collab_core.cli", *args, "--lifeline", str(read_end)], stdout=f,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                pass_fds=(read_end,),
            )

    def start(self, ws: Path) -> tuple[AdminClient, dict[str, Kit]]:
        """Provision, start the server and the sites, and connect an admin; bounded by start_timeout."""
        kits_dir = ws / "kits"
        if kits_dir.exists():
            shutil.rmtree(kits_dir)
        paths = provision(f"poc-{uuid.uuid4().hex[:8]}", "127.0.0.1:1", self.clients, ["admin"], kits_dir)
        kits = {name: Kit.load(path) for name, path in paths.items()}
        port_file = ws / "server.port"
        port_file.unlink(missing_ok=True)
        hb = ["--heartbeat", str(self.heartbeat), "--dead-after", str(self.dead_after)]
        self._spawn(SERVER, ["server", "start", "--kit", str(paths["server"]), "--port", "0",
                             "--port-file", str(port_file), "--workspace", str(ws / "server"), *hb], ws)
        for site in self.clients:
            self._spawn(site, ["site", "start", "--kit", str(paths[site]), "--port-file", str(port_file),
                               "--workspace", str(ws / "sites" / site), *hb], ws)
        deadline = time.monotonic() + self.start_timeout
        while not port_file.exists():
            self._check_processes(ws)
            if time.monotonic() > deadline:
                raise RecipeError(f"the POC server did not start within {self.start_timeout:.0f} s:\n"
                                  f"{_tail(ws / 'processes' / 'server.log')}")
            time.sleep(0.01)
        host, _, port = port_file.read_text().strip().rpartition(":")
        self.address = (host, int(port))
        admin = AdminClient(kits["admin"], address=self.address).connect()
        while True:
            connected = admin.status()["sites"]
            if set(self.clients) <= set(connected):
                break
            self._check_processes(ws)
            if time.monotonic() > deadline:
                missing = sorted(set(self.clients) - set(connected))
                tails = "\n".join(f"--- {m} ---\n{_tail(ws / 'processes' / f'{m}.log')}" for m in missing)
                raise RecipeError(f"sites {missing} did not connect within {self.start_timeout:.0f} s:\n{tails}")
            time.sleep(0.02)
        return admin, kits

    def _check_processes(self, ws: Path) -> None:
        for name, proc in self.processes.items():
            code = proc.poll()
            if code is not None:
                raise RecipeError(f"the POC {name} process exited with code {code}:\n"
                                  f"{_tail(ws / 'processes' / f'{name}.log')}")

    def stop(self, clean_poc: bool = False, grace: float = 5.0) -> None:
        """Stop every process (terminate, then kill after ``grace``); with ``clean_poc`` remove the
        workspace too."""
        procs = list(self.processes.values())
        deadline = time.monotonic() + grace
        for p in procs:
            try:
                p.wait(max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                pass
        for p in procs:
            if p.poll() is None:
                _signal_group(p, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(2)
            except subprocess.TimeoutExpired:
                _signal_group(p, signal.SIGKILL)
                p.wait(5)
        self.processes.clear()
        if self._lifeline is not None:
            for fd in self._lifeline:
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._lifeline = None
        if clean_poc:
            for ws in self._used:
                shutil.rmtree(ws, ignore_errors=True)
            self._used.clear()

    # -- the environment --------------------------------------------------------------------------

    def deploy(self, recipe: Any) -> Run:
        spec = recipe.build_job()
        if spec.min_clients > self.num_clients:
            raise RecipeError(
                f"recipe {spec.job_name!r} needs min_clients={spec.min_clients} but PocEnv has "
                f"{self.num_clients} client(s); use PocEnv(num_clients={spec.min_clients}) or more")
        started = time.monotonic()
        ws = self.workspace or workspaces.new_run_folder("poc", spec.job_name)
        ws.mkdir(parents=True, exist_ok=True)
        self._used.append(ws)
        job_dir = recipe.export(ws / "job")
        admin = None
        undo_decomposers = filters.activate_decomposers(spec.decomposers)  # the result may hold such values
        reporter = progress.Progress(spec.job_name, progress.level_of(self.progress, "PocEnv"))
        with progress.console(reporter.level):
            reporter.started("PocEnv", self.num_clients, ws, hierarchy=self.topology.describe())
            try:
                admin, _ = self.start(ws)
                job = admin.submit(job_dir, sites=self.clients, wait_timeout=self.start_timeout,
                                   parents=self.topology.to_wire())
                done = admin.follow(job, on_log=reporter.site_lines, on_progress=reporter.relay,
                                    on_print=reporter.printed, timeout=self.job_timeout)
                admin.shutdown(sites=True)
            except AdminError as exc:
                reporter.finished("failed", time.monotonic() - started, str(exc))
                raise RecipeError(f"PocEnv run of {spec.job_name!r} failed: {exc}\n"
                                  f"server output:\n{_tail(ws / 'processes' / 'server.log')}") from exc
            finally:
                if admin is not None:
                    admin.close()
                self.stop()
                undo_decomposers()
            reporter.finished(done["status"], time.monotonic() - started, done.get("error"))
        workspaces.release(ws)
        return _run_from_done(spec.job_name, done, ws, self.name, started)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class ProdEnv:
    """Submit a recipe to a running server with an admin kit, follow it and return its Run.

    ``sites`` restricts the job to those sites (default: every connected site, at least
    ``min_clients``); log lines arrive as they happen (logger ``collab.tcp.env``, INFO), and the
    console shows the job's progress as for SimEnv (``progress=``). A hierarchical job names its
    sites and ``parents={child: parent}`` (or ``num_clients=(3, 2)`` for sites named ``site-1``,
    ``site-1-1``, ...); the kits do not change: every site dials the server as always."""

    name = "prod"

    def __init__(self, kit: str | Path | Kit, *, sites: list[str] | None = None, workspace: str | Path | None = None,
                 wait_timeout: float = 60.0, job_timeout: float | None = None,
                 num_clients: int | tuple[int, ...] | None = None, parents: dict[str, str] | None = None,
                 progress: bool | str | None = None):
        self.progress = progress if progress is None else _level_of(progress, "ProdEnv")  # `progress` is the argument here
        self.kit = kit if isinstance(kit, Kit) else Kit.load(kit)
        if self.kit.role != "admin":
            raise RecipeError(f"ProdEnv needs an admin kit; {self.kit.path} is a {self.kit.role} kit")
        self.sites = list(sites) if sites else None
        self.topology = None
        if parents is not None or isinstance(num_clients, (tuple, list)):
            self.topology = topology.resolve("ProdEnv", num_clients, self.sites, parents, SERVER, names_arg="sites")
            self.sites = list(self.topology.sites)
        self.workspace = Path(workspace) if workspace is not None else None
        self.wait_timeout = wait_timeout
        self.job_timeout = job_timeout

    def deploy(self, recipe: Any) -> Run:
        spec = recipe.build_job()
        started = time.monotonic()
        ws = self.workspace or workspaces.new_run_folder("prod", spec.job_name)
        ws.mkdir(parents=True, exist_ok=True)
        job_dir = recipe.export(ws / "job")
        undo_decomposers = filters.activate_decomposers(spec.decomposers)  # the result may hold such values
        try:
            return submit_and_follow(self.kit, job_dir, ws, sites=self.sites, wait_timeout=self.wait_timeout,
                                     job_timeout=self.job_timeout, job_name=spec.job_name, started=started,
                                     progress_level=progress.level_of(self.progress, "ProdEnv"),
                                     parents=self.topology.to_wire() if self.topology else None)
        finally:
            undo_decomposers()


def submit_and_follow(kit: Kit, job_dir: Path, ws: Path, *, sites: list[str] | None, wait_timeout: float,
                      job_timeout: float | None, job_name: str, started: float | None = None,
                      on_log=None, progress_level: str = "normal", parents: dict[str, str] | None = None) -> Run:
    started = started or time.monotonic()
    reporter = progress.Progress(job_name, progress_level)

    def show(site: str, lines: list[str]) -> None:
        for line in lines:
            log.info("[%s] %s", site, line)
        reporter.site_lines(site, lines)

    with progress.console(reporter.level), AdminClient(kit) as admin:
        job = admin.submit(job_dir, sites=sites, wait_timeout=wait_timeout, parents=parents)
        shape = topology.Topology(sites, parents).describe() if sites and parents else None
        reporter.started(f"ProdEnv (job {job} on {kit.server_address})",
                         len(sites) if sites else None, ws, hierarchy=shape)
        done = admin.follow(job, on_log=on_log or show, on_progress=reporter.relay, on_print=reporter.printed,
                            timeout=job_timeout)
        reporter.finished(done["status"], time.monotonic() - started, done.get("error"))
    workspaces.release(ws)
    return _run_from_done(job_name, done, ws, "prod", started)
