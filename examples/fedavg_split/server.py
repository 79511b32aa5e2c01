"""Server side: the algorithm."""

from collab_core import collab

NUM_ROUNDS = 5


def weighted_avg(client_results):
    total = sum(n for _, (_, n) in client_results)
    keys = client_results[0][1][0].keys()
    return {k: sum(w[k] * (n / total) for _, (w, n) in client_results) for k in keys}


@collab.main
def fed_avg():
    global_weights = None
    for r in range(NUM_ROUNDS):
        client_results = collab.clients.train(global_weights)
        global_weights = weighted_avg(client_results)
        print(f"round {r + 1}: aggregated {len(client_results)} client models")
    return global_weights
