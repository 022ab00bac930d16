import pytest

from intarsia.tiny_models import save_tiny_model, tiny_llama_config


@pytest.fixture(scope="session")
def tiny_llama_path(tmp_path_factory):
    """A saved tiny random Llama checkpoint shared by the engine tests."""
    return save_tiny_model(tiny_llama_config(), tmp_path_factory.mktemp("tiny_llama"))
