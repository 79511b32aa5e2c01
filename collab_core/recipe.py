"""Recipes: a job's description -- what runs on the server, what runs on each client -- that any
environment can execute and that can be exported to a job folder."""

from __future__ import annotations

import copy
import sys
import types
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar, Protocol

import attrs

from .app import App, check_object_names, describe
from .errors import RecipeError
from .loading import check_job_name, stop_if_loading_job
from .props import check_json_value, check_per_site_config, check_prop_name, empty_props
from .registry import check_required_plugins
from .run import Run


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
    #: {"server_props", "client_props", "per_site_config"} (JSON data; see collab_core.props)
    props: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    #: named objects of each side (server_objects= / client_objects=): name -> object or module
    server_objects: dict[str, Any] = attrs.field(factory=dict)
    client_objects: dict[str, Any] = attrs.field(factory=dict)


class Environment(Protocol):
    """Where a recipe runs. Registered through ``collab_register_environments``."""

    name: str

    def deploy(self, recipe: RecipeBase) -> Run: ...


class RecipeBase:
    """Base of every recipe: a job's server and client, the plugins it needs, its trackers.

    To write a recipe, subclass it with only the parts that differ: set :attr:`api` if it is not
    the Collab API, and implement :meth:`make_server` (the object with ``@collab.main``). The client
    side comes from the constructor's keywords -- ``client=`` (an object or module with
    ``@collab.publish`` methods) or ``train_script=`` (a Client API script), optionally in a worker
    group (``launch_external_process=True, command="torchrun ..."``) -- and so do ``tracking=`` and
    ``required_plugins=``. ``execute(env)`` and ``export(path)`` then work in every environment.
    """

    #: The programming model this recipe uses; explicit, never guessed from the code.
    api: ClassVar[str] = "collab"
    #: Plugins every instance needs, in addition to those passed to the constructor.
    required_plugins: tuple[str, ...] = ()

    def __new__(cls, *args: Any, **kwargs: Any) -> RecipeBase:
        # before any subclass's __init__ runs (which may save model files): a deployed process
        # importing the job's module stops at the line that builds the recipe
        stop_if_loading_job("builds a recipe")
        return super().__new__(cls)

    def __init__(
        self,
        job_name: str,
        min_clients: int = 1,
        required_plugins: Iterable[str] = (),
        tracking: Any = None,
        *,
        client: Any = None,
        train_script: str | None = None,
        script_args: str | list[str] = "",
        launch_external_process: bool = False,
        command: str | None = None,
        subprocess_timeout: float = 600.0,
    ):
        check_job_name(job_name)
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
        self.client = self._make_client(client, train_script, script_args, launch_external_process, command,
                                        subprocess_timeout)
        self._props = empty_props()
        self._per_site_set = False

    # -- the parts a recipe author writes ---------------------------------------------------------

    def make_server(self) -> Any:
        """The server: an object (or module) with one ``@collab.main``."""
        raise NotImplementedError(f"{type(self).__name__} must implement make_server()")

    def make_client(self) -> Any:
        """The client: by default what the constructor's client keywords described."""
        if self.client is None:
            raise RecipeError(f"{type(self).__name__} has no client: pass client= or train_script=")
        return self.client

    # -- the client side, for every recipe --------------------------------------------------------

    def _make_client(self, client: Any, train_script: str | None, script_args: Any, launch_external_process: bool,
                     command: str | None, subprocess_timeout: float) -> Any:
        if client is not None and train_script is not None:
            raise RecipeError("pass either client= (Collab API) or train_script= (Client API), not both")
        if launch_external_process:
            return self._subprocess_client(client, train_script, script_args, command, subprocess_timeout)
        if command is not None:
            raise RecipeError("command= is for launch_external_process=True; pass that too")
        if train_script is not None:
            from .bridge import ScriptClient, resolve_script

            return ScriptClient(resolve_script(train_script, _caller_dir()), script_args)
        if script_args:
            raise RecipeError("script_args is for train_script recipes; pass train_script= too")
        return client

    def _subprocess_client(self, client: Any, train_script: str | None, script_args: Any, command: str | None,
                           subprocess_timeout: float) -> Any:
        """launch_external_process=True: the site forwards its calls to a worker group (collab-torchrun)."""
        requirement = "collab-torchrun>=0.1"
        self.required_plugins = tuple(dict.fromkeys((*self.required_plugins, requirement)))
        check_required_plugins([requirement])
        from collab_torchrun.client import SubprocessClient

        if not command or not isinstance(command, str):
            raise RecipeError("launch_external_process=True needs command=, e.g. 'torchrun --nproc_per_node=2' or 'python'")
        if not isinstance(subprocess_timeout, (int, float)) or subprocess_timeout <= 0:
            raise RecipeError(f"subprocess_timeout must be a positive number of seconds, got {subprocess_timeout!r}")
        if (train_script is None) == (client is None):
            raise RecipeError("launch_external_process=True needs either train_script= (Client API) or "
                              "client= (a module or object with @collab.publish methods), not both")
        if train_script is not None:
            from .bridge import resolve_script

            return SubprocessClient(command, subprocess_timeout,
                                    train_script=str(resolve_script(train_script, _caller_dir())),
                                    script_args=script_args)
        from .job import describe_client

        return SubprocessClient(command, subprocess_timeout, client=describe_client(client))

    @property
    def train_script(self) -> str | None:
        """The Client API script of this recipe, if it has one."""
        return getattr(self.client, "train_script", None)

    # -- tracking ---------------------------------------------------------------------------------

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

    # -- properties and per-site configuration -------------------------------------------------

    def _props_of(self) -> dict[str, dict[str, Any]]:
        if not hasattr(self, "_props"):  # a subclass that did not call RecipeBase.__init__
            self._props = empty_props()
            self._per_site_set = False
        return self._props

    def set_server_prop(self, name: str, value: Any) -> RecipeBase:
        """Give the server app the property ``name`` (JSON data): ``collab.get_app_prop(name)``."""
        check_prop_name(name)
        self._props_of()["server_props"][name] = check_json_value(value, f"server prop {name!r}")
        return self

    def set_client_prop(self, name: str, value: Any) -> RecipeBase:
        """Give every client app the property ``name`` (JSON data); a site's per-site config
        overrides it on that site."""
        check_prop_name(name)
        self._props_of()["client_props"][name] = check_json_value(value, f"client prop {name!r}")
        return self

    def set_per_site_config(self, config: dict[str, dict[str, Any]]) -> RecipeBase:
        """Give each named client site its own properties, e.g. ``{"site-1": {"data_path": ...}}``:
        on that site they override the client props (``collab.get_app_prop``). Set once per recipe;
        a site the run does not have is reported with a warning when the job starts."""
        props = self._props_of()
        if self._per_site_set:
            raise RecipeError("set_per_site_config was already called for this recipe; pass every site's "
                              "config in one dict")
        checked = check_per_site_config(config)
        if not checked:
            raise RecipeError("set_per_site_config got an empty dict; pass {site name: {name: value}}")
        props["per_site_config"] = checked
        self._per_site_set = True
        return self

    def configured_sites(self) -> list[str]:
        """The site names the per-site config describes (in the order given)."""
        return list(self._props_of()["per_site_config"])

    # -- named objects ----------------------------------------------------------------------------

    def _named_objects(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return (check_object_names(getattr(self, "server_objects", None), "server"),
                check_object_names(getattr(self, "client_objects", None), "client"))

    # -- running ----------------------------------------------------------------------------------

    def build_job(self) -> JobSpec:
        """What an environment runs: the server and client, checked."""
        server, client = self.make_server(), self.make_client()
        server_objects, client_objects = self._named_objects()
        App(server, role="server", objects=server_objects)
        client_app = App(client, role="client", objects=client_objects)
        if not client_app.publish:
            raise RecipeError(
                f"the client ({describe(client)}) publishes no methods; decorate the functions the "
                f"server calls with @collab.publish"
            )
        return JobSpec(
            job_name=self.job_name,
            api=self.api,
            server=server,
            client=client,
            min_clients=self.min_clients,
            required_plugins=self.required_plugins,
            recipe_class=f"{type(self).__module__}:{type(self).__qualname__}",
            tracking=tuple(self.tracking),
            props=copy.deepcopy(self._props_of()),
            server_objects=server_objects,
            client_objects=client_objects,
        )

    def check(self) -> None:
        """Check, before anything starts, that every required plugin is installed."""
        check_required_plugins(self.required_plugins)

    def execute(self, env: Environment) -> Run:
        """Run this recipe in ``env`` (e.g. ``SimEnv(num_clients=5)``) and return the :class:`Run`.

        In a process that a job was deployed to (a PocEnv/ProdEnv server or site importing the job's
        module) this never starts another environment: see :func:`collab_core.loading.stop_if_loading_job`."""
        stop_if_loading_job("runs recipe.execute()")
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

    def __repr__(self) -> str:
        return f"{type(self).__name__}(job_name={self.job_name!r}, min_clients={self.min_clients})"


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


def _caller_dir() -> Path | None:
    """The folder of the module that builds the recipe (scripts are also looked for there)."""
    try:
        file = getattr(_caller_module(), "__file__", None)
    except RecipeError:
        return None
    return Path(file).resolve().parent if file else None


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
    ``collab.clients.execute(fl_model=...)`` and ``collab.clients.stop()``. Add
    ``launch_external_process=True, command="torchrun --nproc_per_node=N"`` to run the client side
    in a worker group per site (collab-torchrun).

    ``server_objects={"metric_receiver": MetricReceiver()}`` and ``client_objects={...}`` add named
    objects to a side: their ``@collab.publish`` methods are called qualified
    (``collab.server.metric_receiver.accept(m)``, ``collab.clients(target="name").method(...)``) or,
    when no other object of that side publishes the name, unqualified; their ``@collab.init`` and
    ``@collab.final`` run after the main object's. Each client site gets its own copies.
    """

    api = "collab"

    def __init__(
        self,
        job_name: str,
        server: Any = None,
        client: Any = None,
        server_objects: dict[str, Any] | None = None,
        client_objects: dict[str, Any] | None = None,
        min_clients: int = 1,
        required_plugins: Iterable[str] = (),
        train_script: str | None = None,
        script_args: str | list[str] = "",
        launch_external_process: bool = False,
        command: str | None = None,
        subprocess_timeout: float = 600.0,
        tracking: Any = None,
    ):
        if server is None and client is None and train_script is None:
            server = client = _caller_module()
        elif server is None:
            raise RecipeError("CollabRecipe needs server= (the object or module with @collab.main), or neither "
                              "server= nor client= to use the calling module's functions")
        elif client is None and train_script is None:
            raise RecipeError("CollabRecipe got a server but no client: pass client= (Collab API) or "
                              "train_script= (Client API), or neither to use the calling module's functions")
        for obj, role in ((server, "server"), (client, "client")):
            if isinstance(obj, type):
                raise RecipeError(
                    f"{role}={obj.__qualname__} is a class; pass an instance, e.g. {role}={obj.__qualname__}()"
                )
        super().__init__(job_name, min_clients, required_plugins, tracking, client=client,
                         train_script=train_script, script_args=script_args,
                         launch_external_process=launch_external_process, command=command,
                         subprocess_timeout=subprocess_timeout)
        self.server = server
        self.server_objects = check_object_names(server_objects, "server")
        self.client_objects = check_object_names(client_objects, "client")
        self.build_job()  # a missing @collab.main or a misplaced decorator fails here, at construction

    def make_server(self) -> Any:
        return self.server

    def __repr__(self) -> str:
        return (
            f"CollabRecipe(job_name={self.job_name!r}, server={describe(self.server)}, "
            f"client={describe(self.client)}, min_clients={self.min_clients})"
        )
