"""The tutorial notebooks: stored clean, and each one runs top to bottom (quick sizes, offline).

The Qwen notebooks load the packaged Qwen2.5-Coder-0.5B-Instruct and take about two minutes each on a CPU
with `SN_TUTORIAL_QUICK=1`; they are marked slow. The closed-form notebook needs no model (seconds).
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
QWEN_NOTEBOOKS = ["01_find_safety_neurons.ipynb", "02_edit_evaluate_revert.ipynb"]
MODEL_FREE_NOTEBOOKS = ["03_closed_form_step_by_step.ipynb"]
ALL_NOTEBOOKS = QWEN_NOTEBOOKS + MODEL_FREE_NOTEBOOKS


def _read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(TUTORIALS / name, as_version=4)


def execute(name: str, workdir: Path, monkeypatch: pytest.MonkeyPatch, timeout: int = 900) -> nbformat.NotebookNode:
    """Run a notebook in a fresh `python3` kernel whose working directory is `workdir`; raise on any error."""
    nbclient = pytest.importorskip("nbclient")
    # the kernel is a child process: it inherits this environment
    monkeypatch.setenv("SN_TUTORIAL_QUICK", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # one thread per BLAS call unless told otherwise: much faster on a small, shared CPU
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    nb = _read(name)
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=timeout, allow_errors=False, resources={"metadata": {"path": str(workdir)}}
    )
    client.execute()
    return nb


def _printed(nb: nbformat.NotebookNode) -> str:
    """Everything the executed notebook's code cells printed (their stdout streams)."""
    return "".join(
        o.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for o in cell.get("outputs", [])
        if o.get("output_type") == "stream" and o.get("name") == "stdout"
    )


def _ran_every_cell(nb: nbformat.NotebookNode) -> bool:
    counts = [cell.get("execution_count") for cell in nb.cells if cell.cell_type == "code"]
    return counts == list(range(1, len(counts) + 1))


# --- stored form (fast) -----------------------------------------------------------------------------------
def test_every_tutorial_is_tested():
    assert sorted(p.name for p in TUTORIALS.glob("*.ipynb")) == sorted(ALL_NOTEBOOKS)


@pytest.mark.parametrize("name", ALL_NOTEBOOKS)
def test_notebook_is_stored_clean(name):
    nb = _read(name)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and any(c.cell_type == "markdown" for c in nb.cells)
    for i, cell in enumerate(code):
        assert cell.get("outputs") == [], f"{name}: code cell {i} has stored outputs; clear them before saving"
        assert cell.get("execution_count") is None, f"{name}: code cell {i} has an execution count"


@pytest.mark.parametrize("name", QWEN_NOTEBOOKS)
def test_qwen_notebook_has_a_quick_mode(name):
    source = "\n".join(c.source for c in _read(name).cells if c.cell_type == "code")
    assert 'os.environ.get("SN_TUTORIAL_QUICK") == "1"' in source


# --- execution ----------------------------------------------------------------------------------------------
# `execute` raises at the first cell that fails (allow_errors=False), so a test reaching its asserts has run every
# cell; what they check is what the notebooks print without asserting it (a False there would not stop them).
# The checks each notebook's run must print, the facts the tutorial's text relies on:
PRINTED = {
    "01_find_safety_neurons.ipynb": ["ranking-qwen → SafetyNeurons("],
    "02_edit_evaluate_revert.ipynb": [
        "every tensor bit-identical to before: True",
        "same uid: True | same fingerprint: True",
        "loaded edit gives bit-identical weights: True",
        "EditError: edit",
    ],
    "03_closed_form_step_by_step.ipynb": ["same subspace: True", "ΔW lies in span(U0): True", "ValueError:"],
}


def test_every_notebook_prints_the_checks_its_run_looks_for():
    """Each label of `PRINTED` is still in the notebook's code (a renamed print would make its check fail slowly)."""
    assert set(PRINTED) == set(ALL_NOTEBOOKS)
    for name, expected in PRINTED.items():
        source = "\n".join(c.source for c in _read(name).cells if c.cell_type == "code")
        assert [x for x in expected if x.split(":")[0].split(" → ")[0] not in source] == [], name


def test_a_failing_cell_fails_the_run(tmp_path, monkeypatch):
    """The harness itself: a notebook whose second cell raises makes `execute` raise, naming the error."""
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("raise ValueError('broken tutorial')")]
    )
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    monkeypatch.setattr(nbformat, "read", lambda *args, **kwargs: nb)
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="broken tutorial"):
        execute("broken.ipynb", tmp_path, monkeypatch, timeout=120)


@pytest.mark.parametrize("name", MODEL_FREE_NOTEBOOKS)
def test_model_free_notebook_runs(name, tmp_path, monkeypatch):
    nb = execute(name, tmp_path, monkeypatch, timeout=300)
    assert _ran_every_cell(nb)
    printed = _printed(nb)
    assert [line for line in PRINTED[name] if line not in printed] == []


@pytest.mark.slow
@pytest.mark.parametrize("name", QWEN_NOTEBOOKS)
def test_qwen_notebook_runs(name, tmp_path, monkeypatch):
    nb = execute(name, tmp_path, monkeypatch)
    assert _ran_every_cell(nb)
    printed = _printed(nb)
    assert [line for line in PRINTED[name] if line not in printed] == []
    # the notebooks write their files (ranking, edit) to the working directory, not into the repository
    assert any(tmp_path.iterdir())
