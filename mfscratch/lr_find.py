"""fastai's learning-rate finder: ``learn.lr_find()``.

The method (fastai's ``LRFinder``): train ``num_it`` batches with a learning rate growing
exponentially from ``start_lr`` to ``end_lr`` (step ``i`` at ``start_lr * (end_lr / start_lr) **
(i / num_it)``), record fastai's smoothed loss (the debiased moving average, beta 0.98) at every
step, and stop once it exceeds four times its minimum so far (or is not finite). The suggestion
comes from the recorded curve without its first tenth and its last five points: fastai's default
is ``valley`` (the middle of the longest falling stretch, a little towards its start); ``minimum``
(a tenth of the rate with the lowest loss) and ``steep`` (the steepest fall) are the others.

The weights, the optimiser state, the batch-order generator, the recorder and the callbacks of
the learner are left as they were: the test runs on a copy of the weights and optimiser state, in a
throw-away learner of the same settings, through the same training path as ``fit`` (its backend,
mode and kernels), on ``num_it`` batches drawn from the training rows.
"""

from __future__ import annotations

import collections
import copy
import math
import warnings
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError, DivergenceError

__all__ = ["lr_find", "valley", "minimum", "steep", "LRFinderResult", "SMOOTH_BETA"]

SMOOTH_BETA = 0.98


def valley(lrs, losses, num_it: int) -> tuple[float, tuple[float, float]]:
    """fastai's ``valley``: the longest stretch over which the loss keeps falling, and a rate a little
    past its first third (``start + int(len/3) + int(len/6)``)."""
    n = len(losses)
    max_start = max_end = 0
    lds = [1] * n
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    idx = max_start + int(sections) + int(sections / 2)
    return float(lrs[idx]), (float(lrs[idx]), float(losses[idx]))


def minimum(lrs, losses, num_it: int) -> tuple[float, tuple[float, float]]:
    """fastai's ``minimum``: a tenth of the rate at the lowest loss."""
    i = int(np.argmin(losses))
    return float(lrs[i]) / 10, (float(lrs[i]), float(losses[i]))


def steep(lrs, losses, num_it: int) -> tuple[float, tuple[float, float]]:
    """fastai's ``steep``: the rate where the loss falls fastest against ``log(lr)``."""
    lrs, losses = np.asarray(lrs, dtype=np.float64), np.asarray(losses, dtype=np.float64)
    grads = np.diff(losses) / np.diff(np.log(lrs))
    i = int(np.argmin(grads))
    return float(lrs[i]), (float(lrs[i]), float(losses[i]))


@dataclass
class LRFinderResult:
    """What ``lr_find`` recorded: per-step ``lrs`` and smoothed ``losses``, and each suggestion's point."""

    lrs: list
    losses: list
    names: list
    points: list


def _smoothed_until_divergence(losses: np.ndarray, stop_div: bool) -> list[float]:
    """fastai's smoothed loss after each step, up to and including the step that exceeds 4x the minimum."""
    out: list[float] = []
    avg, best = 0.0, math.inf
    for i, loss in enumerate(losses):
        avg = SMOOTH_BETA * avg + (1 - SMOOTH_BETA) * float(loss)
        smooth = avg / (1 - SMOOTH_BETA ** (i + 1))
        out.append(smooth)
        best = min(best, smooth)
        if stop_div and (smooth > 4 * best or not math.isfinite(smooth)):
            break
    return out


def _trial_learner(learn, num_it: int):
    """A learner of ``learn``'s settings over a copy of its weights and optimiser state, whose one epoch is
    ``num_it`` batches of training rows (drawn without replacement while they last), without validation."""
    from .learner import Learner
    from .model import EmbeddingDotBias
    from .optim import OptState
    from .validate import DataWarning

    class Trial(Learner):
        def _train_epoch(self, *args, **kwargs):  # keep the losses even when the epoch diverges
            self.step_losses = super()._train_epoch(*args, **kwargs)
            return self.step_losses

    d, m = learn.dls, learn.model
    learn.backend.sync()
    rng = np.random.default_rng()
    rng.bit_generator.state = copy.deepcopy(learn.rng.bit_generator.state)
    needed = num_it * d.bs
    rows = np.concatenate([rng.permutation(d.n_train) for _ in range(-(-needed // d.n_train))])[:needed]
    trial_dls = copy.copy(d)
    trial_dls.train_users, trial_dls.train_items = d.train_users[rows], d.train_items[rows]
    trial_dls.train_ratings = d.train_ratings[rows]
    trial_dls.valid_users, trial_dls.valid_items = d.valid_users[:0], d.valid_items[:0]
    trial_dls.valid_ratings = d.valid_ratings[:0]
    model = EmbeddingDotBias(m.n_factors, m.n_users, m.n_items, y_range=m.y_range, params=m.params.copy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)  # the learner warned about these ratings already
        trial = Trial(
            trial_dls,
            model,
            opt_func=learn.opt,
            lr=learn.lr,
            wd=learn.wd,
            sparse=learn.sparse,
            backend=learn.backend_name,
            log=None,
        )
    s = learn.opt_state
    trial.opt_state = OptState(s.exp_avg.copy(), s.exp_avg_sq.copy(), s.step)
    trial.rng = rng
    return trial


def lr_find(
    learn,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_it: int = 100,
    stop_div: bool = True,
    show_plot: bool = True,
    suggest_funcs=(valley,),
):
    """fastai's ``learn.lr_find()``: returns ``SuggestedLRs`` (a named tuple, ``.valley`` by default) and
    keeps the curve in ``learn.lr_finder`` (``learn.plot_lr_find(path)`` draws it; ``show_plot``
    displays it when running in a notebook). See the module docstring."""
    if not (0 < start_lr < end_lr < math.inf):
        raise ConfigError(f"lr_find needs 0 < start_lr < end_lr, got {start_lr!r} and {end_lr!r}")
    num_it = max(6, int(num_it))  # fastai's floor
    if learn.dls.n_train == 0:
        raise ConfigError("lr_find needs training ratings; this learner holds none (load_learner without dls=)")
    trial = _trial_learner(learn, num_it)
    lrs = start_lr * (end_lr / start_lr) ** (np.arange(num_it) / num_it)
    moms = np.full(num_it, learn.opt.mom)
    try:
        trial._fit(1, lambda a, b: (lrs[a:b], moms[a:b]), None)
    except DivergenceError:
        pass  # the losses up to the step that diverged are kept; the curve stops there anyway
    smoothed = _smoothed_until_divergence(getattr(trial, "step_losses", np.empty(0)), stop_div)
    recorded = lrs[: len(smoothed)].tolist()
    cut = slice(num_it // 10, -5)
    lrs_s, losses_s = np.asarray(recorded[cut]), np.asarray(smoothed[cut])
    bad = np.flatnonzero(~np.isfinite(losses_s))
    if len(bad):
        lrs_s, losses_s = lrs_s[: bad[0]], losses_s[: bad[0]]
    if len(losses_s) < 2:
        raise ConfigError(
            f"lr_find stopped after {len(smoothed)} steps, too few to suggest a rate: "
            "lower start_lr or pass stop_div=False"
        )
    names = [getattr(f, "__name__", getattr(getattr(f, "func", None), "__name__", "suggestion")) for f in suggest_funcs]
    results = [f(lrs_s, losses_s, num_it) for f in suggest_funcs]
    learn.lr_finder = LRFinderResult(recorded, smoothed, names, [point for _, point in results])
    if show_plot:
        _show_in_notebook(learn)
    return collections.namedtuple("SuggestedLRs", names)(*(lr for lr, _ in results))


def _show_in_notebook(learn) -> None:
    """Display the curve when running in a Jupyter kernel (elsewhere there is nowhere to show it)."""
    try:
        from IPython import get_ipython
        from IPython.display import Image, display
    except ImportError:
        return
    if get_ipython() is None:
        return
    import io

    from .plots import lr_find_figure

    buffer = io.BytesIO()
    lr_find_figure(learn.lr_finder).savefig(buffer, format="png", dpi=90)
    display(Image(data=buffer.getvalue()))
