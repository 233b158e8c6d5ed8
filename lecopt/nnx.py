"""lecopt's BatchNorm, the lecture's MLP and population statistics for Flax NNX.

:class:`BatchNorm` is a drop-in for ``flax.nnx.BatchNorm``: the same constructor, the same
variables (``nnx.Param`` ``scale``/``bias``, ``nnx.BatchStat`` ``mean``/``var``, same shapes and
dtypes, so checkpoints load either way), the same ``model.train()``/``model.eval()``
behaviour. Its numerics are those of the linen module :class:`lecopt.nn.BatchNorm`, from the
one implementation both call (``lecopt.nn._batch_norm_step``): exact statistics at any offset
(shifted sums; Flax's default ``E[z^2] - E[z]^2`` loses them, relative error ~3e2 in the
output's spread at offset 1e4 in float32), the closed-form derivative with two reductions,
float32 statistics for low-precision input, exact cross-device statistics with ``axis_name``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.nnx.nn import dtypes

from lecopt import _checks
from lecopt import nn as _lnn

__all__ = ["BatchNorm", "MLP", "population_batch_stats"]

Array = jax.Array
_ZEROS = nnx.initializers.zeros_init()
_ONES = nnx.initializers.ones_init()


class BatchNorm(nnx.Module):
    """Batch Normalization for NNX, exact at any offset; a drop-in for ``nnx.BatchNorm``.

    Training (``use_running_average=False``, or after ``model.train()``), per feature over the
    minibatch of ``m`` values (all axes but ``axis``; and all devices of ``axis_name``)::

        mu = 1/m sum_i z_i,    sigma^2 = 1/m sum_i (z_i - mu)^2
        out_i = gamma (z_i - mu) / sqrt(sigma^2 + eps) + beta
        mean <- momentum mean + (1 - momentum) mu
        var  <- momentum var  + (1 - momentum) sigma^2   [* m/(m-1) if unbiased_running_var]

    Prediction (``use_running_average=True``, or after ``model.eval()``):
    ``gamma (z - mean) / sqrt(var + eps) + beta``, the running averages unchanged.

    The variance is exact (one pass of shifted sums) instead of Flax's default
    ``E[z^2] - E[z]^2``, so ``use_fast_variance`` is accepted for compatibility and ignored:
    lecopt is always exact, at the speed of Flax's fast path. A training batch with one value
    per feature raises ``ValueError`` (its variance is 0 and every output would be beta).

    Args:
      num_features: number of features (the size of ``axis``).
      use_running_average: see above; ``model.train()``/``model.eval()`` set it, and a value
        given at call time takes precedence.
      axis: the feature axis (default -1: channels last).
      momentum: of the running averages, in [0, 1] (default 0.99, as ``nnx.BatchNorm``).
      epsilon: ``eps`` >= 0 added to the variance.
      dtype: output dtype (default: inferred from the input and the variables, as Flax's
        ``promote_dtype`` does). Statistics are at least float32 anyway.
      param_dtype: dtype of ``scale`` and ``bias``; ``mean`` and ``var`` are float32.
      use_bias, use_scale: learn beta / gamma (otherwise the attribute is None, as in Flax).
      bias_init, scale_init: initializers of beta (zeros) and gamma (ones).
      axis_name: mapped axis (``shard_map``/``pmap``) whose devices share the statistics,
        merged exactly; all devices must hold equally many values.
      axis_index_groups: groups of devices of ``axis_name`` that share statistics.
      use_fast_variance: ignored (lecopt's statistics are always exact).
      promote_dtype: picks the computation's input dtype, as in Flax.
      rngs: ``nnx.Rngs`` for the initializers.
      bias_metadata, scale_metadata: metadata of the ``nnx.Param`` variables.
      unbiased_running_var: store the running variance with Bessel's correction, as PyTorch
        does (normalization still uses the biased one).

    Example:
      >>> from flax import nnx
      >>> import jax
      >>> import lecopt.nnx
      >>> bn = lecopt.nnx.BatchNorm(3, momentum=0.9, rngs=nnx.Rngs(0))
      >>> x = jax.random.normal(jax.random.key(0), (8, 3)) + 1e4
      >>> y = bn(x)                       # training: batch statistics, running averages move
      >>> print(f"{float(y.std()):.4f}")
      1.0000
      >>> bn.eval()
      >>> y_pred = bn(x)                  # prediction: running averages
    """

    def __init__(
        self,
        num_features: int,
        *,
        use_running_average: bool | None = False,
        axis: int = -1,
        momentum: float = 0.99,
        epsilon: float = 1e-5,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Callable[..., Array] = _ZEROS,
        scale_init: Callable[..., Array] = _ONES,
        axis_name: Any = None,
        axis_index_groups: Any = None,
        use_fast_variance: bool = True,
        promote_dtype: Callable[..., Any] = dtypes.promote_dtype,
        rngs: nnx.Rngs,
        bias_metadata: Mapping[str, Any] = MappingProxyType({}),
        scale_metadata: Mapping[str, Any] = MappingProxyType({}),
        unbiased_running_var: bool = False,
    ):
        _checks.check_positive_int("num_features", num_features)
        _checks.check_range("momentum", momentum, 0.0, 1.0)
        _checks.check_range("epsilon", epsilon, 0.0)
        shape = (num_features,)
        self.mean = nnx.BatchStat(jnp.zeros(shape, jnp.float32))
        self.var = nnx.BatchStat(jnp.ones(shape, jnp.float32))
        self.scale: nnx.Param | None
        self.scale = (nnx.Param(scale_init(rngs.params(), shape, param_dtype), **scale_metadata)
                      if use_scale else nnx.data(None))
        self.bias: nnx.Param | None
        self.bias = (nnx.Param(bias_init(rngs.params(), shape, param_dtype), **bias_metadata)
                     if use_bias else nnx.data(None))
        self.num_features = num_features
        self.use_running_average = use_running_average
        self.axis = axis
        self.momentum = momentum
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.use_bias = use_bias
        self.use_scale = use_scale
        self.axis_name = axis_name
        self.axis_index_groups = axis_index_groups
        self.use_fast_variance = use_fast_variance
        self.promote_dtype = promote_dtype
        self.unbiased_running_var = unbiased_running_var

    def __call__(self, x: Array, use_running_average: bool | None = None) -> Array:
        """Normalizes ``x`` with batch statistics (training) or the running averages.

        Args:
          x: input; every axis except ``axis`` is reduced over.
          use_running_average: overrides the attribute of the same name for this call.

        Returns:
          The normalized, re-scaled and re-shifted input, shape of ``x``.
        """
        use_running_average = nnx.module.first_from(
            use_running_average, self.use_running_average,
            error_msg="BatchNorm needs use_running_average: pass it to the constructor or the "
                      "call, or use model.train() / model.eval()")
        x = jnp.asarray(x)
        features = math.prod(_lnn._feature_shape(x.shape, self.axis))
        if features != self.num_features:
            raise ValueError(f"BatchNorm(num_features={self.num_features}) got an input of "
                             f"shape {x.shape} with {features} features along axis={self.axis}")
        scale = self.scale[...] if self.scale is not None else None
        bias = self.bias[...] if self.bias is not None else None
        x, *_ = self.promote_dtype((x, self.mean[...], self.var[...], scale, bias),
                                   dtype=self.dtype)
        y, mean, var = _lnn._batch_norm_step(
            x, scale, bias, self.mean[...], self.var[...],
            use_running_average=bool(use_running_average), axis=self.axis,
            momentum=self.momentum, epsilon=self.epsilon, out_dtype=x.dtype,
            axis_name=self.axis_name, axis_index_groups=self.axis_index_groups,
            unbiased_running_var=self.unbiased_running_var)
        if not use_running_average:
            # Running averages are state, not a function of the parameters.
            self.mean[...] = jax.lax.stop_gradient(mean)
            self.var[...] = jax.lax.stop_gradient(var)
        return y


_POSITIONS = ("before_activation", "after_activation")


class MLP(nnx.Module):
    """The lecture's fully connected net for NNX, optionally with BatchNorm in every hidden layer.

    The same net as :class:`lecopt.nn.MLP`: ``x`` (batch, ...) is flattened to (batch,
    in_features); then for each hidden width ``J``: ``Linear(J) -> [BatchNorm] -> activation``
    (``"before_activation"``) or ``Linear(J) -> activation -> [BatchNorm]``
    (``"after_activation"``); finally ``Linear(num_classes)`` gives the logits. Layers use
    Flax's default initialization. ``model.train()`` / ``model.eval()`` switch BatchNorm
    between batch statistics and running averages.

    Args:
      in_features: size of a flattened input (784 for MNIST).
      features: widths of the hidden layers (``(512, 512)`` for 784-512-512-10).
      num_classes: number of outputs (logits).
      batch_norm: insert :class:`BatchNorm` in each hidden layer.
      activation: the nonlinearity (default ReLU).
      batch_norm_position: ``"before_activation"`` or ``"after_activation"``.
      batch_norm_momentum, batch_norm_epsilon: of the BatchNorm layers (0.9 and 1e-5, as
        :class:`lecopt.nn.MLP`).
      axis_name: mapped axis over which BatchNorm statistics are shared.
      dtype: computation dtype of the layers (default: inferred).
      rngs: ``nnx.Rngs`` for the initializers.

    Example:
      >>> from flax import nnx
      >>> import jax.numpy as jnp
      >>> import lecopt.nnx
      >>> model = lecopt.nnx.MLP(784, (512, 512), batch_norm=True, rngs=nnx.Rngs(0))
      >>> model(jnp.ones((4, 28, 28))).shape
      (4, 10)
    """

    def __init__(
        self,
        in_features: int,
        features: Sequence[int] = (512, 512),
        num_classes: int = 10,
        *,
        batch_norm: bool = False,
        activation: Callable[[Array], Array] = jax.nn.relu,
        batch_norm_position: str = "before_activation",
        batch_norm_momentum: float = 0.9,
        batch_norm_epsilon: float = 1e-5,
        axis_name: Any = None,
        dtype: Any = None,
        rngs: nnx.Rngs,
    ):
        if batch_norm_position not in _POSITIONS:
            raise ValueError(f"batch_norm_position={batch_norm_position!r}; must be one of "
                             f"{_POSITIONS}")
        _checks.check_positive_int("in_features", in_features)
        for i, f in enumerate(features):
            _checks.check_positive_int(f"features[{i}]", f)
        _checks.check_positive_int("num_classes", num_classes)
        widths = [int(in_features), *(int(f) for f in features)]
        self.hidden = nnx.List([nnx.Linear(a, b, dtype=dtype, rngs=rngs)
                                for a, b in zip(widths[:-1], widths[1:], strict=True)])
        self.norms = nnx.List([
            BatchNorm(f, momentum=batch_norm_momentum, epsilon=batch_norm_epsilon,
                      axis_name=axis_name, dtype=dtype, rngs=rngs)
            for f in widths[1:]] if batch_norm else [])
        self.head = nnx.Linear(widths[-1], int(num_classes), dtype=dtype, rngs=rngs)
        self.activation = activation
        self.batch_norm_position = batch_norm_position

    def __call__(self, x: Array) -> Array:
        """Logits of shape (batch, num_classes) for inputs of shape (batch, ...)."""
        x = jnp.asarray(x)
        if x.ndim < 1:
            raise ValueError(f"MLP input must have a batch axis; got shape {x.shape}")
        x = x.reshape(x.shape[0], -1)
        before = self.batch_norm_position == "before_activation"
        for i, layer in enumerate(self.hidden):
            x = layer(x)
            if self.norms and before:
                x = self.norms[i](x)
            x = self.activation(x)
            if self.norms and not before:
                x = self.norms[i](x)
        return self.head(x)


# --------------------------------------------------------------------------------------------
# Population statistics ("precise BN").

_BATCH_NORMS = (BatchNorm, nnx.BatchNorm)
_TAPE: list[tuple[int, Array]] = []  # (id of the layer, its input), filled while tracing
_RECORDING: dict[type, type] = {}


def _recording(cls: type) -> type:
    """A subclass of a BatchNorm class whose call also writes its input on ``_TAPE``."""
    if cls not in _RECORDING:
        def __call__(self, x, *args, **kwargs):
            _TAPE.append((id(self), x))
            return cls.__call__(self, x, *args, **kwargs)
        _RECORDING[cls] = type(f"_Recording{cls.__name__}", (cls,), {"__call__": __call__})
    return _RECORDING[cls]


def population_batch_stats(model: nnx.Module, x: Any, *, batch_size: int = 256) -> nnx.Module:
    """Exact mean and variance of every BatchNorm layer's input over the whole data set (NNX).

    The lecture's "feed the entire training set to the (trained) network": the NNX twin of
    :func:`lecopt.nn.population_batch_stats`. Layer after layer, in the order the model calls
    them, layer ``k``'s ``mean`` and ``var`` become the population mean and biased variance of
    its input over all of ``x`` (in prediction mode, layers ``1..k-1`` already set), reduced
    exactly per batch on the device and merged on the host in float64.

    Works for :class:`BatchNorm` and ``flax.nnx.BatchNorm`` layers whose axis 0 is the batch
    axis, each called once per forward pass. A layer with ``unbiased_running_var=True`` gets
    ``sigma^2 N/(N-1)``.

    Args:
      model: the NNX model, called as ``model(x)``; not modified.
      x: the whole training inputs, batch axis first.
      batch_size: rows per jitted call (the last batch is padded and masked).

    Returns:
      A copy of ``model`` whose BatchNorm ``mean``/``var`` are the population statistics, in
      ``model``'s train/eval mode.

    Example:
      The first BatchNorm sees the first layer's outputs ``x W + b``; its population mean is
      theirs over the whole set:

      >>> from flax import nnx
      >>> mlp = lecopt.nnx.MLP(4, (8,), 3, batch_norm=True, rngs=nnx.Rngs(0))
      >>> x = np.random.default_rng(0).normal(2.0, 1.0, (100, 4)).astype(np.float32)
      >>> pop = lecopt.nnx.population_batch_stats(mlp, x, batch_size=32)
      >>> z = x @ np.asarray(mlp.hidden[0].kernel[...]) + np.asarray(mlp.hidden[0].bias[...])
      >>> bool(np.allclose(pop.norms[0].mean[...], z.mean(0), atol=1e-5))
      True
    """
    _checks.check_positive_int("batch_size", batch_size)
    x = jnp.asarray(x)
    if x.ndim < 1 or x.shape[0] < 2:
        raise ValueError(f"population_batch_stats needs at least 2 samples along axis 0; got x "
                         f"of shape {tuple(x.shape)}")
    new = nnx.clone(model)  # a copy: ``model`` keeps its statistics
    graphdef, _ = nnx.split(new)
    n_total = x.shape[0]
    bs = int(min(batch_size, n_total))
    n_batches = -(-n_total // bs)
    pad = n_batches * bs - n_total
    x_pad = jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)]) if pad else x
    mask = jnp.concatenate([jnp.ones(n_total, jnp.float32), jnp.zeros(pad, jnp.float32)])
    order: list[tuple[Any, ...]] = []  # paths of the layers in call order (filled when traced)

    @jax.jit
    def step(state, xb, mb):
        m = nnx.merge(graphdef, state)
        layers = {}
        for path, mod in nnx.iter_modules(m):
            if isinstance(mod, _BATCH_NORMS):
                mod.__class__ = _recording(type(mod))
                layers[id(mod)] = (path, mod)
        m.eval()
        _TAPE.clear()
        try:
            m(xb)
            tape = list(_TAPE)
        finally:
            _TAPE.clear()
        seen, stats = [], []
        for key, inp in tape:
            path, mod = layers[key]
            if path in seen:
                raise ValueError(f"the BatchNorm at {'/'.join(map(str, path))} is called more "
                                 "than once per forward pass; its population statistics are "
                                 "ambiguous")
            if inp.shape[0] != xb.shape[0]:
                raise ValueError(f"the BatchNorm at {'/'.join(map(str, path))} got an input of "
                                 f"shape {inp.shape}; axis 0 must be the batch axis "
                                 f"({xb.shape[0]} rows)")
            seen.append(path)
            stats.append(_lnn._masked_moments(inp, mod.axis, mb))
        if not order:
            order.extend(seen)
        return stats

    batches = [(x_pad[b * bs:(b + 1) * bs], mask[b * bs:(b + 1) * bs])
               for b in range(n_batches)]
    per_batch = [step(nnx.state(new), xb, mb) for xb, mb in batches]
    for k, path in enumerate(order):
        if k > 0:  # layer k's input depends on layers 0..k-1, which were just set
            per_batch = [step(nnx.state(new), xb, mb) for xb, mb in batches]
        layer = new
        for name in path:
            layer = layer[name] if isinstance(name, int) else getattr(layer, name)
        total, mean, var = _lnn._merge_batch_moments([p[k] for p in per_batch])
        if getattr(layer, "unbiased_running_var", False):
            var = var * total / (total - 1)
        layer.mean[...] = jnp.asarray(np.reshape(mean, layer.mean.shape), layer.mean.dtype)
        layer.var[...] = jnp.asarray(np.reshape(var, layer.var.shape), layer.var.dtype)
    return new
