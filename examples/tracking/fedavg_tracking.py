"""FedAvg that logs to TensorBoard, MLflow and W&B at once: per-site training loss from the
clients (three APIs you already know), and the aggregated metrics of each round from the server.

    python examples/tracking/fedavg_tracking.py            # SimEnv
    python examples/tracking/fedavg_tracking.py poc        # PocEnv: real processes

Needs: pip install collab-core collab-sim 'collab-tracking[all]' torch. W&B runs offline unless
you set WANDB_MODE=online (and are logged in); MLflow writes to $MLFLOW_TRACKING_URI if set, else
to one store shared by every run (ROOT = $COLLAB_WORKSPACE_ROOT, default <tempdir>/collab), so
runs of this example sit side by side in one MLflow UI. Then look at the results (the viewers are
separate installs: the extras only bring what writes the files):

    pip install tensorboard  &&  tensorboard --logdir WORKSPACE/tensorboard   # a run per site
    pip install mlflow  &&  mlflow ui --backend-store-uri sqlite:///ROOT/mlflow/mlflow.db
    wandb sync WORKSPACE/wandb/offline-run-*               # to upload the offline runs
"""

import os
import sys
import zlib

import torch
import torch.nn as nn

from collab_core import CollabRecipe, collab
from collab_tracking import SummaryWriter, mlflow, wandb

TRUE_W = torch.tensor([[0.5, -1.0, 2.0, 1.0, 0.0, -0.5, 1.5, -2.0, 0.25, 1.0]])


class Trainer:
    def __init__(self, epochs=10):
        self.epochs = epochs

    @collab.publish
    def train(self, weights, round_num):
        model = nn.Linear(10, 1)
        model.load_state_dict(weights)
        g = torch.Generator().manual_seed(zlib.crc32(collab.site_name.encode()))
        x = torch.randn(64, 10, generator=g)
        y = x @ TRUE_W.T
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        writer = SummaryWriter()
        for epoch in range(self.epochs):
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            writer.add_scalar("train/loss", loss.item(), global_step=round_num * self.epochs + epoch)
        # one step axis for every tool: W&B keeps a single, increasing step per run
        step = (round_num + 1) * self.epochs - 1
        mlflow.log_metric("final_loss", loss.item(), step=step)
        wandb.log({"lr": 0.1, "samples": len(x)}, step=step)
        return model.state_dict(), len(x), loss.item()


class FedAvg:
    def __init__(self, num_rounds=4):
        self.num_rounds = num_rounds

    @collab.main
    def run(self):
        torch.manual_seed(0)
        weights = nn.Linear(10, 1).state_dict()
        mlflow.log_params({"num_rounds": self.num_rounds, "clients": len(collab.clients)})
        for r in range(self.num_rounds):
            results = collab.clients.train(weights, r)
            total = sum(n for _, (_, n, _) in results)
            weights = {k: sum(w[k] * (n / total) for _, (w, n, _) in results) for k in weights}
            mean_loss = sum(loss for _, (_, _, loss) in results) / len(results)
            mlflow.log_metric("round/mean_loss", mean_loss, step=r)
            print(f"round {r + 1}: mean client loss {mean_loss:.5f}")
        return weights


if __name__ == "__main__":
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    recipe = CollabRecipe(job_name="fedavg_tracking", server=FedAvg(), client=Trainer(), min_clients=3,
                          tracking=["tensorboard", "mlflow", "wandb"])
    if sys.argv[1:] == ["poc"]:
        from collab_tcp import PocEnv

        env = PocEnv(num_clients=3)
    else:
        from collab_sim import SimEnv

        env = SimEnv(num_clients=3)
    run = recipe.execute(env)
    print(f"status: {run.status}")
    if run.status != "finished":
        print(run.error)
        raise SystemExit(1)
    server_ws = run.workspace / "server"
    if not (server_ws / "tensorboard").exists():  # PocEnv: the server keeps one folder per job
        server_ws = next((run.workspace / "server" / "jobs").glob("*/workspace/server"))
    for name, report in run.tracking.items():
        print(f"{name}: {report['written']} records written")
    from collab_tracking.receivers import mlflow as mlflow_receiver
    from collab_tracking.receivers import tensorboard as tensorboard_receiver
    from collab_tracking.receivers import wandb as wandb_receiver

    print("view the results (each line installs its viewer, then starts it):")
    print(tensorboard_receiver.ui_command(server_ws / "tensorboard"))
    print(mlflow_receiver.ui_command())  # the store every run of this project shares
    print(wandb_receiver.sync_command(server_ws))
