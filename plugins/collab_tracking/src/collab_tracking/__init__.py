"""collab-tracking: TensorBoard, MLflow and W&B from any client, in every mode, nothing dropped.

In client code (a ``@collab.publish`` method, a Client API script, a torchrun worker) and in the
server's ``@collab.main``, use the calls you know::

    from collab_tracking import SummaryWriter, mlflow, wandb

    writer = SummaryWriter()
    writer.add_scalar("train/loss", loss, global_step=step)
    mlflow.log_metric("accuracy", acc, step=epoch)
    wandb.log({"loss": loss}, step=step)

and choose the receivers on the recipe: ``CollabRecipe(..., tracking=["tensorboard", "mlflow",
"wandb"])`` or ``recipe.add_tracking("mlflow", tracking_uri=...)``. The server writes real
TensorBoard event files, an MLflow run and a W&B run (offline unless asked) in the job's workspace.
"""

from .writers import SummaryWriter, log_all_ranks, mlflow, wandb

__version__ = "0.1.0"

__all__ = ["SummaryWriter", "log_all_ranks", "mlflow", "wandb"]
