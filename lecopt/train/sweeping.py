"""``sweep``: one training run per (setting, seed) through one compiled program.

Two strategies: ``"vmap"`` trains all runs of one optimizer structure at once (the optimizers
stacked into one pytree, the compiled epoch vmapped over them); ``"loop"`` trains them in turn
through the very programs :func:`~lecopt.train.fit` runs. :func:`choose_strategy` picks one.
"""

from __future__ import annotations

import functools
import itertools
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from lecopt import distributed, partition
from lecopt._checks import check_int
from lecopt.train import nnx_models, programs
from lecopt.train.fitting import (
    _check_processes_agree,
    check_optimizer,
    epoch_means,
    progress_bar,
)
from lecopt.train.inputs import Setup, check_mode, prepare
from lecopt.train.records import History, SweepRun, stable_repr, to_jsonable

__all__ = ["sweep", "choose_strategy", "flops_per_step", "STRATEGIES",
           "VMAP_FLOPS_THRESHOLD_CPU"]

STRATEGIES = ("auto", "vmap", "loop")

# "auto" in sweep: on a CPU, vmap when one setting's training step costs less than this many
# FLOPs (6 x batch x parameters). Measured on the 2-core bench CPU, 8 settings of MLPs
# 784-J-J-10 at batch 128, time of vmap / time of loop: J=32 (2.0e7 FLOP/step) 0.70, J=64
# (4.2e7) 0.83, J=96 (6.6e7) 0.97, J=128 (9.1e7) 0.98, J=512 (5.1e8) 1.21. Small models leave
# the cores idle between their small matmuls and vmap fills them; a large one already keeps
# both cores busy, and vmap only turns its matmuls into batched ones that XLA:CPU runs less
# efficiently. GPUs and TPUs are left idle by one small model much longer: there vmap is
# always chosen.
VMAP_FLOPS_THRESHOLD_CPU = 1e8


def sweep(
    model: flax.linen.Module,
    make_optimizer: Callable[..., optax.GradientTransformation],
    grid: Mapping[str, Iterable] | Sequence[Mapping[str, Any]],
    data: Any,
    *,
    epochs: int,
    seeds: Sequence[int] = (0,),
    strategy: str = "auto",
    batch_size: int = 128,
    mesh: Mesh | None = None,
    progress: bool = True,
    on_nonfinite: str = "stop",
    eval_batch_size: int = 1024,
) -> list[SweepRun]:
    """Trains one run per (setting, seed), all through one compiled program.

    Each run's history equals that of ``fit(model, make_optimizer(**setting), data,
    epochs=epochs, seed=seed, ...)``: to float32 rounding with ``"vmap"``, bit for bit with
    ``"loop"`` (it runs the very program ``fit`` runs).

    Strategies:

    * ``"vmap"``: the optimizers of all settings (of one structure) are stacked into one
      pytree and the compiled epoch is ``jax.vmap``-ed over them (and over the seeds): every
      step trains all runs at once. Wins where one model leaves the device idle (small
      models; GPUs).
    * ``"loop"``: the runs in turn through the compiled epoch that ``fit`` uses (the
      optimizer is its argument, so no recompilation). Wins on a CPU that one model already
      saturates.
    * ``"auto"``: :func:`choose_strategy`.

    With ``"vmap"``, float values in the grid are passed to ``make_optimizer`` as float32 JAX
    arrays (a Python float and an array of it give optimizers of one structure: only ``None``
    drops a part, e.g. ``lecopt.sgd(lr, momentum=None)`` has no velocity, while
    ``momentum=0.0`` keeps one that stays ``-alpha g``, the same numbers). Settings whose
    optimizers still differ in structure (e.g. ``nesterov`` True and False) are trained in one
    vmapped group per structure.

    With ``on_nonfinite="stop"`` a run that meets a non-finite step freezes at its last good
    state and its ``history.stopped`` says where; the other runs go on (no exception).

    Args:
      model: the Flax module: linen, or an ``nnx.Module`` (every run then starts from its
        weights, so seeds differ only in the data order; the ``SweepRun.state`` variables are
        pure dicts: ``lecopt.train.nnx_models.merge(nnx_models.as_model(model)[0],
        run.state.variables)`` makes a module of them).
      make_optimizer: ``make_optimizer(**setting)`` returns the optimizer of a setting.
      grid: ``{"name": [values], ...}`` (all combinations, in ``itertools.product`` order) or
        a list of setting dicts.
      data: as for ``fit``.
      epochs: epochs per run.
      seeds: seeds; every setting is trained with each.
      strategy: ``"auto"``, ``"vmap"`` or ``"loop"``.
      batch_size, progress, on_nonfinite, eval_batch_size: as for ``fit``.
      mesh: as for ``fit``: every minibatch (of every run) is split along the mesh's first
        axis, the parameters are replicated. A mesh over several processes' devices
        (:mod:`lecopt.distributed`): every process makes this same call (model, grid, seeds,
        strategy, sizes) with the whole data set, the same in each (checked: a difference
        is a ``ValueError`` in every process). The data stays on the host; each process
        gathers and transfers only its devices' slice of every minibatch, in the order
        every process derives from the seed, and all processes return the same runs
        (``state`` as global arrays replicated over the mesh). With ``"vmap"`` and several
        seeds each run's minibatches are gathered separately (each process then holds one
        slice of the epoch per run).

    Returns:
      A list of :class:`~lecopt.train.SweepRun`, settings in grid order, for each setting its
      seeds in order.

    Example:
      >>> from lecopt import nn, optimizers, train
      >>> x = jnp.asarray(np.random.default_rng(0).normal(size=(64, 4)), jnp.float32)
      >>> y = (x[:, 0] > 0).astype(jnp.int32)
      >>> runs = train.sweep(nn.MLP((8,), num_classes=2),
      ...                    lambda momentum: optimizers.sgd(0.1, momentum=momentum),
      ...                    {"momentum": [0.0, 0.9]}, (x, y), epochs=2, batch_size=16,
      ...                    progress=False)
      >>> [(r.setting, r.history.epochs, len(r.history.step_loss)) for r in runs]
      [({'momentum': 0.0}, 2, 8), ({'momentum': 0.9}, 2, 8)]
    """
    epochs = check_int("epochs", epochs)
    check_mode(on_nonfinite)
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r}; must be one of {STRATEGIES}")
    if not callable(make_optimizer):
        raise TypeError("make_optimizer must be callable: setting keywords -> optimizer")
    seeds = [check_int(f"seeds[{i}]", s, minimum=0) for i, s in enumerate(seeds)]
    if not seeds:
        raise ValueError("seeds must not be empty")
    settings = _settings(grid)
    setup = prepare(model, data, batch_size, eval_batch_size, mesh)
    if strategy == "auto":
        strategy = choose_strategy(model, setup.x[:1], setup.batch_size)
    # Group the settings by optimizer structure. "loop" passes the values as given, so each
    # run is exactly the program a separate fit runs; "vmap" needs one structure to stack.
    convert = _as_traced_value if strategy == "vmap" else (lambda v: v)
    groups: dict[partition.Structure, list[tuple[int, list]]] = {}
    for i, setting in enumerate(settings):
        optimizer = check_optimizer(make_optimizer(**{k: convert(v) for k, v in
                                                      setting.items()}))
        hyperparameters, structure = partition.split(optimizer)
        groups.setdefault(structure, []).append((i, hyperparameters))
    if setup.multiprocess:
        _check_processes_agree(
            _fingerprint(setup, groups, settings), data, call="sweep", seeds=seeds,
            epochs=epochs, strategy=strategy, on_nonfinite=on_nonfinite,
            eval_batch_size=setup.eval_batch_size)
    train_group = _train_vmapped if strategy == "vmap" else _train_in_turn
    results: dict[tuple[int, int], SweepRun] = {}
    total = epochs * (len(groups) if strategy == "vmap" else len(settings) * len(seeds))
    bar = progress_bar(progress and distributed.is_main_process(), total, 0,
                       f"sweep ({strategy})")
    try:
        for structure, members in groups.items():
            compiled = programs.train_programs(setup.program_key(on_nonfinite, structure))
            for (i, seed), (state, history) in train_group(setup, compiled, members, seeds,
                                                           epochs, bar).items():
                results[(i, seed)] = SweepRun(dict(settings[i]), seed, state, history)
    finally:
        bar.close()
    return [results[(i, s)] for i in range(len(settings)) for s in seeds]


def _fingerprint(setup: Setup, groups: dict, settings: list[dict]) -> dict[str, Any]:
    """What every process of a sweep must agree on, besides the data and the settings."""
    fields = {"model": stable_repr(setup.model), "batch_size": setup.batch_size,
              "settings": to_jsonable(settings),
              "optimizers": [[stable_repr(structure.treedef)
                              + stable_repr(list(structure.static_leaves)),
                              [[to_jsonable(np.asarray(h)) for h in hyperparameters]
                               for _, hyperparameters in members]]
                             for structure, members in groups.items()]}
    if setup.initial is not None:  # an nnx.Module: its weights start every run
        fields["initial_variables"] = distributed.content_digest(
            *jax.tree.leaves(setup.initial)).hex()
    return fields


def _settings(grid: Mapping[str, Iterable] | Sequence[Mapping[str, Any]]) -> list[dict]:
    if isinstance(grid, Mapping):
        for k, values in grid.items():
            if isinstance(values, str | bytes) or not isinstance(values, Iterable):
                raise TypeError(f"grid[{k!r}] must be a list of values; got {values!r}")
        keys = list(grid)
        settings = [dict(zip(keys, values))
                    for values in itertools.product(*(list(grid[k]) for k in keys))]
    elif isinstance(grid, Sequence) and all(isinstance(s, Mapping) for s in grid):
        settings = [dict(s) for s in grid]
    else:
        raise TypeError("grid must be a dict {name: [values]} (all combinations) or a list of "
                        f"dicts (explicit settings); got {type(grid).__name__}")
    if not settings:
        raise ValueError("grid holds no setting")
    return settings


def _as_traced_value(v: Any) -> Any:
    # Floats become float32 arrays, the dtype every setting's numbers are stacked in (the
    # structure does not depend on it: only None drops a part); ints, bools, strings and
    # callables stay as given (they may choose structure).
    if isinstance(v, float | np.floating):
        return jnp.asarray(v, jnp.float32)
    return v


def _train_in_turn(setup: Setup, compiled: programs.TrainPrograms, members: list,
                   seeds: list[int], epochs: int, bar: Any) -> dict:
    """Every run in turn through fit's compiled programs; one host sync per epoch."""
    steps = setup.steps
    evaluate_test = setup.eval_programs().evaluate
    buffer = jnp.zeros([steps], jnp.float32)
    no_bad_step = jnp.asarray(-1, jnp.int32)
    if setup.multiprocess:  # placed as fit places them: the very same program, bit for bit
        buffer, no_bad_step = setup.replicate((buffer, no_bad_step))
    out = {}
    for seed in seeds:
        init_key, data_key = setup.replicate(programs.seed_keys(seed))
        for i, hyperparameters in members:
            if setup.multiprocess:
                hyperparameters = setup.replicate(hyperparameters)
            started = time.perf_counter()
            state = compiled.init(init_key, setup.example, hyperparameters, *setup.init_args)
            history = History(steps_per_epoch=steps, batch_size=setup.batch_size)
            for epoch in range(epochs):
                state, losses, errors, skipped, bad_step = compiled.train_steps(
                    state, hyperparameters, *setup.epoch_data(data_key, epoch), 0, steps,
                    no_bad_step, buffer, buffer)
                test = None if setup.x_test is None else evaluate_test(
                    state.variables, setup.x_test, setup.y_test)
                rate = compiled.learning_rate(hyperparameters, state.opt_state)
                stopped = _record_epoch(history, epoch, np.asarray(losses), np.asarray(errors),
                                        int(skipped), int(bad_step), test, float(rate),
                                        started)
                bar.update(1)
                if stopped:
                    bar.update(epochs - epoch - 1)
                    break
            out[(i, seed)] = (state, history)
    return out


def _train_vmapped(setup: Setup, compiled: programs.TrainPrograms, members: list,
                   seeds: list[int], epochs: int, bar: Any) -> dict:
    """All runs of one structure at once: vmap over the stacked optimizers (and seeds)."""
    steps = setup.steps
    evaluate_all = setup.eval_programs().evaluate_vmapped
    runs = [(i, seed) for seed in seeds for i, _ in members]
    hyperparameters_of = dict(members)
    stacked = [jnp.stack([jnp.asarray(hyperparameters_of[i][k]) for i, _ in runs])
               for k in range(len(members[0][1]))]
    keys = {seed: programs.seed_keys(seed) for seed in seeds}
    init_keys = jnp.stack([keys[seed][0] for _, seed in runs])
    data_keys = [keys[seed][1] for _, seed in runs]
    stacked, init_keys, data_keys, bad_steps, buffer = setup.replicate(
        (stacked, init_keys, data_keys, jnp.full([len(runs)], -1, jnp.int32),
         jnp.zeros([len(runs), steps], jnp.float32)))
    started = time.perf_counter()
    if setup.initial is None:
        state = compiled.init_vmapped(init_keys, setup.example, stacked)
    else:  # an nnx.Module: every run starts from its weights
        state = compiled.init_vmapped_from_variables(init_keys, setup.example, stacked,
                                                     setup.initial)
    histories = [History(steps_per_epoch=steps, batch_size=setup.batch_size) for _ in runs]
    active = [True] * len(runs)
    for epoch in range(epochs):
        if len(seeds) == 1:
            batches = setup.epoch_data(data_keys[0], epoch)
            train_steps = compiled.train_steps_vmapped_shared_order
        else:
            batches = setup.epochs_data(data_keys, epoch)
            train_steps = compiled.train_steps_vmapped
        state, losses, errors, skipped, bad_steps = train_steps(
            state, stacked, *batches, 0, steps, bad_steps, buffer, buffer)
        test = None
        if setup.x_test is not None:
            test = [np.asarray(v) for v in evaluate_all(state.variables, setup.x_test,
                                                        setup.y_test)]
        rates = np.asarray(compiled.learning_rate_vmapped(stacked, state.opt_state))
        losses, errors = np.asarray(losses), np.asarray(errors)
        skipped, bad_host = np.asarray(skipped), np.asarray(bad_steps)
        for r in range(len(runs)):
            if active[r]:
                active[r] = not _record_epoch(
                    histories[r], epoch, losses[r], errors[r], int(skipped[r]),
                    int(bad_host[r]), None if test is None else (test[0][r], test[1][r]),
                    float(rates[r]), started)
        bar.update(1)
        if not any(active):
            bar.update(epochs - epoch - 1)
            break
    states = programs.unstack(state, len(runs))
    return {run: (states[r], histories[r]) for r, run in enumerate(runs)}


def _record_epoch(history: History, epoch: int, losses: np.ndarray, errors: np.ndarray,
                  skipped: int, bad_step: int, test: Any, learning_rate: float,
                  started: float) -> bool:
    """Appends one epoch of one run to its history; True if the run stopped in it."""
    steps = history.steps_per_epoch
    end = steps if bad_step < 0 else bad_step + 1
    history.step_loss += losses[:end].astype(float).tolist()
    history.step_error += errors[:end].astype(float).tolist()
    if bad_step >= 0:
        history.stopped = {"epoch": epoch, "step": bad_step,
                           "global_step": epoch * steps + bad_step}
        return True
    train_loss, train_error = epoch_means(losses, errors)
    history.train_loss.append(train_loss)
    history.train_error.append(train_error)
    history.skipped.append(skipped)
    history.learning_rate.append(learning_rate)
    if test is not None:
        history.test_loss.append(float(test[0]))
        history.test_error.append(float(test[1]))
    history.wall_time.append(time.perf_counter() - started)
    return False


def choose_strategy(model: flax.linen.Module, x_example: Any, batch_size: int,
                    backend: str | None = None) -> str:
    """The ``strategy="auto"`` rule of :func:`sweep`: ``"vmap"`` or ``"loop"``.

    ``"vmap"`` on a GPU/TPU; on a CPU, ``"vmap"`` when one setting's training step costs less
    than ``VMAP_FLOPS_THRESHOLD_CPU`` = 1e8 FLOPs (:func:`flops_per_step`, i.e. 6 x batch x
    parameters), else ``"loop"``: small models leave the machine idle between their small
    matmuls and gain from doing all settings at once; large ones already keep every core busy.

    Args:
      model: the Flax module.
      x_example: example inputs (the shape of one is used).
      batch_size: the minibatch size.
      backend: ``jax.default_backend()`` if None.

    Returns:
      ``"vmap"`` or ``"loop"``.

    Example:
      >>> from lecopt import nn
      >>> x = jnp.zeros((1, 784))
      >>> [choose_strategy(nn.MLP(widths), x, 128, backend="cpu")
      ...  for widths in [(32, 32), (512, 512)]]
      ['vmap', 'loop']
    """
    backend = backend or jax.default_backend()
    if backend != "cpu":
        return "vmap"
    small = flops_per_step(model, x_example, batch_size) < VMAP_FLOPS_THRESHOLD_CPU
    return "vmap" if small else "loop"


def flops_per_step(model: Any, x_example: Any, batch_size: int) -> float:
    """Estimated FLOPs of one training step: ``6 * batch_size * (number of parameters)``.

    Forward, a dense layer costs ``2 * in * out`` FLOPs per sample; the backward pass twice
    that. So the estimate is exact (up to biases and elementwise work) for MLPs and a lower
    bound for models that reuse weights (convolutions).

    Args:
      model: the Flax module.
      x_example: one or more inputs (only the shape of ``x_example[:1]`` is used).
      batch_size: the minibatch size.

    Returns:
      The FLOPs per step as a float.

    Example:
      >>> from lecopt import nn
      >>> flops = flops_per_step(nn.MLP((32,), num_classes=10), jnp.zeros((1, 784)), 128)
      >>> flops == 6 * 128 * (784 * 32 + 32 + 32 * 10 + 10)  # weights and biases
      True
    """
    x1 = jnp.asarray(x_example[:1])
    model = nnx_models.as_model(model)[0]
    return 6.0 * batch_size * _num_params(programs.ByValue(model), tuple(x1.shape[1:]),
                                          x1.dtype)


@functools.lru_cache(maxsize=64)
def _num_params(key: programs.ByValue, example_shape: tuple, dtype: Any) -> int:
    model = key.value
    shapes = jax.eval_shape(
        functools.partial(programs.init_variables, model, programs.accepts_train(model)),
        jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1,) + example_shape, dtype))
    return sum(math.prod(s.shape) for s in jax.tree.leaves(shapes["params"]))
