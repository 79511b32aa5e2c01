"""Filters for model updates, written once and added to any recipe (see fedavg_filters.py).

- ``ClipAndNoise`` runs on each client: its input call filter remembers the global weights a
  ``train`` call brought, its output result filter clips the site's update (new - global) to an
  L2 norm and adds Gaussian noise before the result leaves the site.
- ``Quantize`` shrinks what crosses the wire: on a client (output) it turns the float64 weights
  into uint8 codes plus an offset and a step; on the server (input) it turns them back. One class,
  both halves: ``@collab.out_result_filter`` and ``@collab.in_result_filter``.
- ``Inspect`` runs on the server and only looks: it prints what each site sent.
"""

from __future__ import annotations

import zlib

import numpy as np

from collab_core import collab


class ClipAndNoise:
    def __init__(self, clip_norm: float = 1.0, noise: float = 0.0, seed: int = 0):
        self.clip_norm = clip_norm
        self.noise = noise
        self.seed = seed
        self.rng = None

    @collab.in_call_filter
    def remember_global(self, kwargs, context):
        context.props["global_w"] = np.array(kwargs["w"], copy=True)  # the call's own props on this site
        return kwargs

    @collab.out_result_filter
    def clip_update(self, result, context):
        if self.rng is None:  # per site: each site has its own copy of this filter, and its own seed
            self.rng = np.random.default_rng([self.seed, zlib.crc32(context.site.encode())])
        w, n = result
        base = context.props["global_w"]
        update = w - base
        norm = float(np.linalg.norm(update))
        if norm > self.clip_norm:
            update = update * (self.clip_norm / norm)
        if self.noise:
            update = update + self.rng.normal(0.0, self.noise * self.clip_norm, size=update.shape)
        print(f"{context.site}: update norm {norm:.3f} -> {np.linalg.norm(update):.3f}")
        return base + update, n


class Quantize:
    def __init__(self, bits: int = 8):
        self.bits = bits

    @collab.out_result_filter
    def encode(self, result):
        w, n = result
        lo, hi = float(w.min()), float(w.max())
        step = (hi - lo) / (2 ** self.bits - 1) or 1.0
        codes = np.round((w - lo) / step).astype(np.uint8)
        return {"codes": codes, "lo": lo, "step": step}, n  # a different type crosses the wire

    @collab.in_result_filter
    def decode(self, result):
        packed, n = result
        return packed["codes"].astype(np.float64) * packed["step"] + packed["lo"], n


class Inspect:
    @collab.result_filter
    def show(self, result, context):
        value, n = result
        if isinstance(value, dict):
            print(f"server received from {context.peer}: {value['codes'].nbytes} bytes of "
                  f"{value['codes'].dtype} codes for {n} samples")
        else:
            print(f"server received from {context.peer}: {value.nbytes} bytes of {value.dtype}")
        return result
