"""Training Flax models with lecopt optimizers: ``fit``, ``evaluate``, ``sweep``.

``fit(model, optimizer, data, epochs=...)`` trains any ``flax.linen`` classifier, with or
without a ``batch_stats`` collection (BatchNorm), or any ``flax.nnx.Module`` with ``nnx.Param``
and optionally ``nnx.BatchStat`` variables, on data held on the device. Each epoch is
shuffled with a JAX key and runs as one compiled loop over its minibatches: no Python loop
per step, no retracing between epochs or between ``fit`` calls.

How it is built, and why:

* **The optimizer is an argument of the compiled program.** A lecopt optimizer is a pytree of
  its hyperparameters (:mod:`lecopt.transforms`), so the program is traced once per model,
  batch size and optimizer *structure*; a second ``fit`` with another learning rate, momentum
  or schedule parameter runs the same executable. (An optax closure such as ``optax.adam(1e-3)``
  also works, but its numbers are baked into the closure: each new one compiles.)
* **One loop body for every step.** The epoch is a ``lax.while_loop`` (a scan whose start and
  stop are traced values) that gathers minibatch ``i`` from the device-resident data, takes a
  gradient step and writes the step's loss into a buffer. Running steps ``[0, S)`` at once or
  in pieces (``[0, N), [N, 2N), ...``, as checkpointing does) executes the very same compiled
  body on the same values, so a run resumed from a checkpoint is bit-for-bit equal to an
  uninterrupted one by construction. (Scans of different static lengths are different
  programs, and XLA may fuse a length-1 or unrolled loop differently.)
* **Data order.** Epoch ``e`` uses ``jax.random.permutation(fold_in(data_key, e), N)``; the
  last incomplete minibatch is dropped (every step sees exactly ``batch_size`` examples, so
  BatchNorm statistics and the step size do not depend on the position in the epoch), so an
  epoch has ``S = N // batch_size`` steps. :func:`batch_order` returns this order.
* **Non-finite values.** Each step computes ``finite = isfinite(loss) & all(isfinite(grads))``
  and keeps the old state where it is false (a ``lax.cond`` whose taken branch computes the
  optimizer's update, writing the new state in place). ``"skip"`` counts such steps and goes
  on. ``"stop"`` freezes the state from the first such step to the end of the running chunk,
  and :func:`fit` then raises :class:`NonFiniteError` naming the epoch and step, with the
  last good state attached.
* **NNX modules.** An ``nnx.Module`` is split (``nnx.split(module, nnx.Param,
  nnx.BatchStat)``) into its graph, a hashable static key on which the programs are cached (a
  second module of one structure compiles nothing), and its variables as pure dicts, passed to
  the programs as traced arguments (never baked in as constants); the program merges them into
  a fresh module, switched by ``train()``/``eval()``, at every call. ``fit`` returns a new module
  of the trained variables; the one given is not modified.
* **Seam.** :func:`init_state` returns the state ``fit`` starts from for a seed,
  :func:`loss_function` the loss it minimises, :func:`batch_order` its minibatches, and
  ``fit(..., callback=, callback_steps=)`` hands out the state at chosen steps: what an
  experiment needs to observe training without re-implementing it.
* **History.** The per-step training loss and error are measured on each minibatch in
  training mode before its update (no extra pass); an epoch's training loss/error are their
  means (over the steps not skipped). Test loss and error are evaluated after each epoch in
  prediction mode (``train=False``), in batches of ``eval_batch_size``, in one compiled scan.
* **Checkpoints** (``checkpoint_dir=``): orbax-checkpoint, every ``checkpoint_every`` global
  steps (default: every epoch) and at the end, keeping the last ``max_to_keep``. Orbax writes
  into a temporary directory and renames it when complete (atomic on a local file system), so
  a write interrupted at any moment leaves the previous checkpoint intact; unfinished
  temporary directories are removed when the next run opens the directory. A checkpoint holds
  the state, the position (epoch and step in it), the data key, the history so far and a
  fingerprint of the model, the optimizer (structure and hyperparameter values), the batch
  size, the seed and the data shape; a checkpoint of another run raises
  :class:`CheckpointMismatchError`.
* **Several devices** (``mesh=`` of ``fit`` and ``sweep``): the data and the state are
  replicated over the mesh, and every minibatch is constrained to be split along the mesh's
  first axis
  (``NamedSharding(mesh, PartitionSpec(axis))``). XLA's SPMD partitioner then computes each
  device's share and inserts the all-reduces of the gradient and of BatchNorm's batch
  statistics itself, so the statistics stay global (no ``axis_name`` needed) and the result
  equals one device's up to float32 rounding (sums are reduced in another order).
* **Several processes** (a mesh over the devices of several processes, after
  :func:`lecopt.distributed.initialize`): every process makes the same ``fit`` (or
  ``sweep``) call and holds the whole data set (the same arrays; ``fit`` and ``sweep`` check
  it, by digests all-gathered from every process, and raise ``ValueError`` if any process's
  call or data differ from process 0's).
  The data stays on the host: each epoch, every process computes the same order from the seed
  and gathers and transfers only its own devices' slice of every minibatch
  (``jax.make_array_from_callback`` into a global (S, B, ...) array split along B), and the
  test set is split the same way once. Gradients and BatchNorm statistics are all-reduced
  across processes (gloo on CPU), so every process returns the same state and history (bit
  for bit, but for ``wall_time``, each process's own clock). Checkpoints go to a directory
  all processes share, through orbax's multi-process protocol (barriers between the
  processes; the replicated state and the JSON record are written once; process 0 renames
  the finished checkpoint), with the same atomicity; the progress bar is process 0's only.

Files: :mod:`~lecopt.train.records` (state, history, errors, JSON),
:mod:`~lecopt.train.inputs` (checking the model and the data),
:mod:`~lecopt.train.nnx_models` (an ``nnx.Module`` as a static graph and traced variables),
:mod:`~lecopt.train.programs`
(every compiled program, looked up by typed keys), :mod:`~lecopt.train.checkpoints` (orbax),
:mod:`~lecopt.train.fitting`, :mod:`~lecopt.train.sweeping`, :mod:`~lecopt.train.evaluation`,
:mod:`~lecopt.train.plotting`.
"""

from lecopt.train.evaluation import evaluate
from lecopt.train.fitting import fit, init_state
from lecopt.train.grid_search import (
    GridSearchResult,
    grid_search,
    train_at_rates,
    validate_suggestions,
)
from lecopt.train.plotting import figure_png, plot_history
from lecopt.train.programs import batch_order, loss_function
from lecopt.train.records import (
    CheckpointMismatchError,
    Evaluation,
    History,
    NonFiniteError,
    SweepRun,
    TrainState,
    to_jsonable,
)
from lecopt.train.sweeping import VMAP_FLOPS_THRESHOLD_CPU, choose_strategy, flops_per_step, sweep

__all__ = [
    "TrainState",
    "History",
    "Evaluation",
    "SweepRun",
    "NonFiniteError",
    "CheckpointMismatchError",
    "fit",
    "init_state",
    "loss_function",
    "evaluate",
    "sweep",
    "grid_search",
    "train_at_rates",
    "validate_suggestions",
    "GridSearchResult",
    "batch_order",
    "choose_strategy",
    "flops_per_step",
    "plot_history",
    "figure_png",
    "to_jsonable",
    "VMAP_FLOPS_THRESHOLD_CPU",
]
