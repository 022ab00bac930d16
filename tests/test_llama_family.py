"""Llama, Mistral and Qwen2 against transformers (float32, tiny random models).

Architectures: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM.
"""

import pytest
from hf_reference import assert_matches_hf
from transformers import MistralConfig, Qwen2Config

from intarsia.tiny_models import tiny_llama_config

COMMON = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
              bos_token_id=0, eos_token_id=1, pad_token_id=2)


def test_llama(tmp_path):
    assert_matches_hf(tiny_llama_config(), tmp_path)


def test_llama_tied_embeddings_and_mha(tmp_path):
    assert_matches_hf(tiny_llama_config(tie_word_embeddings=True, num_key_value_heads=4,
                                        num_hidden_layers=3), tmp_path,
                      engine_variants=[{}])


@pytest.mark.parametrize("rope_parameters", [
    {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
     "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
    {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0},
    {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
], ids=["llama3", "linear", "dynamic"])
def test_llama_rope_scaling(tmp_path, rope_parameters):
    assert_matches_hf(tiny_llama_config(rope_parameters=rope_parameters), tmp_path,
                      engine_variants=[{}])


def test_mistral_sliding_window(tmp_path):
    # A window shorter than the long prompt, so the mask matters.
    assert_matches_hf(MistralConfig(**COMMON, sliding_window=20), tmp_path)


def test_qwen2_qkv_bias(tmp_path):
    assert_matches_hf(Qwen2Config(**COMMON, tie_word_embeddings=True), tmp_path)


def test_qwen2_sliding_upper_layers(tmp_path):
    config = Qwen2Config(**{**COMMON, "num_hidden_layers": 3}, use_sliding_window=True,
                         sliding_window=20, max_window_layers=1)
    assert config.sliding_window == 20 and "sliding_attention" in config.layer_types
    assert_matches_hf(config, tmp_path, engine_variants=[{}])
