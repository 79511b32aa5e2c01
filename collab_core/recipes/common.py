"""Pieces the standard recipes share: model files, weighted averages, object descriptions."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .. import wire
from ..errors import RecipeError
from ..fl_model import FLModel

log = logging.getLogger("collab.recipes")

MODEL_FILE = "global_model.collab"


def save_model(model: FLModel, path: Path) -> None:
    """Write ``model`` to ``path`` in the wire format, atomically (a crash never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        wire.write_frame(f, model)
    tmp.replace(path)


def load_model(path: str | Path) -> FLModel:
    """Read a model written by :func:`save_model` (e.g. the ``global_model.collab`` of a run)."""
    with open(path, "rb") as f:
        model = wire.read_frame(f)
    if not isinstance(model, FLModel):
        raise RecipeError(f"{path} does not hold an FLModel (got {type(model).__name__}); pass a "
                          f"{MODEL_FILE} written by a collab recipe")
    return model


def find_file(name: str | None) -> Path | None:
    """A file named in a job config: as given, or in the job's code folder (on sys.path)."""
    if name is None:
        return None
    from ..bridge import resolve_script

    try:
        return resolve_script(name)
    except RecipeError:
        raise RecipeError(f"model file {name!r} not found (looked in the working directory and the job's "
                          f"code folder)") from None


def describe_model(model: Any) -> dict[str, Any] | None:
    """How to rebuild ``model`` (an nn.Module or any object with ``state_dict()``) elsewhere:
    ``{module, class, args}``, from its class and constructor arguments."""
    if model is None:
        return None
    if not callable(getattr(model, "state_dict", None)):
        raise RecipeError(f"model= takes an object with state_dict() (e.g. a torch nn.Module), got {type(model).__name__}")
    from ..job import _describe_object

    desc, _ = _describe_object(model, "model")
    return desc


def model_file(model: Any, name: str = "initial_model.collab") -> str:
    """Save ``model``'s current weights (``state_dict()``) as a model file the recipe carries along
    (and exports with the job): the run starts from exactly these weights."""
    import tempfile

    if not callable(getattr(model, "state_dict", None)):
        raise RecipeError(f"model= takes an object with state_dict() (e.g. a torch nn.Module), got {type(model).__name__}")
    folder = Path(tempfile.mkdtemp(prefix="collab-model-"))
    params = {k: v.detach().cpu().clone() if hasattr(v, "detach") else v for k, v in model.state_dict().items()}
    path = folder / name
    save_model(FLModel(params=params, current_round=0), path)
    return str(path)


def build_model(desc: dict[str, Any] | None) -> Any:
    if desc is None:
        return None
    from ..loading import build_object

    return build_object(desc, "model")


def initial_params(initial_model: str | None) -> tuple[Any, int]:
    """The starting weights and round from a model file (the ``model=`` given to the recipe, or a
    saved global model to resume from), else (None, 0): the clients start from their own."""
    path = find_file(initial_model)
    if path is None:
        return None, 0
    saved = load_model(path)
    if saved.current_round:
        log.info("resuming from %s (round %s)", path, saved.current_round)
    return saved.params, int(saved.current_round or 0)


def weighted_average(results: list[tuple[str, FLModel]], base: Any = None) -> tuple[Any, dict[str, float]]:
    """FedAvg of the sites' params, weighted by ``meta["num_samples"]`` (1 when absent). DIFF
    params are averaged and added to ``base``. Returns (params, mean metrics)."""
    if not results:
        raise RecipeError("no client result to aggregate")
    weights = [float(m.meta.get("num_samples", 1)) for _, m in results]
    total = sum(weights)
    first = results[0][1].params
    if not isinstance(first, dict):
        raise RecipeError(f"params must be a dict of arrays/tensors to average, got {type(first).__name__}")
    for key, value in first.items():
        if not (isinstance(value, (int, float)) or hasattr(value, "shape")):
            raise RecipeError(f"cannot average params[{key!r}] ({type(value).__name__}): params must map names to "
                              f"numbers, arrays or tensors")
    avg = {k: sum(m.params[k] * (w / total) for (_, m), w in zip(results, weights, strict=True)) for k in first}
    if results[0][1].params_type == "DIFF":
        if base is None:
            raise RecipeError("clients sent DIFF params but there is no global model to apply them to")
        avg = {k: base[k] + avg[k] for k in avg}
    metrics: dict[str, float] = {}
    for key in results[0][1].metrics or {}:
        values = [m.metrics[key] for _, m in results if m.metrics and isinstance(m.metrics.get(key), (int, float))]
        if values:
            metrics[key] = sum(values) / len(values)
    return avg, metrics


class ModelFiles:
    """Mixin for servers whose ``initial_model`` file must travel with an exported job."""

    initial_model: str | None

    def collab_export_files(self) -> dict[str, Path]:
        path = find_file(self.initial_model)
        return {} if path is None else {Path(self.initial_model).name: path}

    def collab_export_args(self) -> dict[str, Any]:
        args = dict(vars(self))
        if self.initial_model is not None:
            args["initial_model"] = Path(self.initial_model).name
        return {k: v for k, v in args.items() if not k.startswith("_")}


def check_rounds(num_rounds: Any) -> int:
    if not isinstance(num_rounds, int) or isinstance(num_rounds, bool) or num_rounds < 1:
        raise RecipeError(f"num_rounds must be an integer >= 1, got {num_rounds!r}")
    return num_rounds


def function_ref(fn: Any, what: str) -> str | None:
    """``"module:qualname"`` of a module-level function, as an exported job records it."""
    if fn is None or isinstance(fn, str):
        return fn
    import sys

    from ..errors import ExportError
    from ..job import _module_name

    qualname = getattr(fn, "__qualname__", "")
    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    if module is None or not qualname or "<" in qualname:
        raise ExportError(f"cannot export {what}={fn!r}: it must be a function defined at module level "
                          f"(not a lambda or a nested function), so the job can import it")
    return f"{_module_name(module)}:{qualname}"


def resolve_function(ref: Any, what: str) -> Any:
    """The function of :func:`function_ref` (imported under the job's policy), or ``ref`` itself."""
    if callable(ref):
        return ref
    from ..loading import import_job_module, job_policy

    if not isinstance(ref, str) or ":" not in ref:
        raise RecipeError(f"{what} must be a function or 'module:qualname', got {ref!r}")
    module_name, _, qualname = ref.partition(":")
    policy = job_policy()
    if policy is not None and not policy.allows(module_name):
        raise RecipeError(f"{what} {ref!r}: module {module_name!r} is not among this site's allowed_modules")
    obj: Any = import_job_module(module_name, what)
    for part in qualname.split("."):
        obj = vars(obj).get(part) if hasattr(obj, "__dict__") else None
        if obj is None:
            raise RecipeError(f"{what} {ref!r}: {qualname!r} is not defined in module {module_name!r}")
    if not callable(obj):
        raise RecipeError(f"{what} {ref!r} is a {type(obj).__name__}, not a function")
    return obj


def function_source(fn: Any) -> dict[str, Path]:
    """The user's source file that defines ``fn``, to travel with an exported job ({} for a
    function of an installed package)."""
    if not callable(fn):
        return {}
    import sys

    from ..job import _installed_packages, _module_name

    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    file = getattr(module, "__file__", None)
    if module is None or not file:
        return {}
    name = _module_name(module)
    if name.partition(".")[0] in _installed_packages():
        return {}
    path = Path(file)
    rel = name.replace(".", "/") + ("/__init__.py" if path.name == "__init__.py" else ".py")
    return {rel: path}
