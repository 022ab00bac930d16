"""examples/multimodal_generate.ipynb runs top to bottom and shows each call's result."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).parents[1] / "examples" / "multimodal_generate.ipynb"


def test_multimodal_generate_notebook_runs(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    printed = "".join(out.get("text", "") for out in outputs)
    assert "architecture: Qwen2VLForConditionalGeneration" in printed
    assert any("image/png" in out.get("data", {}) for out in outputs)  # the drawn image is shown
    for expected in ("completion: '", "video prompt tokens:", "rejected: {1: 'cannot decode image",
                     "finished anyway: '", "items encoded so far:"):
        assert expected in printed, expected
    assert printed.count(" prompt tokens -> ") == 3
