"""The user docs speak the user's language and stand on their own: no project-internal words, no paths outside
the repository, relative links that resolve inside it, and README examples that are the tested ones."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
NOTEBOOKS = sorted((REPO / "docs").rglob("*.ipynb"))
FORBIDDEN = re.compile(r"\b(contract|session|lent)\b|\.\./shared", re.IGNORECASE)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def texts():
    for path in DOCS:
        yield path, path.read_text(encoding="utf-8")
    for path in NOTEBOOKS:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        yield path, "\n".join("".join(c["source"]) for c in cells)


@pytest.mark.parametrize("path,text", list(texts()), ids=lambda v: v.name if isinstance(v, Path) else "")
def test_no_internal_words_or_outside_paths(path, text):
    found = [(text.count("\n", 0, m.start()) + 1, m.group(0)) for m in FORBIDDEN.finditer(text)]
    assert not found, f"{path.relative_to(REPO)}: {found}"


@pytest.mark.parametrize("path,text", list(texts()), ids=lambda v: v.name if isinstance(v, Path) else "")
def test_relative_links_resolve_inside_the_repository(path, text):
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z+.-]*:", target) or target.startswith("#"):
            continue  # a web address or an anchor on the same page
        resolved = (path.parent / target.split("#")[0]).resolve()
        assert resolved.is_relative_to(REPO), f"{path.relative_to(REPO)} links outside the repository: {target}"
        assert resolved.exists(), f"{path.relative_to(REPO)} links to a missing {target}"


def test_readme_seed_snippet_is_the_tested_script():
    from test_seed_recipe import SEED_SCRIPT

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## The seed notebook, with NumPy.*?```python\n(.*?)```", readme, re.S).group(1)
    assert block in textwrap.dedent(SEED_SCRIPT)
    assert block.rstrip().splitlines()[-1].startswith("print(dls.classes['title'][np.argsort(-distances)[1]])")


def test_readme_shows_the_ways_in():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for snippet in (
        "learn.export(",
        "load_learner(",
        "learn.save(",
        "learn.load(",
        "CollabRegressor",
        "GridSearchCV",
        "mfscratch.fit(",
        "EarlyStoppingCallback",
        "--early-stop",
        "docs/notebooks/collab_from_scratch.ipynb",
    ):
        assert snippet in readme, snippet
