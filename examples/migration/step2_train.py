"""Step 2, client side -- the same training as Trainer.train, as a Client API script. It no longer
imports anything of the server's algorithm: it receives an FLModel and sends one back."""

from common import SimpleModel, local_train, site_data

import collab_core.client as flare
from collab_core import FLModel

flare.init()
x, y = site_data(flare.get_site_name())
while flare.is_running():
    input_model = flare.receive()
    if input_model is None:
        break
    model = SimpleModel()
    if input_model.params:
        model.load_state_dict(input_model.params)
    loss = local_train(model, x, y)
    flare.send(FLModel(params=model.state_dict(), metrics={"loss": loss}, meta={"num_samples": len(x)}))
