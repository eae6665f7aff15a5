"""The notebook for people studying the maths runs top to bottom: on the real ML-100k when MFSCRATCH_DATA has it,
and on made-up ratings otherwise (an empty data folder), never downloading. Its outputs are not kept in git."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import ml100k_dir

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "notebooks" / "collab_from_scratch.ipynb"
REPO = NOTEBOOK.parents[2]


def test_the_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.parametrize("data", ["ml-100k", "made-up"])
def test_the_notebook_runs_top_to_bottom(data, tmp_path):
    if data == "ml-100k" and ml100k_dir() is None:
        pytest.skip("real ML-100k not found: set MFSCRATCH_DATA to a folder holding ml-100k/")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    if data == "made-up":
        env["MFSCRATCH_DATA"] = str(tmp_path / "no-data-here")
        env["MFSCRATCH_NOTEBOOK_EPOCHS"] = "2"
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": tmp_path}})
    client.execute(env=env)
    text = "\n".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert ("MovieLens 100k" if data == "ml-100k" else "made-up MovieLens-like ratings") in text
    assert "all four gradients agree" in text and "analytic" in text
    assert not (tmp_path / "no-data-here").exists()  # nothing was downloaded
