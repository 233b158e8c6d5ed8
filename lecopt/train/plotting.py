"""``plot_history``: the figure of a training history; ``figure_png``: any figure as PNG bytes."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lecopt.train.records import History

__all__ = ["plot_history", "figure_png"]


def figure_png(fig: Any, dpi: int = 110) -> bytes:
    """Renders a matplotlib figure to PNG bytes (cropped to what is drawn) and closes it.

    The one renderer of the package: the experiments' figures, the bench's and the widgets'
    panels all go through it.
    """
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def plot_history(history: History | Mapping[str, Any], ax: Any = None) -> Any:
    """Training and test loss and error per epoch (and the per-step loss, faint), and the
    learning rate at each epoch's end on the error panel's right axis.

    Args:
      history: a :class:`~lecopt.train.History` or its :meth:`~lecopt.train.History.to_dict`.
      ax: None (a new figure with two axes: loss and error), a pair of axes
        ``(ax_loss, ax_error)``, or one axes (loss on it, error on a twin axis).

    Returns:
      The matplotlib ``Figure``.

    Example:
      >>> from lecopt import train
      >>> h = train.History(step_loss=[2.3, 2.0, 1.6, 1.5], step_error=[.9, .7, .5, .45],
      ...                   train_loss=[2.15, 1.55], train_error=[.8, .475],
      ...                   steps_per_epoch=2, batch_size=32)
      >>> fig = train.plot_history(h)
      >>> [a.get_title() for a in fig.axes], fig.get_suptitle()
      (['Loss', 'Error'], 'Training history (2 epochs, batch 32)')
      >>> h.learning_rate = [0.1, 0.05]
      >>> train.plot_history(h).axes[2].get_ylabel()
      'learning rate alpha at epoch end'

    """
    import matplotlib.pyplot as plt

    h = history if isinstance(history, History) else History.from_dict(history)
    twin = False
    if ax is None:
        fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    elif isinstance(ax, Sequence | np.ndarray) and len(ax) == 2:
        ax_loss, ax_err = ax
        fig = ax_loss.figure
    else:
        ax_loss, ax_err, twin = ax, ax.twinx(), True
        fig = ax.figure
    # Training values are means over an epoch: drawn at its middle. Test values are measured
    # at its end.
    epoch_ends = np.arange(1, h.epochs + 1)
    epoch_middles = epoch_ends - 0.5
    steps_per_epoch = max(h.steps_per_epoch, 1)
    if h.step_loss:
        steps = (np.arange(len(h.step_loss)) + 0.5) / steps_per_epoch
        ax_loss.plot(steps, h.step_loss, color="tab:blue", alpha=0.25, lw=0.8,
                     label="train (per step)")
    ax_loss.plot(epoch_middles, h.train_loss, "o-", color="tab:blue", label="train (epoch mean)")
    if h.test_loss:
        ax_loss.plot(epoch_ends, h.test_loss, "s-", color="tab:orange",
                     label="test (end of epoch)")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy loss (nats)")
    ax_loss.set_title("Loss")
    ax_err.plot(epoch_middles, np.asarray(h.train_error) * 100.0, "o--", color="tab:green",
                label="train error (epoch mean)")
    if h.test_error:
        ax_err.plot(epoch_ends, np.asarray(h.test_error) * 100.0, "s--", color="tab:red",
                    label="test error (end of epoch)")
    ax_err.set_ylabel("classification error (%)")
    if twin:
        handles, labels = ax_loss.get_legend_handles_labels()
        handles2, labels2 = ax_err.get_legend_handles_labels()
        ax_loss.legend(handles + handles2, labels + labels2, loc="upper right")
        ax_loss.set_title("Training history: loss (left axis) and error (right axis)")
    else:
        ax_err.set_xlabel("epoch")
        ax_err.set_title("Error")
        ax_loss.legend()
        handles, labels = ax_err.get_legend_handles_labels()
        rates = np.asarray(h.learning_rate, np.float64)
        if rates.size and np.any(np.isfinite(rates) & (rates > 0)):
            ax_rate = ax_err.twinx()
            ax_rate.plot(epoch_ends[: rates.size], rates, "^:", color="0.35",
                         label="learning rate (right axis)")
            # Linear from 0: schedules end at (or near) 0, which a log axis cannot show.
            ax_rate.set_ylim(0, 1.1 * float(np.nanmax(rates)))
            ax_rate.set_ylabel("learning rate alpha at epoch end")
            more, more_labels = ax_rate.get_legend_handles_labels()
            handles, labels = handles + more, labels + more_labels
        ax_err.legend(handles, labels)
        fig.suptitle(f"Training history ({h.epochs} epochs, batch {h.batch_size})")
    return fig
