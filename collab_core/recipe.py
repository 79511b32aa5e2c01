"""Recipes: a job's description -- what runs on the server, what runs on each client -- that any
environment can execute and that can be exported to a job folder."""

from __future__ import annotations

import re
import sys
import types
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar, Protocol

import attrs

from .app import App, describe
from .errors import RecipeError
from .registry import check_required_plugins
from .run import Run

_JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@attrs.frozen
class JobSpec:
    """What an environment needs to run a recipe."""

    job_name: str
    api: str
    server: Any
    client: Any
    min_clients: int
    required_plugins: tuple[str, ...]
    recipe_class: str
    tracking: tuple[dict[str, Any], ...] = ()


class Environment(Protocol):
    """Where a recipe runs. Registered through ``collab_register_environments``."""

    name: str

    def deploy(self, recipe: RecipeBase) -> Run: ...


class RecipeBase:
    """Base of every recipe.

    Subclasses set :attr:`api` (the programming model; environments pick the backend that serves
    it) and implement :meth:`build_job`. ``required_plugins`` lists PEP 508 requirements checked
    before anything starts.
    """

    #: The programming model this recipe uses; explicit, never guessed from the code.
    api: ClassVar[str] = "collab"
    #: Plugins every instance needs, in addition to those passed to the constructor.
    required_plugins: tuple[str, ...] = ()

    def __init__(self, job_name: str, min_clients: int = 1, required_plugins: Iterable[str] = (),
                 tracking: Any = None):
        if not isinstance(job_name, str) or not _JOB_NAME.match(job_name):
            raise RecipeError(
                f"job_name {job_name!r} is not valid: use 1-128 letters, digits, '_', '.' or '-', "
                f"starting with a letter or digit (it names folders)"
            )
        if not isinstance(min_clients, int) or isinstance(min_clients, bool) or min_clients < 1:
            raise RecipeError(f"min_clients must be an integer >= 1, got {min_clients!r}")
        if isinstance(required_plugins, str):
            raise RecipeError("required_plugins is a list of requirements, e.g. ['collab-torchrun>=0.1']")
        self.job_name = job_name
        self.min_clients = min_clients
        self.required_plugins = tuple(type(self).required_plugins) + tuple(required_plugins)
        self.tracking: list[dict[str, Any]] = []
        if tracking:
            for entry in tracking_entries(tracking):
                self.add_tracking(entry["name"], **entry["options"])

    def add_tracking(self, name: str, **options: Any) -> RecipeBase:
        """Send the metrics client code logs to the tracker ``name`` ("tensorboard", "mlflow",
        "wandb", or any installed tracker plugin) with ``options`` (e.g. ``tracking_uri=``).
        Checked at once: a tracker that is not installed fails here, with its install line."""
        from .tracking import normalize_config

        requirement = "collab-tracking>=0.1"
        check_required_plugins([requirement])
        entry = normalize_config([{"name": name, "options": options}])[0]
        if any(e["name"] == name for e in self.tracking):
            raise RecipeError(f"tracker {name!r} is already configured for this recipe")
        self.tracking.append(entry)
        self.required_plugins = tuple(dict.fromkeys((*self.required_plugins, requirement)))
        return self
    def build_job(self) -> JobSpec:
        raise NotImplementedError(f"{type(self).__name__} must implement build_job()")

    def check(self) -> None:
        """Check, before anything starts, that every required plugin is installed."""
        check_required_plugins(self.required_plugins)

    def execute(self, env: Environment) -> Run:
        """Run this recipe in ``env`` (e.g. ``SimEnv(num_clients=5)``) and return the :class:`Run`."""
        deploy = getattr(env, "deploy", None)
        if not callable(deploy):
            raise RecipeError(
                f"{env!r} is not an environment (it has no deploy method); pass e.g. SimEnv(num_clients=5)"
            )
        self.check()
        return deploy(self)

    def export(self, path: str | Path) -> Path:
        """Write this recipe as a job folder (job.json plus the user's source files)."""
        from .job import export_job

        return export_job(self, Path(path))


def tracking_entries(tracking: Any) -> list[dict[str, Any]]:
    """``"mlflow"``, ``["tensorboard", ("mlflow", {...})]`` or ``[{"name", "options"}]`` as a list of
    ``{"name", "options"}`` (not yet checked against the installed trackers)."""
    if isinstance(tracking, str):
        tracking = [tracking]
    out = []
    for item in tracking:
        if isinstance(item, str):
            out.append({"name": item, "options": {}})
        elif isinstance(item, dict) and "name" in item:
            out.append({"name": item["name"], "options": dict(item.get("options") or {})})
        elif isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str):
            out.append({"name": item[0], "options": dict(item[1])})
        else:
            raise RecipeError(f"tracking entries are tracker names like 'tensorboard', or (name, options); got {item!r}")
    return out


def _caller_module() -> types.ModuleType:
    """The module of the first frame outside collab_core (the user's module, possibly __main__)."""
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if not (name == "collab_core" or name.startswith("collab_core.")):
            module = sys.modules.get(name)
            if module is None:
                break
            return module
        frame = frame.f_back
    raise RecipeError(
        "CollabRecipe() without server= and client= looks for @collab.main and @collab.publish "
        "functions in the calling module, but could not find that module; pass server= and client="
    )


class CollabRecipe(RecipeBase):
    """The Collab API recipe: a ``@collab.main`` server and ``@collab.publish`` clients.

    ``server`` and ``client`` are objects (instances of your classes) or modules. Leave both out to
    use the module that creates the recipe (module-level functions, no classes).

    Client API: pass ``train_script="client.py"`` (and ``script_args``) instead of ``client``; the
    script uses ``import collab_core.client as flare`` and the server drives it with
    ``collab.clients.execute(fl_model=...)`` and ``collab.clients.stop()``.
    """

    api = "collab"

    def __init__(
        self,
        job_name: str,
        server: Any = None,
        client: Any = None,
        min_clients: int = 1,
        required_plugins: Iterable[str] = (),
        train_script: str | None = None,
        script_args: str | list[str] = "",
        launch_external_process: bool = False,
        command: str | None = None,
        subprocess_timeout: float = 600.0,
        tracking: Any = None,
    ):
        super().__init__(job_name, min_clients, required_plugins, tracking=tracking)
        if launch_external_process:
            self._setup_subprocess(server, client, train_script, script_args, command, subprocess_timeout)
            return
        if command is not None:
            raise RecipeError("command= is for launch_external_process=True; pass that too")
        if train_script is not None:
            if client is not None:
                raise RecipeError("pass either client= (Collab API) or train_script= (Client API), not both")
            if server is None:
                raise RecipeError("a train_script recipe needs server= (the object or module with @collab.main)")
            from .bridge import ScriptClient, resolve_script

            near = None
            caller_file = getattr(_caller_module(), "__file__", None)
            if caller_file:
                near = Path(caller_file).resolve().parent
            client = ScriptClient(resolve_script(train_script, near), script_args)
        elif script_args:
            raise RecipeError("script_args is for train_script recipes; pass train_script= too")
        if server is None and client is None:
            server = client = _caller_module()
        elif server is None or client is None:
            missing = "server" if server is None else "client"
            raise RecipeError(
                f"CollabRecipe got a {'client' if missing == 'server' else 'server'} but no {missing}: "
                f"pass both server= and client=, or neither to use the calling module's functions"
            )
        for obj, role in ((server, "server"), (client, "client")):
            if isinstance(obj, type):
                raise RecipeError(
                    f"{role}={obj.__qualname__} is a class; pass an instance, e.g. {role}={obj.__qualname__}()"
                )
        self.server = server
        self.client = client
        # Validate now, so a missing @collab.main or a misplaced decorator fails at construction.
        App(server, role="server")
        client_app = App(client, role="client")
        if not client_app.publish:
            raise RecipeError(
                f"the client ({describe(client)}) publishes no methods; decorate the functions the "
                f"server calls with @collab.publish"
            )

    def _setup_subprocess(self, server: Any, client: Any, train_script: str | None, script_args: Any,
                          command: str | None, subprocess_timeout: float) -> None:
        """launch_external_process=True: the site forwards its calls to a worker group (collab-torchrun)."""
        requirement = "collab-torchrun>=0.1"
        self.required_plugins = tuple(dict.fromkeys((*self.required_plugins, requirement)))
        check_required_plugins([requirement])
        from collab_torchrun.client import SubprocessClient

        if server is None:
            raise RecipeError("launch_external_process=True needs server= (the object or module with @collab.main)")
        if not command or not isinstance(command, str):
            raise RecipeError("launch_external_process=True needs command=, e.g. 'torchrun --nproc_per_node=2' or 'python'")
        if not isinstance(subprocess_timeout, (int, float)) or subprocess_timeout <= 0:
            raise RecipeError(f"subprocess_timeout must be a positive number of seconds, got {subprocess_timeout!r}")
        if (train_script is None) == (client is None):
            raise RecipeError("launch_external_process=True needs either train_script= (Client API) or "
                              "client= (a module or object with @collab.publish methods), not both")
        caller_file = getattr(_caller_module(), "__file__", None)
        near = Path(caller_file).resolve().parent if caller_file else None
        if train_script is not None:
            from .bridge import resolve_script

            proxy = SubprocessClient(command, subprocess_timeout, train_script=str(resolve_script(train_script, near)),
                                     script_args=script_args)
        else:
            from .job import describe_client

            proxy = SubprocessClient(command, subprocess_timeout, client=describe_client(client))
        self.server = server
        self.client = proxy
        App(server, role="server")
        App(proxy, role="client")

    @property
    def train_script(self) -> str | None:
        return getattr(self.client, "train_script", None) if type(self.client).__name__ == "ScriptClient" else None

    def build_job(self) -> JobSpec:
        return JobSpec(
            job_name=self.job_name,
            api=self.api,
            server=self.server,
            client=self.client,
            min_clients=self.min_clients,
            required_plugins=self.required_plugins,
            recipe_class=f"{type(self).__module__}:{type(self).__qualname__}",
            tracking=tuple(self.tracking),
        )

    def __repr__(self) -> str:
        return (
            f"CollabRecipe(job_name={self.job_name!r}, server={describe(self.server)}, "
            f"client={describe(self.client)}, min_clients={self.min_clients})"
        )
