"""Server: the algorithm, written with the Collab API. It drives Client API scripts with
collab.clients.execute(fl_model=...) and ends them with collab.clients.stop()."""

import logging

from collab_core import FLModel, collab

log = logging.getLogger("fedavg")


def weighted_avg(client_results):
    """Average the sites' FLModel params, weighted by meta['num_samples']."""
    total = sum(m.meta.get("num_samples", 1) for _, m in client_results)
    keys = client_results[0][1].params.keys()
    return {k: sum(m.params[k] * (m.meta.get("num_samples", 1) / total) for _, m in client_results) for k in keys}


class FedAvg:
    def __init__(self, num_rounds=3):
        self.num_rounds = num_rounds

    @collab.main
    def run(self):
        global_weights = None
        history = []
        for round_num in range(self.num_rounds):
            input_model = FLModel(params=global_weights, current_round=round_num + 1, total_rounds=self.num_rounds)
            client_results = collab.clients.execute(fl_model=input_model)  # dispatches to all clients
            global_weights = weighted_avg(client_results)
            loss = sum(m.metrics["loss"] for _, m in client_results) / len(client_results)
            history.append(loss)
            log.info("round %d: mean client loss %.5f", round_num + 1, loss)
        collab.clients.stop()  # flare.is_running() -> False at every site
        return {"weights": global_weights, "losses": history}
