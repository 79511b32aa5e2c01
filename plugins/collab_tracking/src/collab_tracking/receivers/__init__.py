"""Server-side tracking receivers: turn the sites' tracking records into TensorBoard event files,
MLflow runs or W&B runs. See docs/tracking-receivers.md.

``Receiver(workspace, job_name, **options)``; ``receive(records)`` from one thread per receiver;
``close()`` (idempotent); ``Receiver.check(**options)`` raises PluginError for a bad option or a
missing library. The tracking libraries are imported only when a receiver is checked or used.
"""

from __future__ import annotations

from .base import Receiver
from .mlflow import MlflowReceiver
from .tensorboard import TensorBoardReceiver
from .wandb import WandbReceiver

#: The receivers by tool name.
RECEIVERS: dict[str, type[Receiver]] = {
    "tensorboard": TensorBoardReceiver,
    "mlflow": MlflowReceiver,
    "wandb": WandbReceiver,
}

__all__ = ["RECEIVERS", "MlflowReceiver", "Receiver", "TensorBoardReceiver", "WandbReceiver"]
