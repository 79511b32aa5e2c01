"""Server: identical to the single-GPU Client API server -- the server is GPU-agnostic."""

import logging

from collab_core import FLModel, collab

log = logging.getLogger("fedavg")


class FedAvg:
    def __init__(self, num_rounds=3):
        self.num_rounds = num_rounds

    @collab.main
    def run(self):
        global_weights = None
        losses = []
        for round_num in range(self.num_rounds):
            input_model = FLModel(params=global_weights, current_round=round_num + 1, total_rounds=self.num_rounds)
            results = collab.clients.execute(fl_model=input_model)
            total = sum(m.meta["num_samples"] for _, m in results)
            keys = results[0][1].params.keys()
            global_weights = {k: sum(m.params[k] * (m.meta["num_samples"] / total) for _, m in results) for k in keys}
            losses.append(sum(m.metrics["loss"] for _, m in results) / len(results))
            log.info("round %d: mean loss %.5f (world sizes %s)", round_num + 1, losses[-1],
                     [m.meta["world_size"] for _, m in results])
        collab.clients.stop()
        return {"weights": global_weights, "losses": losses}
