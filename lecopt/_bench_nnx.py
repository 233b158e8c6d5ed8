"""``lecopt bench`` section "nnx": lecopt.nnx.BatchNorm against flax.nnx.BatchNorm.

BatchNorm forward+backward (``nnx.jit`` of ``nnx.value_and_grad`` of ``sum(out * cotangent)``
with respect to the input and the Params, running averages updated) at a dense (256, 1024) and
an NHWC (64, 16, 16, 64) input, against ``nnx.BatchNorm``'s default (fast variance,
``E[z^2] - E[z]^2``). Both sides run the same NNX program; only the layer class differs. The
headline ratio is the geometric mean of lecopt's time over Flax's on the two shapes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lecopt import nnx as lnnx
from lecopt.bench.timing import interleaved

__all__ = ["run"]

BN_SHAPES = [(256, 1024), (64, 16, 16, 64)]
CONTESTANTS = {"lecopt.nnx.BatchNorm": lnnx.BatchNorm,
               "flax.nnx.BatchNorm (default, fast variance)": nnx.BatchNorm}


def _fwd_bwd(cls: type, shape: tuple[int, ...]) -> Callable[[], Any]:
    k1, k2 = jax.random.split(jax.random.key(0))
    x = jax.random.normal(k1, shape, jnp.float32) + 3.0
    ct = jax.random.normal(k2, shape, jnp.float32)
    layer = cls(shape[-1], momentum=0.9, rngs=nnx.Rngs(0))

    @nnx.jit
    def step(layer, x):
        return nnx.value_and_grad(lambda m, x: jnp.sum(m(x) * ct), argnums=(0, 1))(layer, x)

    jax.block_until_ready(step(layer, x))
    return lambda: jax.block_until_ready(step(layer, x))


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Times the contestants; returns one row per (shape, contestant) and one ratio row."""
    rounds, repeats = (5, 1) if quick else (15, 3)
    rows: list[dict[str, Any]] = []
    ratios = []
    for shape in BN_SHAPES:
        res = interleaved({name: _fwd_bwd(cls, shape) for name, cls in CONTESTANTS.items()},
                          rounds=rounds, repeats=repeats)
        for name, r in res.items():
            rows.append({"name": f"NNX BatchNorm fwd+bwd {shape}: {name}",
                         "median_s": r["median"], "min_s": r["min"]})
        lec, flax_ = (res[n]["median"] for n in CONTESTANTS)
        ratios.append(lec / flax_)
        rows.append({"name": f"ratio {shape} lecopt / flax default", "ratio": lec / flax_})
    rows.append({"name": "NNX BatchNorm fwd+bwd lecopt / flax default (geometric mean)",
                 "ratio": math.exp(sum(map(math.log, ratios)) / len(ratios)),
                 "target": "<= 1.0", "device": str(jax.devices()[0]),
                 "rounds": rounds, "repeats": repeats})
    return rows


if __name__ == "__main__":
    import sys

    for row in run(quick="--quick" in sys.argv):
        print(row)
