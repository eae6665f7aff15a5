"""The command line's shared options and the validators that refuse bad settings before any work."""

from __future__ import annotations

import argparse
import re

from ..errors import ConfigError


def _number(text: str, convert, ok, what: str):
    """Parse ``text`` with ``convert`` and check it with ``ok``; NaN and inf fail every check below."""
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
    return value


def positive_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 1, "a positive integer")


def nonneg_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 0, "an integer >= 0")


def positive_float(text: str) -> float:
    return _number(text, float, lambda v: 0 < v < float("inf"), "a positive number")


def nonneg_float(text: str) -> float:
    return _number(text, float, lambda v: 0 <= v < float("inf"), "a number >= 0")


def seed(text: str) -> int:
    """``--seed``: an integer >= 0, as the library's ``seed=`` (NumPy's seeds are non-negative)."""
    return _number(text, int, lambda v: v >= 0, "an integer >= 0")


def finite_float(text: str) -> float:
    return _number(text, float, lambda v: abs(v) < float("inf"), "a finite number")


def fraction(text: str) -> float:
    value = nonneg_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text}")
    return value


class Parser(argparse.ArgumentParser):
    """argparse that exits with status 2 and a one-line message (its default is also 2).

    Negative numbers in any notation (``-1e3`` too, not only ``-5`` and ``-0.5``) are values, not options.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")

    def error(self, message):  # pragma: no cover - exercised through the CLI tests
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


def add_train_args(p: argparse.ArgumentParser, valid_pct: bool = True) -> None:
    """The recipe's hyper-parameters (defaults: the fastai book's seed recipe); ``valid_pct=False`` for
    commands whose validation rows are fixed (``cv``)."""
    g = p.add_argument_group("recipe (defaults: the fastai book's seed recipe)")
    g.add_argument(
        "--data",
        default=None,
        metavar="NAME",
        help="a MovieLens set by name: ml-100k (default), ml-1m, ml-10m, ml-20m, ml-25m, ml-latest-small",
    )
    g.add_argument("--epochs", type=positive_int, help="default 5 (per-rating: 12)")
    g.add_argument(
        "--lr",
        type=positive_float,
        help="peak learning rate of the one-cycle schedule (default 5e-3; per-rating: 0.02)",
    )
    g.add_argument("--wd", type=nonneg_float, help="weight decay, decoupled for Adam (default 0.1; per-rating: 0.08)")
    g.add_argument("--factors", type=positive_int, default=50, help="embedding size k")
    g.add_argument("--bs", type=positive_int, help="batch size (default 64; per-rating: 1)")
    g.add_argument(
        "--y-range",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        default=None,
        help="output range of the sigmoid (default: from the ratings, (0, 1.1 * max): (0, 5.5) for 1-5 stars)",
    )
    g.add_argument("--optimizer", choices=("adam", "sgd"), help="fastai's Adam or SGD (default adam; per-rating: sgd)")
    if valid_pct:
        g.add_argument(
            "--valid-pct",
            type=fraction,
            help="fraction of the ratings held out at random for validation (default 0.2; not with --split)",
        )
    g.add_argument("--seed", type=seed, default=42, help="fixes split, init and batch order (default 42)")
    g.add_argument(
        "--mode",
        choices=("exact", "sparse", "per-rating"),
        default="exact",
        help="exact: every row updated each step (the fastai recipe); sparse: only the batch's rows; "
        "per-rating: sparse mode with plain SGD and batches of one rating (a fused kernel, the fastest "
        "setting), by default its documented recipe lr 0.02, wd 0.08, 12 epochs (valid MSE 0.813 on "
        "ML-100k, seed 42)",
    )
    g.add_argument(
        "--backend",
        default="cpu",
        help="where the kernels run: cpu, parallel (every core), cuda (an NVIDIA GPU; needs the cuda "
        "extra), or dask (a Dask cluster, see --scheduler; needs the dask extra) (default cpu)",
    )
    g.add_argument(
        "--threads",
        type=positive_int,
        help="threads of the parallel backend (default: all the cores Numba sees)",
    )
    g.add_argument(
        "--per-rating-scheduler",
        choices=("dynamic", "barrier", "free"),
        help="how --backend parallel hands --mode per-rating's blocks to its threads: dynamic (default) or "
        "barrier give the same weights every run; free (LIBMF's rule: any block whose users and items no "
        "running block touches) keeps both threads busy when other work shares the cores, but its weights "
        "differ from run to run",
    )


def add_scheduler_arg(p: argparse.ArgumentParser) -> None:
    """``--scheduler`` of ``--backend dask``: a running scheduler's address, or ``local:N``."""
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="with --backend dask: the Dask scheduler to train on (tcp://HOST:8786), or local:N to start N "
        "single-thread worker processes on this machine for the run; --ratings FILE|FOLDER|GLOB is read "
        "by the workers",
    )


#: The defaults of the recipe options, and per-rating mode's documented recipe where it differs.
RECIPE = {"optimizer": "adam", "bs": 64, "lr": 5e-3, "wd": 0.1, "epochs": 5}
PER_RATING_RECIPE = {"optimizer": "sgd", "bs": 1, "lr": 0.02, "wd": 0.08, "epochs": 12}


def resolve_recipe(args) -> None:
    """Fill the recipe options not given: the seed recipe's, or per-rating mode's own.

    ``--mode per-rating`` is sparse mode with plain SGD and batches of one rating, so it refuses an
    ``--optimizer`` or ``--bs`` that says otherwise; ``--mode sparse --optimizer sgd --bs 1`` trains
    the same way.
    """
    defaults = PER_RATING_RECIPE if args.mode == "per-rating" else RECIPE
    if args.mode == "per-rating":
        for option, value in (("optimizer", "sgd"), ("bs", 1)):
            given = getattr(args, option)
            if given is not None and given != value:
                raise ConfigError(
                    f"--mode per-rating trains with --{option} {value}, not {given}; drop --{option} "
                    "(or use --mode sparse for other settings)"
                )
    for option, default in defaults.items():
        if getattr(args, option) is None:
            setattr(args, option, default)


def add_output_args(p: argparse.ArgumentParser, json_help: str):
    """The ``output`` group every training command has: ``--json`` and ``--quiet``."""
    out = p.add_argument_group("output")
    out.add_argument("--json", metavar="PATH", help=json_help)
    out.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return out


def add_debug_arg(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: without it the subcommand's default (False) would override 'mfscratch --debug CMD'.
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")


def add_data_args(p: argparse.ArgumentParser) -> None:
    """Where the ratings come from: a MovieLens set (``--data``, ``--split``) or any file (``--ratings``)."""
    g = p.add_argument_group("data (default: ML-100k with titles, a random 80/20 split)")
    g.add_argument(
        "--split",
        choices=("u1", "u2", "u3", "u4", "u5", "ua", "ub"),
        help="ML-100k's own base/test files instead of a random split (valid = the .test file)",
    )
    g.add_argument(
        "--ratings",
        metavar="FILE",
        help="a ratings file: CSV, TSV, ';', '|', '::' or space separated, or Parquet; gz/bz2/xz/zip/zst too",
    )
    g.add_argument(
        "--user-col", metavar="COL", help="user column of --ratings: a name or a 0-based position (default 0)"
    )
    g.add_argument("--item-col", metavar="COL", help="item column (default 1)")
    g.add_argument("--rating-col", metavar="COL", help="rating column (default 2)")
    g.add_argument(
        "--header",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="whether --ratings/--items start with a header line (default: detect)",
    )
    g.add_argument(
        "--encoding",
        metavar="NAME",
        help="encoding of --ratings/--items (default: a byte-order mark, else utf-8, cp1252, latin-1 in that order)",
    )
    g.add_argument(
        "--sep",
        metavar="SEP",
        help="column separator of --ratings/--items: ',' ';' '|' '::' or 'tab' (default: detect)",
    )
    g.add_argument(
        "--items", metavar="FILE", help="an items file whose titles name the items of --ratings (see --item-key)"
    )
    g.add_argument("--item-key", metavar="COL", help="column of --items matching the item column (default 0)")
    g.add_argument("--title-col", metavar="COL", help="column of --items holding the title (default 1)")


def add_usage_output_args(g) -> None:
    g.add_argument(
        "--ranking-k",
        type=positive_int,
        metavar="K",
        help="print precision@K, recall@K and NDCG@K on the validation split (--json always has them, K=10 by default)",
    )
    g.add_argument(
        "--ranking-threshold",
        type=finite_float,
        metavar="T",
        help="a validation rating >= T counts as relevant for the ranking metrics (default 4; with --ranking-k "
        "or --json)",
    )
    g.add_argument(
        "--ranking-users",
        type=ranking_users_arg,
        metavar="N|all",
        help="score N sampled validation users in the ranking metrics, or all of them (default: all while users x "
        "items is at most max(25 million, 5 x training ratings), else a seeded sample of that many scores' users)",
    )
    g.add_argument(
        "--plot", metavar="DIR", help="write losses.png, schedule.png and item_pca.png to DIR (needs matplotlib)"
    )


def ranking_users_arg(text: str):
    """``--ranking-users``: ``all`` or a positive number of users."""
    if text.strip().lower() == "all":
        return "all"
    return positive_int(text)


def check_y_range(y_range) -> tuple[float, float] | None:
    if y_range is None:
        return None  # derived from the data once it is read
    lo, hi = y_range
    if not lo < hi or abs(lo) == float("inf") or abs(hi) == float("inf"):
        raise ConfigError(f"--y-range needs finite LO < HI, got {lo} {hi}")
    from ..validate import check_y_range as check_library_range

    return check_library_range((lo, hi))
