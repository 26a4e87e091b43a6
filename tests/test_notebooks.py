"""The analyst notebooks in ``notebooks/`` run top to bottom, and are committed clean.

Each notebook is executed with nbclient in a kernel of *this* interpreter (the
project's virtual environment, whatever kernelspecs the machine has), against
the demo catalog served on loopback by the notebook itself
(:func:`geoseg.notebook.demo_servers`). A cell that raises fails the test, and
so does a notebook that takes longer than its budget. The products a notebook
writes go to a temporary directory (``GEOSEG_NOTEBOOK_OUT``).

A separate check fails when a notebook is committed with outputs or execution
counts: notebooks are source, their figures are made by running them.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))

#: Seconds a whole notebook may take on 2 loaded CPU cores (each takes well under 2 minutes).
BUDGET_S = 300
#: Seconds one cell may take.
CELL_TIMEOUT_S = 240


def test_the_three_analyst_notebooks_exist():
    names = {p.name for p in PATHS}
    assert {"01_explore_catalog.ipynb", "02_segment_region.ipynb", "03_change_between_dates.ipynb"} <= names


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_committed_without_outputs(path):
    nb = json.loads(path.read_text())
    dirty = [i for i, cell in enumerate(nb["cells"]) if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert not dirty, (
        f"{path.name}: code cells {dirty} carry outputs or execution counts; "
        f"strip them before committing: python -m geoseg.notebook strip notebooks/{path.name}"
    )


def _kernel_manager():
    """A kernel manager that starts ipykernel on this very interpreter
    (ignoring any user or system kernelspec that points at another Python)."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    return KernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_notebook_runs_top_to_bottom(path, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="notebook tests need the dev extra: pip install -e '.[dev]'")
    nbclient = pytest.importorskip("nbclient", reason="notebook tests need the dev extra: pip install -e '.[dev]'")
    monkeypatch.setenv("GEOSEG_NOTEBOOK_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(path, as_version=4)
    km = _kernel_manager()
    assert km.kernel_spec.argv[0] == sys.executable
    client = nbclient.NotebookClient(nb, km=km, timeout=CELL_TIMEOUT_S, allow_errors=False,
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    start = time.monotonic()
    try:
        client.execute()  # raises CellExecutionError naming the cell and its traceback
    finally:
        if km.has_kernel:  # nbclient leaves a kernel it was handed running
            km.shutdown_kernel(now=False)
    took = time.monotonic() - start
    assert took < BUDGET_S, f"{path.name} took {took:.0f} s (budget {BUDGET_S} s on 2 cores)"
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert images >= 2, f"{path.name} drew {images} figures; the notebooks are meant to show real plots"
