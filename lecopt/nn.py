"""Neural-network parts of the lecture: BatchNorm and the fully connected net.

Batch Normalization (lecture, section "Batch Normalization"): for a unit ``z_j`` over a minibatch
of ``m`` inputs::

    mu_j      = 1/m sum_i z_j^(i)
    sigma_j^2 = 1/m sum_i (z_j^(i) - mu_j)^2                    (biased, 1/m)
    z~_j^(i)  = (z_j^(i) - mu_j) / sqrt(sigma_j^2 + eps)
    z^_j^(i)  = gamma_j z~_j^(i) + beta_j

and, for prediction, exponentially weighted running averages ``ra <- momentum ra + (1 -
momentum) batch`` of ``mu`` and ``sigma^2`` (or the statistics of the whole training set:
:func:`population_batch_stats`).

How the statistics are computed, and why:

* One pass over the data with shifted sums. Each feature is shifted by a value taken from the
  batch itself (its first sample, a constant for differentiation), ``d = z - c``, and
  ``sum d`` and ``sum d^2`` are reduced side by side (no second pass that needs the mean).
  ``sigma^2 = mean(d^2) - mean(d)^2`` then cancels only as much as ``c`` is off the mean in
  units of the spread (a sample is a few spreads away), instead of ``(mean / spread)^2`` as
  in ``E[z^2] - E[z]^2`` (Flax's fast path: relative error 0.3 in the variance at mean 1e3 in
  float32). The output is centred as ``(z - c) - mean(d)``, so it does not lose the digits of
  a large mean either.
* A ``jax.custom_jvp`` with the closed-form BatchNorm derivative, written so that reverse mode
  (its transpose) needs exactly two reductions, ``sum g`` and ``sum g z~``, which are also the
  gradients of ``beta`` and ``gamma``. Forward mode and higher derivatives work as usual.
* Reductions and statistics in (at least) float32 for bfloat16/float16 input; the output has
  the input's dtype.
* Across devices (``axis_name``, inside ``shard_map``/``pmap``): each device reduces its shard
  once with its own shift, then one collective gathers every device's (shift, mean of d, mean
  squared deviation), which are merged exactly with Chan et al.'s pairwise formula. (The
  alternative, global mean first and then the global mean of squared deviations, is exact too
  but needs two collectives and two passes; with 4 simulated CPU devices it took 1.15x the
  time of this one.)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lecopt import _checks

__all__ = ["BatchNorm", "MLP", "population_batch_stats"]

Array = jax.Array


# --------------------------------------------------------------------------------------------
# Axes, dtypes, checks.


def _axes(ndim: int, axis: int | Iterable[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Returns (feature axes, reduction axes), both sorted and non-negative."""
    axes = (axis,) if isinstance(axis, int | np.integer) else tuple(axis)
    feature = set()
    for a in axes:
        if not isinstance(a, int | np.integer) or isinstance(a, bool):
            raise TypeError(f"axis={axis!r} must be an int or a tuple of ints")
        if not -ndim <= a < ndim:
            raise ValueError(f"axis={axis!r} is out of range for an input with {ndim} dimensions; "
                             f"each axis must be in [{-ndim}, {ndim - 1}]")
        feature.add(int(a) % ndim)
    reduction = tuple(i for i in range(ndim) if i not in feature)
    return tuple(sorted(feature)), reduction


def _compute_dtype(x_dtype: Any) -> Any:
    """Float dtype of the reductions: at least float32, float64 kept."""
    if not jnp.issubdtype(x_dtype, jnp.floating):
        return jnp.dtype(jnp.float32)
    return jnp.promote_types(x_dtype, jnp.float32)


def _first_sample(x: Array, reduction: tuple[int, ...]) -> Array:
    """The value at index 0 of every reduction axis, kept as a broadcastable array."""
    idx = tuple(slice(0, 1) if a in reduction else slice(None) for a in range(x.ndim))
    return lax.stop_gradient(x[idx])


def _axis_size(axis_name: Any, groups: Any = None) -> int:
    """Devices that share the statistics: the whole mapped axis, or one group of it."""
    return int(lax.axis_size(axis_name)) if groups is None else len(groups[0])


def _canonical_groups(axis_index_groups: Any) -> tuple[tuple[int, ...], ...] | None:
    """``axis_index_groups`` as a hashable tuple of equally long tuples (or None)."""
    if axis_index_groups is None:
        return None
    groups = tuple(tuple(int(i) for i in g) for g in axis_index_groups)
    if not groups or len({len(g) for g in groups}) != 1 or not groups[0]:
        raise ValueError(f"axis_index_groups={axis_index_groups!r} must be a non-empty list of "
                         "equally long, non-empty lists of device indices")
    return groups


def _check_enough_values(shape: tuple[int, ...], reduction: tuple[int, ...], devices: int,
                         where: str) -> None:
    local = math.prod(shape[a] for a in reduction)
    if local * devices < 2:
        per_dev = f" on each of {devices} devices" if devices > 1 else ""
        raise ValueError(
            f"{where} in training mode got an input of shape {tuple(shape)}: that is "
            f"{local * devices} value(s) per feature over the reduction axes {reduction}"
            f"{per_dev}. The minibatch variance of a single value is 0, so every output "
            "would be beta, whatever the input (and gamma would get no gradient). Train with "
            "at least 2 values per feature (batch size >= 2 for dense input, N*H*W >= 2 for "
            "NHWC), or use the running averages (use_running_average=True / train=False) to "
            "predict for a single sample.")


# --------------------------------------------------------------------------------------------
# Statistics.


def _local_moments(xf: Array, reduction: tuple[int, ...]) -> tuple[Array, Array, Array]:
    """One pass: (shift c, mean of d = x - c, mean of d^2), each keepdims over ``reduction``."""
    m = math.prod(xf.shape[a] for a in reduction)
    shift = _first_sample(xf, reduction)
    d = xf - shift
    return shift, d.sum(reduction, keepdims=True) / m, (d * d).sum(reduction, keepdims=True) / m


def _gather_invariant(v: Array, axis_name: Any, groups: Any) -> Array:
    """Every device's ``v`` stacked along a new axis 1: shape (len(v), devices, ...).

    Written as a psum of one-hot rows rather than ``lax.all_gather``: the result is then the
    same value on every device in ``shard_map``'s type system too (``all_gather``'s is
    "varying"), so the running averages can leave ``shard_map`` replicated; it runs under
    ``pmap`` as well. With ``groups``, each device gathers its own group only.
    """
    index = lax.axis_index(axis_name)
    if groups is not None:  # a device's row is its position within its group
        position = np.zeros(sum(len(g) for g in groups), np.int32)
        for g in groups:
            position[list(g)] = np.arange(len(g))
        index = jnp.asarray(position)[index]
    rows = jnp.zeros((_axis_size(axis_name, groups),) + v.shape, v.dtype)
    rows = lax.dynamic_update_index_in_dim(rows, v, index, 0)
    return jnp.moveaxis(lax.psum(rows, axis_name, axis_index_groups=groups), 1, 0)


def _moments(xf: Array, reduction: tuple[int, ...], axis_name: Any, groups: Any
             ) -> tuple[Array, Array, Array, Array]:
    """Exact batch statistics of ``xf`` (float32 or wider) over ``reduction`` (and devices).

    Returns ``(shift, offset, mean, var)``: the output is centred as ``(x - shift) - offset``
    (both terms small next to a large mean, so no digits are lost), ``mean`` is
    ``shift + offset`` rounded once, and ``var`` is the biased variance. With ``axis_name``,
    ``mean`` and ``var`` are the same on every device (computed from collectives only), or on
    every device of a group of ``groups`` (``axis_index_groups``).
    """
    if axis_name is None:
        shift, md, md2 = _local_moments(xf, reduction)
        var = jnp.maximum(md2 - md * md, 0.0)
        return shift, md, shift + md, var
    shift, md, md2 = _local_moments(xf, reduction)
    m2 = jnp.maximum(md2 - md * md, 0.0)  # local mean squared deviation
    shifts, mds, m2s = _gather_invariant(jnp.stack([shift, md, m2]), axis_name, groups)
    # Chan et al.: with equal counts per device, the total mean squared deviation is the
    # average within-device one plus the spread of the device means. Device means are taken
    # relative to device 0's shift, so they are differences of nearby numbers (exact).
    a = (shifts - shifts[0]) + mds
    abar = a.mean(0)
    var = m2s.mean(0) + ((a - abar) ** 2).mean(0)
    offset = (shifts[0] - shift) + abar
    return shift, offset, shifts[0] + abar, var


def _train_forward(x, epsilon, reduction, axis_name, groups):
    xf = x.astype(_compute_dtype(x.dtype))
    shift, offset, mean, var = _moments(xf, reduction, axis_name, groups)
    r = lax.rsqrt(var + epsilon)
    xhat = ((xf - shift) - offset) * r
    return xhat, r, mean, var


def _rescale(xhat: Array, scale: Array, bias: Array) -> Array:
    """The lecture's re-scale and re-shift: ``z^ = gamma z~ + beta``."""
    return xhat * scale + bias


def _global_mean(v: Array, reduction: tuple[int, ...], axis_name: Any, groups: Any) -> Array:
    m = math.prod(v.shape[a] for a in reduction)
    s = v.sum(reduction, keepdims=True) / m
    return s if axis_name is None else lax.pmean(s, axis_name, axis_index_groups=groups)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4, 5, 6, 7))
def _batch_norm_train(x, scale, bias, epsilon, reduction, axis_name, groups, out_dtype):
    """``(gamma z~ + beta, mu, sigma^2)`` with batch statistics; scale/bias broadcastable."""
    xhat, _, mean, var = _train_forward(x, epsilon, reduction, axis_name, groups)
    return _rescale(xhat, scale, bias).astype(out_dtype), mean, var


@_batch_norm_train.defjvp
def _batch_norm_train_jvp(epsilon, reduction, axis_name, groups, out_dtype, primals,
                          tangents):
    # d z~ = r (dz - mean(dz) - z~ mean(z~ dz)),   r = 1/sqrt(sigma^2 + eps)
    # d mu = mean(dz),   d sigma^2 = 2 mean((z - mu) dz) = 2 mean(z~ dz) / r.
    # The output tangent is grouped as z~ * t1 + t0 + gamma r dz with per-feature t1, t0 that
    # hold the d gamma / d beta tangents too: transposed, each of the two reductions then
    # serves both the input's and the parameters' gradient (2 reductions instead of 4).
    x, scale, bias = primals
    dx, dscale, dbias = tangents
    xhat, r, mean, var = _train_forward(x, epsilon, reduction, axis_name, groups)
    dxf = dx.astype(xhat.dtype)
    dmean = _global_mean(dxf, reduction, axis_name, groups)
    dcorr = _global_mean(xhat * dxf, reduction, axis_name, groups)
    a = scale * r
    t1 = dscale - a * dcorr
    t0 = dbias - a * dmean
    y = _rescale(xhat, scale, bias)
    dy = xhat * t1 + t0 + a * dxf
    dvar = 2.0 * dcorr / r
    return (y.astype(out_dtype), mean, var), (dy.astype(out_dtype), dmean, dvar)


def _normalize_with(x, mean, var, scale, bias, epsilon, out_dtype):
    """``gamma (z - mu) / sqrt(sigma^2 + eps) + beta`` for given statistics (prediction)."""
    cdt = _compute_dtype(x.dtype)
    xhat = (x.astype(cdt) - mean.astype(cdt)) * lax.rsqrt(var.astype(cdt) + epsilon)
    return _rescale(xhat, scale, bias).astype(out_dtype)


def _feature_shape(shape: tuple[int, ...], axis: Any) -> tuple[int, ...]:
    feature, _ = _axes(len(shape), axis)
    return tuple(shape[a] for a in feature)


def _as_float(x: Any) -> Array:
    """The input as an array; integers become float32 (statistics need a float)."""
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(_compute_dtype(x.dtype))


def _batch_norm_step(
    x: Array,
    scale: Array | None,
    bias: Array | None,
    ra_mean: Array,
    ra_var: Array,
    *,
    use_running_average: bool,
    axis: int | Sequence[int],
    momentum: float,
    epsilon: float,
    out_dtype: Any = None,
    axis_name: Any = None,
    axis_index_groups: Any = None,
    unbiased_running_var: bool = False,
    update_running_averages: bool = True,
    where: str = "BatchNorm",
) -> tuple[Array, Array, Array]:
    """One BatchNorm call: the numerics of both lecopt modules (linen and NNX) live here.

    Training: ``out = gamma (z - mu) / sqrt(sigma^2 + eps) + beta`` with the batch's exact
    ``mu`` and biased ``sigma^2`` (shifted sums, closed-form derivative, see the module
    docstring) and ``ra <- momentum ra + (1 - momentum) batch``; prediction: the same with
    ``ra_mean``, ``ra_var`` and the running averages returned unchanged.

    Args:
      x: the input (integers are normalized as float32).
      scale, bias: gamma and beta, of the feature shape, or None for 1 and 0.
      ra_mean, ra_var: the running averages, of the feature shape; the new ones keep their
        dtype.
      use_running_average: normalize with ``ra_mean``/``ra_var`` instead of batch statistics.
      axis: the feature axis or axes; all others are reduced over.
      momentum, epsilon: as in the modules.
      out_dtype: dtype of the output (None: the input's).
      axis_name, axis_index_groups: mapped axis (and groups of its devices) sharing the
        statistics.
      unbiased_running_var: store ``sigma^2 m / (m - 1)`` in the running variance.
      update_running_averages: False returns the running averages unchanged in training too
        (linen's ``init``).
      where: the layer's name in error messages.

    Returns:
      ``(out, new_ra_mean, new_ra_var)``.
    """
    _checks.check_range("momentum", momentum, 0.0, 1.0)
    _checks.check_range("epsilon", epsilon, 0.0)
    x = _as_float(x)
    feature, reduction = _axes(x.ndim, axis)
    bshape = tuple(x.shape[a] if a in feature else 1 for a in range(x.ndim))
    cdt = _compute_dtype(x.dtype)
    out_dtype = jnp.dtype(x.dtype if out_dtype is None else out_dtype)
    scale = jnp.ones(bshape, cdt) if scale is None else scale.reshape(bshape).astype(cdt)
    bias = jnp.zeros(bshape, cdt) if bias is None else bias.reshape(bshape).astype(cdt)
    if use_running_average:
        y = _normalize_with(x, ra_mean.reshape(bshape), ra_var.reshape(bshape), scale, bias,
                            epsilon, out_dtype)
        return y, ra_mean, ra_var
    groups = _canonical_groups(axis_index_groups)
    devices = 1 if axis_name is None else _axis_size(axis_name, groups)
    _check_enough_values(x.shape, reduction, devices, where)
    y, mean, var = _batch_norm_train(x, scale, bias, float(epsilon), reduction, axis_name,
                                     groups, out_dtype)
    if not update_running_averages:
        return y, ra_mean, ra_var
    if unbiased_running_var:
        m = math.prod(x.shape[a] for a in reduction) * devices
        var = var * (m / (m - 1))
    new_mean = (momentum * ra_mean + (1.0 - momentum) * mean.reshape(ra_mean.shape))
    new_var = (momentum * ra_var + (1.0 - momentum) * var.reshape(ra_var.shape))
    return y, new_mean.astype(ra_mean.dtype), new_var.astype(ra_var.dtype)


# --------------------------------------------------------------------------------------------
# BatchNorm.


class BatchNorm(nn.Module):
    """Batch Normalization, exact at any offset, with Flax's calling convention.

    Training (``use_running_average=False``), per feature over the minibatch of ``m`` values
    (all axes but ``axis``; and all devices of ``axis_name``)::

        mu = 1/m sum_i z_i,    sigma^2 = 1/m sum_i (z_i - mu)^2
        out_i = gamma (z_i - mu) / sqrt(sigma^2 + eps) + beta
        ra_mean <- momentum ra_mean + (1 - momentum) mu
        ra_var  <- momentum ra_var  + (1 - momentum) sigma^2   [* m/(m-1) if unbiased_running_var]

    Prediction (``use_running_average=True``): ``gamma (z - ra_mean) / sqrt(ra_var + eps) +
    beta``. The running averages live in the ``batch_stats`` collection as ``mean`` (init 0)
    and ``var`` (init 1); gamma and beta in ``params`` as ``scale`` and ``bias``, so variables
    are interchangeable with ``flax.linen.BatchNorm``'s. As in Flax, ``init`` does not update
    the running averages, and ``apply`` in training needs ``mutable=["batch_stats"]``.

    Unlike Flax's default (``E[z^2] - E[z]^2``), the variance is exact at any offset (one pass
    of shifted sums, see the module docstring), as fast as Flax's fast path, and a training
    batch with one value per feature raises ``ValueError`` instead of returning beta.

    Attributes:
      use_running_average: use the stored running averages (prediction) instead of the batch
        statistics; may be given here or at call time (exactly one of the two).
      axis: the feature axis or axes (default -1: channels last); statistics are reduced over
        all other axes.
      momentum: ``momentum`` of the running averages, in [0, 1] (PyTorch's momentum is
        ``1 - momentum``).
      epsilon: ``eps`` >= 0 added to the variance.
      dtype: output dtype (default: the input's). Statistics are at least float32 anyway.
      param_dtype: dtype of gamma and beta (float32); the running averages are stored in
        ``promote_types(param_dtype, float32)``.
      use_bias: learn beta. use_scale: learn gamma.
      bias_init, scale_init: initializers of beta (zeros) and gamma (ones).
      axis_name: name of a mapped axis (``shard_map``/``pmap``) whose devices share the
        statistics; all devices must hold equally many values.
      unbiased_running_var: store the running variance with Bessel's correction,
        ``sigma^2 m / (m - 1)``, as PyTorch does (normalization still uses the biased one).

    Example:
      >>> from lecopt.nn import BatchNorm
      >>> x = jnp.array([[0.0, 10.0], [2.0, 30.0]])
      >>> bn = BatchNorm()
      >>> variables = bn.init(jax.random.key(0), x, use_running_average=False)
      >>> y, updates = bn.apply(variables, x, use_running_average=False,
      ...                       mutable=["batch_stats"])
      >>> np.asarray(y).round(3)  # each feature to mean 0, variance 1 over the batch
      array([[-1., -1.],
             [ 1.,  1.]], dtype=float32)
      >>> variables = {**variables, **updates}
      >>> bn.apply(variables, x, use_running_average=True).shape
      (2, 2)
    """

    use_running_average: bool | None = None
    axis: int | Sequence[int] = -1
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Any = None
    param_dtype: Any = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Callable[..., Array] = nn.initializers.zeros
    scale_init: Callable[..., Array] = nn.initializers.ones
    axis_name: Any = None
    unbiased_running_var: bool = False

    @nn.compact
    def __call__(self, x: Array, use_running_average: bool | None = None) -> Array:
        """Normalizes ``x`` with batch statistics (training) or running averages.

        Args:
          x: input; every axis except ``axis`` is reduced over.
          use_running_average: see the attribute of the same name.

        Returns:
          The normalized, re-scaled and re-shifted input, shape of ``x``, dtype ``dtype`` or
          the input's.
        """
        use_running_average = nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average)
        x = _as_float(x)
        feature_shape = _feature_shape(x.shape, self.axis)
        stat_dtype = jnp.promote_types(self.param_dtype, jnp.float32)
        ra_mean = self.variable("batch_stats", "mean",
                                lambda: jnp.zeros(feature_shape, stat_dtype))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones(feature_shape, stat_dtype))
        scale = (self.param("scale", self.scale_init, feature_shape, self.param_dtype)
                 if self.use_scale else None)
        bias = (self.param("bias", self.bias_init, feature_shape, self.param_dtype)
                if self.use_bias else None)
        # While initializing, the mapped axis need not exist (as in Flax).
        initializing = self.is_initializing()
        y, new_mean, new_var = _batch_norm_step(
            x, scale, bias, ra_mean.value, ra_var.value,
            use_running_average=bool(use_running_average), axis=self.axis,
            momentum=self.momentum, epsilon=self.epsilon, out_dtype=self.dtype,
            axis_name=None if initializing else self.axis_name,
            unbiased_running_var=self.unbiased_running_var,
            update_running_averages=not initializing)
        if not use_running_average and not initializing:
            ra_mean.value, ra_var.value = new_mean, new_var
        return y


# --------------------------------------------------------------------------------------------
# The lecture's fully connected net.

_POSITIONS = ("before_activation", "after_activation")


class MLP(nn.Module):
    """The lecture's fully connected net, optionally with BatchNorm in every hidden layer.

    ``x`` (batch, ...) is flattened to (batch, features); then for each hidden width ``J``:
    ``Dense(J) -> [BatchNorm] -> activation`` (``batch_norm_position="before_activation"``,
    the lecture's usual choice: BatchNorm on ``W^T x + b``) or ``Dense(J) -> activation ->
    [BatchNorm]`` (``"after_activation"``: on ``sigma(W^T x + b)``); finally
    ``Dense(num_classes)`` gives the logits. Dense layers use Flax's default initialization.

    Attributes:
      features: widths of the hidden layers (784-512-512-10 for MNIST: ``(512, 512)``).
      num_classes: number of outputs (logits).
      batch_norm: insert :class:`BatchNorm` in each hidden layer.
      activation: the nonlinearity ``sigma`` (default ReLU).
      batch_norm_position: ``"before_activation"`` or ``"after_activation"``.
      batch_norm_momentum, batch_norm_epsilon: ``momentum`` and ``epsilon`` of the BatchNorm
        layers.
      axis_name: mapped axis over which BatchNorm statistics are shared (data parallelism
        inside ``shard_map``/``pmap``).
      dtype: computation dtype of the Dense layers (default: inferred).

    Call with ``train=True`` (batch statistics; pass ``mutable=["batch_stats"]`` when
    ``batch_norm``) or ``train=False`` (running averages). With ``batch_norm=True``, ``train``
    must be given.

    Example:
      >>> from lecopt.nn import MLP
      >>> images = jnp.ones((4, 784))
      >>> model = MLP(features=(512, 512), batch_norm=True)
      >>> variables = model.init(jax.random.key(0), images, train=False)
      >>> logits, updates = model.apply(variables, images, train=True,
      ...                               mutable=["batch_stats"])
      >>> predictions = model.apply({**variables, **updates}, images, train=False).argmax(-1)
      >>> logits.shape, predictions.shape
      ((4, 10), (4,))
    """

    features: Sequence[int] = (512, 512)
    num_classes: int = 10
    batch_norm: bool = False
    activation: Callable[[Array], Array] = nn.relu
    batch_norm_position: str = "before_activation"
    batch_norm_momentum: float = 0.9
    batch_norm_epsilon: float = 1e-5
    axis_name: Any = None
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, train: bool | None = None) -> Array:
        """Logits of shape (batch, num_classes) for inputs of shape (batch, ...)."""
        if self.batch_norm_position not in _POSITIONS:
            raise ValueError(f"batch_norm_position={self.batch_norm_position!r}; must be one "
                             f"of {_POSITIONS}")
        for i, f in enumerate(self.features):
            _checks.check_positive_int(f"features[{i}]", f)
        _checks.check_positive_int("num_classes", self.num_classes)
        if self.batch_norm and train is None:
            raise TypeError("MLP with batch_norm=True needs train=True (batch statistics, "
                            "training) or train=False (running averages, prediction)")
        x = jnp.asarray(x)
        if x.ndim < 1:
            raise ValueError(f"MLP input must have a batch axis; got shape {x.shape}")
        x = x.reshape(x.shape[0], -1)

        def norm(h: Array) -> Array:
            return BatchNorm(use_running_average=not train, momentum=self.batch_norm_momentum,
                             epsilon=self.batch_norm_epsilon, axis_name=self.axis_name,
                             dtype=self.dtype)(h)

        for f in self.features:
            x = nn.Dense(int(f), dtype=self.dtype)(x)
            if self.batch_norm and self.batch_norm_position == "before_activation":
                x = norm(x)
            x = self.activation(x)
            if self.batch_norm and self.batch_norm_position == "after_activation":
                x = norm(x)
        return nn.Dense(int(self.num_classes), dtype=self.dtype)(x)


# --------------------------------------------------------------------------------------------
# Population statistics ("precise BN").


def _is_batch_norm(module: nn.Module) -> bool:
    return isinstance(module, BatchNorm | nn.BatchNorm)


def _masked_moments(x: Array, axis: Any, mask: Array) -> tuple[Array, Array, Array, Array]:
    """(shift, mean of d, sum of squared deviations, count) of the rows where ``mask`` is 1."""
    _, reduction = _axes(x.ndim, axis)
    if 0 not in reduction:
        raise ValueError(f"population_batch_stats needs axis 0 to be the batch axis of every "
                         f"BatchNorm input; a BatchNorm has axis={axis!r}")
    xf = x.astype(_compute_dtype(x.dtype))
    w = mask.astype(xf.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
    per_row = math.prod(x.shape[a] for a in reduction if a != 0)
    n = mask.astype(xf.dtype).sum() * per_row
    shift = _first_sample(xf, reduction)  # row 0 of every batch is a real sample
    d = (xf - shift) * w
    s1 = d.sum(reduction, keepdims=True)
    md = s1 / n
    m2 = jnp.maximum((d * d).sum(reduction, keepdims=True) - s1 * md, 0.0)
    return shift, md, m2, n


def _merge_batch_moments(parts: Sequence[tuple[Array, ...]]) -> tuple[float, Any, Any]:
    """(count, mean, biased variance) of all rows from per-batch ``_masked_moments``.

    In float64 on the host, with Chan et al.'s pairwise rule: the total sum of squared
    deviations is the batches' own plus each batch's count times its mean's squared distance
    from the overall mean.
    """
    shift, md, m2 = (np.stack([np.asarray(p[i], np.float64) for p in parts]) for i in range(3))
    cnt = np.array([float(p[3]) for p in parts]).reshape((-1,) + (1,) * (md.ndim - 1))
    means = shift + md
    total = cnt.sum()
    mean = (cnt * means).sum(0) / total
    var = (m2.sum(0) + (cnt * (means - mean) ** 2).sum(0)) / total
    return float(total), mean, var


def population_batch_stats(
    model: nn.Module,
    variables: Mapping[str, Any],
    x: Any,
    *,
    batch_size: int = 256,
    apply_kwargs: Mapping[str, Any] | None = None,
) -> Any:
    """Exact mean and variance of every BatchNorm layer's input over the whole data set.

    The lecture's other way to predict: "feed the entire training set to the (trained) network
    and compute the means and standard deviations" (PyTorch users know it as precise BN /
    ``swa_utils.update_bn``). Layer after layer, in the order the model calls them: layer ``k``
    gets the population mean ``mu_k`` and biased variance ``sigma_k^2`` of its input over all
    of ``x``, computed with layers ``1..k-1`` already set to theirs (each layer's input depends
    on the statistics before it). One jitted prediction pass over ``x`` per layer, in batches;
    each batch is reduced exactly on the device (shifted sums) and the batches are merged on
    the host in float64 (Chan et al.), so the result is exact at any offset.

    Works for lecopt's :class:`BatchNorm` and ``flax.linen.BatchNorm`` layers whose axis 0 is
    the batch axis. A lecopt layer with ``unbiased_running_var=True`` gets ``sigma^2 N/(N-1)``.

    Args:
      model: the Flax module.
      variables: its variables (with ``params`` and ``batch_stats``); not modified.
      x: the whole training inputs, batch axis first.
      batch_size: rows per jitted call (the last batch is padded and masked).
      apply_kwargs: keyword arguments of ``model.apply`` that select prediction mode;
        default ``{"train": False}``, or ``{"use_running_average": True}`` when ``model`` is a
        BatchNorm itself.

    Returns:
      New variables, equal to ``variables`` except for the ``batch_stats`` ``mean`` and
      ``var`` of every BatchNorm layer the model called.

    Example:
      >>> from lecopt.nn import MLP, population_batch_stats
      >>> x_train = jax.random.normal(jax.random.key(1), (1000, 3))
      >>> model = MLP(features=(4,), num_classes=2, batch_norm=True)
      >>> variables = model.init(jax.random.key(0), x_train[:1], train=False)
      >>> variables = population_batch_stats(model, variables, x_train, batch_size=500)
      >>> model.apply(variables, x_train[:5], train=False).shape
      (5, 2)
    """
    _checks.check_positive_int("batch_size", batch_size)
    x = np.asarray(x) if not isinstance(x, jax.Array) else x
    if x.ndim < 1 or x.shape[0] < 2:
        raise ValueError(f"population_batch_stats needs at least 2 samples along axis 0; got x "
                         f"of shape {tuple(x.shape)}")
    if apply_kwargs is None:
        apply_kwargs = ({"use_running_average": True} if _is_batch_norm(model)
                        else {"train": False})
    apply_kwargs = dict(apply_kwargs)
    n_total = x.shape[0]
    bs = int(min(batch_size, n_total))
    n_batches = -(-n_total // bs)
    pad = n_batches * bs - n_total
    x_pad = jnp.concatenate([jnp.asarray(x), jnp.zeros((pad,) + x.shape[1:], x.dtype)]) \
        if pad else jnp.asarray(x)
    mask = jnp.concatenate([jnp.ones(n_total, jnp.float32), jnp.zeros(pad, jnp.float32)])

    def batch_moments(vs, xb, mb):
        found: dict[tuple[str, ...], Any] = {}
        order: list[tuple[str, ...]] = []

        def interceptor(next_fun, args, kwargs, context):
            mod = context.module
            if context.method_name != "__call__" or not _is_batch_norm(mod):
                return next_fun(*args, **kwargs)
            call_flag = args[1] if len(args) > 1 else kwargs.get("use_running_average")
            path = tuple(mod.path)
            if not nn.merge_param("use_running_average", mod.use_running_average, call_flag):
                raise ValueError(
                    f"population_batch_stats runs the model in prediction mode, but the "
                    f"BatchNorm at {'/'.join(path)} ran with batch statistics; pass "
                    f"apply_kwargs that select prediction (got {apply_kwargs!r})")
            if path in found:
                raise ValueError(f"the BatchNorm at {'/'.join(path)} is called more than once "
                                 "per forward pass; its population statistics are ambiguous")
            if args[0].shape[0] != xb.shape[0]:
                raise ValueError(f"the BatchNorm at {'/'.join(path)} got an input of shape "
                                 f"{args[0].shape}; axis 0 must be the batch axis "
                                 f"({xb.shape[0]} rows)")
            found[path] = _masked_moments(args[0], mod.axis, mb)
            order.append(path)
            modules[path] = mod
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(interceptor):
            model.apply(vs, xb, **apply_kwargs)
        return [found[p] for p in order], order

    order_box: list[list[tuple[str, ...]]] = []  # filled when ``step`` is traced
    modules: dict[tuple[str, ...], nn.Module] = {}

    @jax.jit
    def step(vs, xb, mb):
        stats, order = batch_moments(vs, xb, mb)
        if not order_box:
            order_box.append(order)
        return stats

    new = _copy_tree(variables)

    batches = [(x_pad[b * bs:(b + 1) * bs], mask[b * bs:(b + 1) * bs])
               for b in range(n_batches)]

    def run_pass() -> list[Any]:
        return [step(new, xb, mb) for xb, mb in batches]

    per_batch = run_pass()
    order = order_box[0] if order_box else []
    for k, path in enumerate(order):
        if k > 0:  # layer k's input depends on layers 0..k-1, which were just set
            per_batch = run_pass()
        total, mean, var = _merge_batch_moments([p[k] for p in per_batch])
        mod = modules[path]
        if isinstance(mod, BatchNorm) and mod.unbiased_running_var:
            var = var * total / (total - 1)
        node = new["batch_stats"]
        for name in path:
            node = node[name]
        node["mean"] = jnp.asarray(mean.reshape(node["mean"].shape), node["mean"].dtype)
        node["var"] = jnp.asarray(var.reshape(node["var"].shape), node["var"].dtype)
    if isinstance(variables, flax.core.FrozenDict):
        return flax.core.freeze(new)
    return new


def _copy_tree(tree: Any) -> Any:
    """Nested plain dicts copied (leaves shared), so the caller's variables stay unchanged."""
    if isinstance(tree, Mapping):
        return {k: _copy_tree(v) for k, v in tree.items()}
    return tree
