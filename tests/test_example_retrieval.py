"""examples/multimodal_retrieval.ipynb runs top to bottom and shows its ranked gallery."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).parents[1] / "examples" / "multimodal_retrieval.ipynb"


def test_multimodal_retrieval_notebook_runs(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    printed = "".join(out.get("text", "") for out in outputs)
    for query in ("a red circle", "a blue square", "a yellow triangle"):
        assert f"'{query}': " in printed
    assert "all unit length: True" in printed
    assert "image/png" in outputs[-1]["data"]  # the ranked gallery grid
