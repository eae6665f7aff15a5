"""From the names people type to codes: users by id, items by id or title.

One lookup serves ``predict``, ``similar`` and ``recommend``, in the library and on the command line.

* **Exact.** A name as it appears in the data finds its item; so does an id typed as text
  (``"196"`` finds the integer user ``196``, and the integer ``5`` finds the item ``"5"``).
  Code 0 (``#na#``) is never a match.
* **A title shared by several items.** Where two different items carry one title, the data keep them
  apart by their ids, ``"Emma (1996) [id 838]"`` and ``"Emma (1996) [id 1045]"`` (see
  ``readers.attach_titles``). The bare title then lists them with their ids and asks for one
  (:class:`AmbiguousName`); the listed name, with its id, chooses it. A bare title that only one
  item carries is that item.
* **A near miss.** A title that matches a known one up to case, spacing, a leading or trailing
  article (``"The Silence of the Lambs"``) or the year is a typo, not a new item: every command
  stops with ``did you mean ...?`` naming the candidates (:class:`UnknownName`).
* **Unknown.** Anything else is a name the model has not seen. What happens then is the caller's
  choice: ``similar`` stops with the closest names (:func:`unknown_item_error`), ``predict`` and
  ``recommend`` fall back to the known biases with a note (see ``analysis.py``).
"""

from __future__ import annotations

import difflib
import re

from .errors import ConfigError

__all__ = ["lookup", "find_item", "item_code", "unknown_item_error", "AmbiguousName", "UnknownName", "has_na"]

_ID_SUFFIX = re.compile(r"\s*\[id ([^\]]*)\]$")
_YEAR = re.compile(r"\s*\(\d{4}\)$")
_ARTICLES = ("the", "a", "an")


class AmbiguousName(ConfigError):
    """A title that several items carry; the message lists them with their ids."""


class UnknownName(ConfigError):
    """A name that is not in the vocabulary; the message suggests the closest ones."""


def has_na(vocab) -> bool:
    """Whether code 0 is fastai's ``#na#`` (the "unknown" slot, never a real user or item)."""
    return len(vocab) > 0 and vocab[0] == "#na#"


def lookup(vocab, value) -> int | None:
    """The code of ``value`` in ``vocab`` by exact match, or ``None`` (never code 0, ``#na#``).

    Values typed on a command line arrive as text: ``"196"`` also finds the integer ``196``, and an
    integer also finds its text. An integer is always an id from the data, never a code.
    """
    candidates = [value]
    if isinstance(value, str):
        text = value.strip()
        candidates.append(text)
        for conv in (int, float):
            try:
                candidates.append(conv(text))
            except ValueError:
                pass
    else:
        candidates.append(str(value))
    o2i = vocab.o2i
    for c in candidates:
        try:
            code = o2i.get(c)
        except TypeError:  # an unhashable value (a list) is no name
            return None
        if code is not None and not (code == 0 and has_na(vocab)):
            return int(code)
    return None


def _base_title(name: str) -> str:
    """The title without the ``[id KEY]`` that tells apart items sharing it."""
    return _ID_SUFFIX.sub("", name)


def _loose_key(name: str) -> str:
    """A title reduced to what a typo does not change: case, spacing, the year, a leading or trailing article."""
    text = _YEAR.sub("", _base_title(str(name)))
    words = text.casefold().replace(",", " , ").split()
    if words and words[0] in _ARTICLES:
        words = words[1:]
    if len(words) >= 2 and words[-2] == "," and words[-1] in _ARTICLES:  # "Silence of the Lambs, The"
        words = words[:-2]
    return " ".join(words).replace(" ,", ",")


class _Index:
    """Per-vocabulary maps from a bare title and from a loose key to the codes that carry it."""

    def __init__(self, vocab) -> None:
        self.by_base: dict[str, list[int]] = {}
        self.by_key: dict[str, list[int]] = {}
        for code in range(1 if has_na(vocab) else 0, len(vocab)):
            name = str(vocab[code])
            base = _base_title(name)
            if base != name:
                self.by_base.setdefault(base, []).append(code)
            self.by_key.setdefault(_loose_key(name), []).append(code)


def _index(vocab) -> _Index:
    index = getattr(vocab, "_name_index", None)
    if index is None:
        index = _Index(vocab)
        try:
            vocab._name_index = index  # built once per vocabulary, on the first name not found exactly
        except AttributeError:  # a plain list
            pass
    return index


def _listing(vocab, codes) -> str:
    names = [repr(str(vocab[c])) for c in codes[:5]]
    return ", ".join(names) + (f" and {len(codes) - 5} more" if len(codes) > 5 else "")


def find_item(vocab, name) -> int | None:
    """The code of item ``name`` (see the module docstring), or ``None`` when it is unknown.

    Raises :class:`AmbiguousName` for a title several items share and :class:`UnknownName` for a
    near miss of a known title.
    """
    code = lookup(vocab, name)
    if code is not None or not isinstance(name, str):
        return code
    index = _index(vocab)
    shared = index.by_base.get(name.strip(), [])
    if len(shared) == 1:
        return shared[0]
    if shared:
        raise AmbiguousName(
            f"{len(shared)} items share the title {name!r}: {_listing(vocab, shared)}; "
            "name the one you mean as listed, with its id"
        )
    near = index.by_key.get(_loose_key(name), [])
    if near:
        raise UnknownName(f"item {name!r} is not in the model's vocabulary; did you mean {_listing(vocab, near)}?")
    return None


def unknown_item_error(vocab, name) -> UnknownName:
    """The error for an item that must exist (``similar``): the closest known names, if any."""
    names = [str(v) for v in vocab[1 if has_na(vocab) else 0 :]]
    close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.6)
    hint = (
        f"; did you mean {' or '.join(repr(c) for c in close)}?"
        if close
        else " (check the spelling; MovieLens titles include the year)"
    )
    return UnknownName(f"item {name!r} is not in the model's vocabulary{hint}")


def item_code(vocab, name) -> int:
    """The code of an item that must exist: :func:`find_item`, and :func:`unknown_item_error` when unknown."""
    code = find_item(vocab, name)
    if code is None:
        raise unknown_item_error(vocab, name)
    return code
