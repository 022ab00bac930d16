"""The example notebooks in examples/ run top to bottom and show what they promise."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

EXAMPLES = Path(__file__).parents[1] / "examples"


def run_notebook(name: str, tmp_path: Path) -> tuple[str, list[dict]]:
    """Execute a notebook in `tmp_path`; returns its printed text and all cell outputs."""
    notebook = nbformat.read(EXAMPLES / name, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    return "".join(out.get("text", "") for out in outputs), outputs


def test_multimodal_generate_notebook(tmp_path):
    printed, outputs = run_notebook("multimodal_generate.ipynb", tmp_path)
    assert "architecture: Qwen2VLForConditionalGeneration" in printed
    assert any("image/png" in out.get("data", {}) for out in outputs)  # the drawn image is shown
    for expected in ("completion: '", "video prompt tokens:", "rejected: {1: 'cannot decode image",
                     "finished anyway: '", "items encoded so far:"):
        assert expected in printed, expected
    assert printed.count(" prompt tokens -> ") == 3


def test_multimodal_retrieval_notebook(tmp_path):
    printed, outputs = run_notebook("multimodal_retrieval.ipynb", tmp_path)
    for query in ("a red circle", "a blue square", "a yellow triangle"):
        assert f"'{query}': " in printed
    assert "all unit length: True" in printed
    assert "image/png" in outputs[-1]["data"]  # the ranked gallery grid
