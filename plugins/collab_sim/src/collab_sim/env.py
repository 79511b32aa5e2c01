"""SimEnv: the whole job in this process -- the server's main on the caller's thread, each client
site's calls on worker threads."""

from __future__ import annotations

import logging
import time
import traceback
import types
import uuid
from concurrent.futures import wait
from pathlib import Path
from typing import Any

from collab_core import filters, progress, props, topology, tracking, workspaces
from collab_core.app import App, make_client_object
from collab_core.errors import RecipeError
from collab_core.executor import ElasticExecutor
from collab_core.logs import capture_site_logs, site_prints
from collab_core.progress import level_of as progress_level
from collab_core.recipe import job_settings
from collab_core.registry import get_registry
from collab_core.run import Run
from collab_core.runtime import CALL_THREADS, SERVER, JobRuntime, SiteRuntime

from .backend import ISOLATION_MODES

log = logging.getLogger("collab.sim")


#: NVFlare's log_config modes, as log levels
_LOG_CONFIGS = {"concise": logging.INFO, "full": logging.DEBUG, "verbose": logging.DEBUG}


class SimEnv:
    """Run a recipe in this process.

    ``num_clients`` sites are named ``site-1`` ... ``site-N`` (or pass ``clients=[names]``).
    A hierarchical federation: ``num_clients=(3, 2)`` is 3 top-level sites ``site-1`` ...
    ``site-3`` with 2 children each (``site-1-1``, ``site-1-2``, ...; more numbers, more levels), or
    ``clients=[names]`` with ``parents={child: parent}`` (see :mod:`collab_core.topology`).
    ``isolation="wire"`` (default) copies arguments and results through the wire format;
    ``"none"`` passes references. ``max_workers`` bounds the threads doing client work at once
    (threads waiting on nested calls do not count). ``call_timeout`` is the default deadline of
    every call (None: no deadline). ``workspace`` is the run's folder (default: a new folder under
    ``$COLLAB_WORKSPACE_ROOT`` or the system temp dir, of which the newest ``$COLLAB_KEEP_RUNS``
    (20) are kept; see :mod:`collab_core.workspaces` and ``collab clean``). ``progress`` is what the console shows
    while the job runs: ``"normal"`` (default; also ``True``), ``"verbose"`` or ``"off"``
    (``False``); None reads ``$COLLAB_PROGRESS`` (see :mod:`collab_core.progress`).
    ``log_level`` is the lowest level written to the sites' log files (INFO).
    """

    name = "sim"

    def __init__(
        self,
        num_clients: int | tuple[int, ...] | None = None,
        *,
        clients: list[str] | None = None,
        parents: dict[str, str] | None = None,
        workspace: str | Path | None = None,
        isolation: str = "wire",
        max_workers: int | None = None,
        call_timeout: float | None = None,
        log_level: int | str = logging.INFO,
        progress: bool | str | None = None,
        num_threads: int | None = None,
        workspace_root: str | Path | None = None,
        log_config: str | None = None,
        gpu_config: str | None = None,
        extra: dict[str, Any] | None = None,
    ):
        # NVFlare's SimEnv keywords: num_threads (max_workers), workspace_root (a folder per run
        # under it), log_config (a level or NVFlare's concise/full/verbose), gpu_config, extra
        if num_clients == 0 and clients:  # NVFlare's default num_clients=0 with clients=[...]
            num_clients = None
        if num_threads is not None:
            if max_workers is not None and max_workers != num_threads:
                raise RecipeError("pass max_workers= or num_threads= (NVFlare's name for it), not both")
            max_workers = num_threads
        if workspace is not None and workspace_root is not None:
            raise RecipeError("pass workspace= (this run's folder) or workspace_root= (a folder per run under "
                              "it), not both")
        if log_config is not None:
            log_level = _LOG_CONFIGS.get(str(log_config).lower(), log_config)
        if gpu_config:
            log.warning("SimEnv runs every site in this process, so gpu_config=%r assigns no GPUs; choose "
                        "devices in the sites' code (e.g. by collab.site_name), or use PocEnv (a process "
                        "per site)", gpu_config)
        if extra is not None and not isinstance(extra, dict):
            raise RecipeError(f"extra must be a dict, got {type(extra).__name__}")
        self.extra = dict(extra or {})
        self.workspace_root = Path(workspace_root) if workspace_root is not None else None
        #: which client is whose child: num_clients=(3, 2), or clients= with parents=
        self.topology = topology.resolve("SimEnv", num_clients, clients, parents, SERVER)
        clients = list(self.topology.sites)
        if isolation not in ISOLATION_MODES:
            raise RecipeError(f"isolation must be one of {ISOLATION_MODES}, got {isolation!r}")
        if max_workers is not None and (not isinstance(max_workers, int) or max_workers < 1):
            raise RecipeError(f"max_workers must be an integer >= 1, got {max_workers!r}")
        if call_timeout is not None and call_timeout <= 0:
            raise RecipeError(f"call_timeout must be positive, got {call_timeout!r}")
        self.clients = clients
        self.num_clients = len(clients)
        self.workspace = Path(workspace) if workspace is not None else None
        self.isolation = isolation
        self.max_workers = max_workers or min(32, len(clients) + 4)
        self.call_timeout = call_timeout
        self.log_level = logging.getLevelName(log_level) if isinstance(log_level, str) else log_level
        if not isinstance(self.log_level, int):
            raise RecipeError(f"log_level must be a logging level (e.g. 'INFO' or logging.DEBUG), got {log_level!r}")
        self.progress = progress if progress is None else progress_level(progress, "SimEnv")
        #: how long the end of a job waits for @collab.final functions and cancelled calls
        self.final_timeout = 30.0

    def __repr__(self) -> str:
        shape = f", hierarchy: {self.topology.describe()}" if self.topology.is_hierarchical else ""
        return f"SimEnv(num_clients={self.num_clients}{shape}, isolation={self.isolation!r})"

    def _workspace_for(self, job_name: str) -> Path:
        if self.workspace is not None:
            self.workspace.mkdir(parents=True, exist_ok=True)
            return self.workspace
        if self.workspace_root is not None:  # the user's folder: a run folder in it, nothing pruned
            path = self.workspace_root / f"{job_name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
            path.mkdir(parents=True)
            return path
        return workspaces.new_run_folder("sim", job_name)

    def deploy(self, recipe: Any) -> Run:
        spec = recipe.build_job()
        if spec.min_clients > self.num_clients:
            raise RecipeError(
                f"recipe {spec.job_name!r} needs min_clients={spec.min_clients} but SimEnv has "
                f"{self.num_clients} client(s); use SimEnv(num_clients={spec.min_clients}) or more"
            )
        backend_factory = get_registry().backend_for(spec.api, "sim").obj
        workspace = self._workspace_for(spec.job_name)
        started = time.monotonic()
        executor = ElasticExecutor(self.max_workers, name=f"sim-{spec.job_name}")
        backend = backend_factory(executor=executor, isolation=self.isolation)
        server_app = App(spec.server, role="server", objects=spec.server_objects)
        client_apps = {
            site: App(make_client_object(spec.client, site), role="client",
                      objects={name: make_client_object(obj, site) for name, obj in spec.client_objects.items()})
            for site in self.clients
        }
        first = client_apps[self.clients[0]]
        job = JobRuntime(
            spec.job_name, self.clients, backend,
            {"server": server_app.interface, "client": first.interface},
            workspace, default_timeout=self.call_timeout,
        )
        job.tracking = list(spec.tracking)
        job.props = {**props.empty_props(), **(spec.props or {})}
        job.backend_type = self.name
        settings = job_settings(recipe)  # CollabRecipe(sync_task_timeout=, max_call_threads_for_*=)
        limits = {"server": settings.get("max_call_threads_for_server"),
                  "client": settings.get("max_call_threads_for_client")}
        if any(v is not None for v in limits.values()):
            job.extras[CALL_THREADS] = limits
        sync_timeout = settings.get("sync_task_timeout")
        if spec.files:  # the job's files: copied into each site's folder (each site has its own)
            job.files = spec.files
        job.topology = self.topology
        reporter = progress.Progress(spec.job_name, progress_level(self.progress, "SimEnv"))
        job.extras["progress"] = reporter
        filters.install_all(job, spec.filters, [SERVER, *self.clients], copy=True)  # each site its own
        undo_decomposers = filters.activate_decomposers(spec.decomposers)
        hub = tracking.build_hub(job.tracking, workspace / SERVER, spec.job_name)
        if hub is not None:
            job.extras["tracking_hub"] = hub
        server = SiteRuntime(job, SERVER, server_app)
        sites = {site: SiteRuntime(job, site, app) for site, app in client_apps.items()}
        backend.attach({SERVER: server, **sites})
        module_state = _module_globals(spec.client)

        status, result, error = "failed", None, None
        with capture_site_logs(workspace, SERVER, self.log_level) as handler, progress.console(reporter.level), \
                site_prints(SERVER):
            log.debug("job %s starting on SimEnv with %d clients, workspace %s", spec.job_name, self.num_clients, workspace)
            reporter.started("SimEnv", self.num_clients, workspace, hierarchy=self.topology.describe())
            props.warn_unknown_sites(job.props, self.clients, spec.job_name)
            try:
                starts = {n: executor.submit(s.start) for n, s in sites.items()}
                _, late = wait(list(starts.values()), timeout=sync_timeout)
                for n, fut in starts.items():
                    if fut in late:  # sync_task_timeout bounds the clients' @collab.init phase
                        sites[n].init_error = TimeoutError(
                            f"@collab.init did not finish within the recipe's sync_task_timeout={sync_timeout:g} s")
                        log.error("job %s: %s: %s", spec.job_name, n, sites[n].init_error)
                ready = [n for n, s in sites.items() if s.init_error is None]
                server.start()
                if server.init_error is not None:
                    error = _format(server.init_error, "the server's @collab.init failed")
                elif len(ready) < spec.min_clients:
                    failed = {n: repr(s.init_error) for n, s in sites.items() if s.init_error is not None}
                    error = (f"only {len(ready)} of {self.num_clients} clients started, min_clients is "
                             f"{spec.min_clients}; failed @collab.init: {failed}")
                else:
                    try:
                        result = server.run_main()
                        status = "finished"
                    except KeyboardInterrupt:
                        job.abort("interrupted")
                        raise
                    except BaseException as exc:
                        job.abort(f"main failed: {exc!r}")
                        error = _format(exc, "@collab.main failed")
                        log.error("job %s: %s", spec.job_name, error)
            finally:
                stragglers = backend.cancel_all()
                if stragglers:
                    log.info("job %s: cancelling %d call(s) still running after main returned",
                             spec.job_name, len(stragglers))
                server.stop()
                wait([executor.submit(s.stop) for s in sites.values()], timeout=self.final_timeout)
                ignored = backend.close(grace=self.final_timeout)
                tracking_report = hub.close() if hub is not None else {}
                if ignored:
                    log.warning("job %s: %d call(s) ignored cancellation and were abandoned after %.0f s: %s",
                                spec.job_name, len(ignored), self.final_timeout, ", ".join(ignored[:10]))
                _warn_shared_module_state(spec.client, module_state, self.num_clients)
                undo_decomposers()
                reporter.finished(status, time.monotonic() - started, error)
            if error and status != "finished":
                log.warning("job %s failed; see %s", spec.job_name, handler.path_for(SERVER))
        workspaces.release(workspace)
        logs = {site: handler.path_for(site) for site in [SERVER, *self.clients]}
        return Run(
            job_name=spec.job_name, status=status, result=result, error=error, workspace=workspace,
            logs=logs, env=self.name, duration_s=time.monotonic() - started, tracking=tracking_report,
        )


def _format(exc: BaseException, what: str) -> str:
    return f"{what}:\n" + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def _module_globals(client: Any) -> dict[str, int] | None:
    if not isinstance(client, types.ModuleType):
        return None
    return {k: id(v) for k, v in vars(client).items() if not k.startswith("__")}


def _warn_shared_module_state(client: Any, before: dict[str, int] | None, num_clients: int) -> None:
    """Module-level clients share one module between simulated sites: say so where it bites."""
    if before is None or num_clients < 2:
        return
    changed = sorted(
        k for k, v in vars(client).items()
        if not k.startswith("__") and k in before and before[k] != id(v) and not callable(v)
    )
    if changed:
        log.warning(
            "module-level state %s of client module %s was reassigned during the simulation. In SimEnv "
            "all %d sites share this one module, so they also share that state. For per-site state use "
            "a client class (each site gets its own instance), or run in PocEnv (one process per site).",
            ", ".join(changed), client.__name__, num_clients,
        )
