"""Subprocess script of tests/test_optax_contract.py::test_state_is_sharded_like_the_params.

Run as ``python tests/_optax_sharding.py OUT.json`` (the test sets 4 simulated CPU devices):
for every lecopt optimizer, params sharded over a 4-device mesh, it records which state leaves
do not have the sharding of their parameter after ``jax.jit(tx.init)`` and after 3 jitted
updates, and which collectives the optimized HLO of the update contains.
"""

from __future__ import annotations

import json
import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=4").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import lecopt  # noqa: E402

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
OPTIMIZERS = {
    "sgd": lambda: lecopt.sgd(0.1, weight_decay=1e-3),
    "momentum": lambda: lecopt.sgd(lecopt.schedules.cosine_annealing(0.1, 0.01, 5),
                                   momentum=0.9),
    "nesterov": lambda: lecopt.sgd(0.1, momentum=0.9, nesterov=True),
    "adagrad": lambda: lecopt.adagrad(0.1),
    "rmsprop": lambda: lecopt.rmsprop(0.01),
    "adam": lambda: lecopt.adam(0.01),
    "adam_bf16_mu": lambda: lecopt.adam(0.01, mu_dtype=jnp.bfloat16),
    "adamw": lambda: lecopt.adamw(0.01, mask=lambda p: {"w": True, "b": False, "r": True}),
}


def _mismatches(state, params):
    """Paths of state leaves whose sharding is not their parameter's.

    Scalars (step counts) must be replicated; a state that is all constants (plain SGD's
    count) is compiled for one device, which is replicated too.
    """
    by_shape = {p.shape: p.sharding for p in jax.tree.leaves(params)}
    bad = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        want = by_shape.get(leaf.shape) if leaf.ndim else None
        ok = (leaf.sharding.is_fully_replicated if want is None
              else leaf.sharding.is_equivalent_to(want, leaf.ndim))
        if not ok or (leaf.ndim and len(leaf.sharding.device_set) != 4):
            bad.append(f"{jax.tree_util.keystr(path)}: {leaf.sharding}")
    return bad


def main() -> None:
    mesh = Mesh(np.array(jax.devices()), ("d",))
    params = {  # distinct shapes, so each moment's parameter is known by its shape
        "w": jax.device_put(jnp.linspace(-1, 1, 64).reshape(8, 8), NamedSharding(mesh, P("d"))),
        "b": jax.device_put(jnp.linspace(0, 1, 4), NamedSharding(mesh, P("d"))),
        "r": jax.device_put(jnp.ones((2, 3)), NamedSharding(mesh, P())),
    }
    grads = jax.tree.map(lambda p: jnp.cos(p), params)
    out = {"devices": len(jax.devices()), "optimizers": {}}
    for name, make in OPTIMIZERS.items():
        tx = make()
        state = jax.jit(tx.init)(params)
        init_bad = _mismatches(state, params)
        update = jax.jit(tx.update)
        hlo = update.lower(grads, state, params).compile().as_text()
        for _ in range(3):
            _, state = update(grads, state, params)
        out["optimizers"][name] = {
            "init_mismatches": init_bad,
            "update_mismatches": _mismatches(state, params),
            "collectives": [c for c in COLLECTIVES if c in hlo],
            "sharded_leaves": sum(1 for x in jax.tree.leaves(state)
                                  if x.ndim and not x.sharding.is_fully_replicated),
        }
    with open(sys.argv[1], "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
