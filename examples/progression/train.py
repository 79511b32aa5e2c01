"""Step 2 on: the client's training as a standalone Client API script."""

import torch
from common import SimpleModel, local_train, site_data

import collab_core.client as flare
from collab_core import FLModel

flare.init()
x, y = site_data(flare.get_site_name())
while flare.is_running():
    task = flare.receive()
    if task is None:
        break
    torch.manual_seed(0)
    model = SimpleModel()
    if task.params:
        model.load_state_dict(task.params)
    loss = local_train(model, x, y)
    flare.send(FLModel(params=model.state_dict(), metrics={"loss": loss}, meta={"num_samples": len(x)}))
