"""Nothing dropped: every record from every site, in every mode (SimEnv, a Client API script,
PocEnv processes, torchrun workers), is found in the TensorBoard files, the MLflow store and the
W&B runs the server wrote."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from collab_core import CollabRecipe, FLModel, PluginError, UnknownComponentError, collab

from .test_receivers import tb_contents, wandb_runs

pytest.importorskip("tensorboardX")
pytest.importorskip("mlflow")
pytest.importorskip("wandb")

ROUNDS = 3
TRACKERS = ["tensorboard", "mlflow", "wandb"]

JOB = """
    import os
    from collab_core import collab
    from collab_tracking import SummaryWriter, mlflow, wandb

    def log_round(r):
        writer = SummaryWriter()
        writer.add_scalar("t/loss", 1.0 / (r + 1), global_step=r)
        mlflow.log_metric("acc", 0.5 + r / 10, step=r)
        wandb.log({"lr": 0.1 * (r + 1)}, step=r)

    @collab.publish
    def train(r):
        log_round(r)
        return os.getpid()

    @collab.init
    def start():
        mlflow.log_param("site", collab.site_name)
"""

SCRIPT = """
    import collab_core.client as flare
    from collab_core import FLModel
    from collab_tracking import SummaryWriter, mlflow, wandb

    flare.init()
    writer = SummaryWriter()
    while flare.is_running():
        task = flare.receive()
        if task is None:
            break
        r = task.current_round
        writer.add_scalar("t/loss", 1.0 / (r + 1), global_step=r)
        mlflow.log_metric("acc", 0.5 + r / 10, step=r)
        flare.log("lr", 0.1 * (r + 1), step=r)
        flare.send(FLModel(params={}))
"""


class Rounds:
    def __init__(self, rounds=ROUNDS, client_api=False):
        self.rounds = rounds
        self.client_api = client_api

    @collab.main
    def run(self):
        from collab_tracking import mlflow

        for r in range(self.rounds):
            if self.client_api:
                collab.clients.execute(fl_model=FLModel(current_round=r))
            else:
                collab.clients.train(r)
            mlflow.log_metric("round", r, step=r)
        if self.client_api:
            collab.clients.stop()
        return "done"


@pytest.fixture
def offline(tmp_path, monkeypatch):
    home = tmp_path / "home"
    for var, value in {"HOME": home, "WANDB_DIR": home / "wandb", "WANDB_CACHE_DIR": home / "cache",
                       "WANDB_CONFIG_DIR": home / "config", "WANDB_DATA_DIR": home / "data",
                       "WANDB_MODE": "offline", "WANDB_SILENT": "true",
                       "COLLAB_WORKSPACE_ROOT": tmp_path / "ws"}.items():
        monkeypatch.setenv(var, str(value))
    return tmp_path


@pytest.fixture
def job_module(tmp_path):
    path = tmp_path / "tracked_job.py"
    path.write_text(textwrap.dedent(JOB))
    spec = importlib.util.spec_from_file_location("tracked_job", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["tracked_job"] = module
    spec.loader.exec_module(module)
    sys.path.insert(0, str(tmp_path))
    yield module
    sys.path.remove(str(tmp_path))
    sys.modules.pop("tracked_job", None)


def check_everything(root: Path, sites: list[str], rounds: int = ROUNDS) -> None:
    """root: the server-side folder the receivers wrote into."""
    expected = {"t/loss": rounds, "acc": rounds, "lr": rounds}
    # TensorBoard: one run folder per site, every scalar of every tool
    for site in sites:
        scalars = tb_contents(root / "tensorboard" / site)[0]
        for tag, count in expected.items():
            assert [s for s, _ in scalars[tag]] == list(range(count)), (site, tag, scalars.get(tag))
    server_scalars = tb_contents(root / "tensorboard" / "server")[0]
    assert [s for s, _ in server_scalars["round"]] == list(range(rounds))
    # MLflow: a child run per site with complete histories
    from mlflow import MlflowClient

    # the default store is shared by every run: <workspaces root>/mlflow/mlflow.db, none per run
    assert not (root / "mlflow.db").exists()
    store = Path(os.environ["COLLAB_WORKSPACE_ROOT"]) / "mlflow" / "mlflow.db"
    client = MlflowClient(f"sqlite:///{store.as_posix()}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    by_site = {r.data.tags.get("collab.site"): r for r in runs if r.data.tags.get("collab.site")}
    assert set(sites) | {"server"} <= set(by_site)
    for site in sites:
        for key, count in expected.items():
            history = client.get_metric_history(by_site[site].info.run_id, key)
            assert sorted(m.step for m in history) == list(range(count)), (site, key)
    # W&B: one offline run per site, every value in its history
    wb = wandb_runs(root)
    for site in sites:
        _, _, _, rows = wb[site]
        for key, count in expected.items():
            assert sum(1 for row in rows if (key,) in row) == count, (site, key, rows)


def test_simenv_publish_client_and_server_logging(offline, job_module):
    from collab_sim import SimEnv

    run = CollabRecipe(job_name="trk", server=Rounds(), client=job_module, min_clients=3,
                       tracking=TRACKERS).execute(SimEnv(num_clients=3))
    assert run.status == "finished", run.error
    per_site = ROUNDS * 3 + 1  # 3 records a round, 1 param
    total = 3 * per_site + ROUNDS
    assert run.tracking == {t: {"written": total, "skipped": 0, "failed": None} for t in TRACKERS}
    check_everything(run.workspace / "server", ["site-1", "site-2", "site-3"])


def test_client_api_script_in_process(offline, tmp_path):
    from collab_sim import SimEnv

    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(SCRIPT))
    run = CollabRecipe(job_name="trk", server=Rounds(client_api=True), train_script=str(script), min_clients=2,
                       tracking=TRACKERS).execute(SimEnv(num_clients=2))
    assert run.status == "finished", run.error
    check_everything(run.workspace / "server", ["site-1", "site-2"])


def test_poc_processes(offline, job_module):
    from collab_tcp import PocEnv

    run = CollabRecipe(job_name="trk", server=Rounds(), client=job_module, min_clients=2,
                       tracking=TRACKERS).execute(PocEnv(num_clients=2))
    assert run.status == "finished", run.error
    (root,) = (run.workspace / "server" / "jobs").glob("*/workspace/server")
    check_everything(root, ["site-1", "site-2"])
    assert run.tracking["mlflow"]["written"] == 2 * (ROUNDS * 3 + 1) + ROUNDS


def test_torchrun_workers_only_rank_0_logs(offline, tmp_path):
    pytest.importorskip("torch")
    from collab_sim import SimEnv

    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(SCRIPT))
    run = CollabRecipe(job_name="trk", server=Rounds(client_api=True), train_script=str(script), min_clients=1,
                       launch_external_process=True, command="torchrun --nproc_per_node=2",
                       subprocess_timeout=120, tracking=TRACKERS).execute(SimEnv(num_clients=1))
    assert run.status == "finished", run.error
    check_everything(run.workspace / "server", ["site-1"])  # exactly ROUNDS each: rank 1 did not log
    assert run.tracking["tensorboard"]["written"] == 3 * ROUNDS + ROUNDS


def test_a_failing_receiver_is_reported_once_and_does_not_stop_the_others(offline, job_module, caplog, monkeypatch):
    import socket

    from collab_sim import SimEnv

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with socket.socket() as s:  # a port nothing listens on: an unreachable MLflow server
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    caplog.set_level(logging.ERROR, logger="collab.tracking")
    recipe = CollabRecipe(job_name="trk", server=Rounds(), client=job_module, min_clients=2, tracking=["tensorboard"])
    recipe.add_tracking("mlflow", tracking_uri=f"http://127.0.0.1:{port}")
    t0 = time.monotonic()
    run = recipe.execute(SimEnv(num_clients=2))
    assert run.status == "finished", run.error
    assert time.monotonic() - t0 < 60
    assert run.tracking["tensorboard"]["failed"] is None
    assert run.tracking["tensorboard"]["written"] == 2 * (ROUNDS * 3 + 1) + ROUNDS
    failures = [r for r in caplog.records if "mlflow" in r.getMessage()]
    assert failures, caplog.text
    assert len([r for r in failures if "switched off" in r.getMessage() or "could not start" in r.getMessage()]) == 1


def test_unknown_or_uninstallable_trackers_fail_at_once(job_module, monkeypatch):
    with pytest.raises(UnknownComponentError, match="no tracker named 'neptune'"):
        CollabRecipe(job_name="trk", server=Rounds(), client=job_module, tracking=["neptune"])
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(PluginError, match=r"pip install 'collab-tracking\[mlflow\]'"):
        CollabRecipe(job_name="trk", server=Rounds(), client=job_module, tracking=["mlflow"])
    recipe = CollabRecipe(job_name="trk", server=Rounds(), client=job_module, tracking=["tensorboard"])
    assert "collab-tracking>=0.1" in recipe.required_plugins
