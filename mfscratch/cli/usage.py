"""The commands that use a saved model: ``recommend``, ``similar``, ``biases``, ``predict``."""

from __future__ import annotations

from .args import add_debug_arg, nonneg_int, positive_int


def add_usage_commands(sub) -> None:
    def model_cmd(name, help_, func):
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--model", required=True, metavar="PATH", help="a model saved by 'mfscratch train --save'")
        add_debug_arg(p)
        p.set_defaults(func=func)
        return p

    p = model_cmd("recommend", "a user's top-N unseen items with their predicted ratings", cmd_recommend)
    p.add_argument("--user", required=True, help="the user's id as in the ratings")
    p.add_argument("-n", type=positive_int, default=10, help="how many items (default 10)")
    p = model_cmd("similar", "the items nearest to one item by cosine similarity of their embeddings", cmd_similar)
    p.add_argument("item", metavar="TITLE", help="the item's name (MovieLens: the title with its year)")
    p.add_argument("-n", type=positive_int, default=10, help="how many items (default 10)")
    p.add_argument(
        "--min-ratings",
        type=nonneg_int,
        default=0,
        metavar="N",
        help="skip items rated fewer than N times in training: their embeddings are mostly noise",
    )
    p = model_cmd("biases", "the items with the highest and lowest learned bias", cmd_biases)
    p.add_argument("-n", type=positive_int, default=10, help="how many of each (default 10)")
    p = model_cmd(
        "predict", "predicted ratings of one user for some items (unknown ones fall back to biases)", cmd_predict
    )
    p.add_argument("--user", required=True, help="the user's id as in the ratings")
    p.add_argument("items", nargs="+", metavar="ITEM", help="item names")


def _print_frame(df, empty: str) -> None:
    if len(df) == 0:
        print(empty)
    else:
        print(df.to_string(index=False, float_format=lambda v: f"{v:.4f}"))


def cmd_recommend(args) -> int:
    from ..analysis import Trained

    _print_frame(Trained.load(args.model).recommend(args.user, args.n), "no unseen items left to recommend")
    return 0


def cmd_similar(args) -> int:
    from ..analysis import Trained

    df = Trained.load(args.model).similar(args.item, args.n, args.min_ratings)
    _print_frame(df, f"no item is rated at least {args.min_ratings} times")
    return 0


def cmd_biases(args) -> int:
    from ..analysis import Trained

    _print_frame(Trained.load(args.model).biases(args.n), "the model has no items")
    return 0


def cmd_predict(args) -> int:
    import pandas as pd

    from ..analysis import Trained

    preds = Trained.load(args.model).predict([args.user] * len(args.items), args.items)
    _print_frame(pd.DataFrame({"item": args.items, "predicted_rating": preds}), "")
    return 0
