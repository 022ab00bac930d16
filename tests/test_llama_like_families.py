"""Llama-like families against transformers (float32, tiny random models), each
config chosen to exercise what sets the family apart.

Architectures: CohereForCausalLM, GemmaForCausalLM, Gemma2ForCausalLM, GraniteForCausalLM,
NemotronForCausalLM, OlmoForCausalLM, Phi3ForCausalLM, Starcoder2ForCausalLM.
"""

import pytest
import torch
from hf_reference import assert_matches_hf
from safetensors import safe_open
from transformers import (
    CohereConfig,
    Gemma2Config,
    GemmaConfig,
    GraniteConfig,
    NemotronConfig,
    OlmoConfig,
    Phi3Config,
    Starcoder2Config,
)
from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding

from intarsia.backbones.gemma import Gemma2ForCausalLM
from intarsia.backbones.phi3 import Phi3ForCausalLM
from intarsia.engine.registry import resolve

COMMON = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
              bos_token_id=0, eos_token_id=1, pad_token_id=2)


def test_gemma_mqa_wide_heads_tied(tmp_path):
    # head_dim 32 != hidden / heads = 16; one KV head; tied embeddings (Gemma's default).
    config = GemmaConfig(**{**COMMON, "num_key_value_heads": 1}, head_dim=32,
                         hidden_act="gelu_pytorch_tanh")
    assert config.tie_word_embeddings
    assert_matches_hf(config, tmp_path)


def test_gemma2_softcaps_alternating_window(tmp_path):
    # Small caps so that tanh bends the scores; a window shorter than the long prompt on
    # the sliding layers only; query_pre_attn_scalar != head_dim; untied head.
    config = Gemma2Config(**{**COMMON, "num_hidden_layers": 3}, head_dim=16, sliding_window=20,
                          attn_logit_softcapping=2.0, final_logit_softcapping=5.0,
                          query_pre_attn_scalar=24, tie_word_embeddings=False)
    assert config.layer_types == ["sliding_attention", "full_attention", "sliding_attention"]
    assert_matches_hf(config, tmp_path)


def test_cohere_parallel_residual_qk_norm(tmp_path):
    # Per-head QK LayerNorm, biased attention, GQA, interleaved rotary, scaled logits.
    config = CohereConfig(**COMMON, use_qk_norm=True, attention_bias=True, logit_scale=0.5)
    assert config.tie_word_embeddings
    assert_matches_hf(config, tmp_path)


def test_cohere_without_qk_norm(tmp_path):
    assert_matches_hf(CohereConfig(**COMMON, logit_scale=0.5), tmp_path, engine_variants=[{}])


def test_granite_multipliers(tmp_path):
    config = GraniteConfig(**COMMON, embedding_multiplier=12.0, attention_multiplier=0.1,
                           residual_multiplier=0.22, logits_scaling=2.0, attention_bias=True)
    assert_matches_hf(config, tmp_path)


def test_nemotron_layernorm1p_relu2_partial_rotary(tmp_path):
    config = NemotronConfig(**COMMON, hidden_act="relu2", attention_bias=True, mlp_bias=True)
    assert config.rope_parameters["partial_rotary_factor"] == 0.5
    assert_matches_hf(config, tmp_path)


def test_olmo_nonparametric_norm_clip_qkv(tmp_path):
    # q/k/v are of order one here, so a clip at 0.5 changes many of them.
    assert_matches_hf(OlmoConfig(**COMMON, clip_qkv=0.5), tmp_path)


def test_phi3_fused_checkpoint_longrope_partial_rotary_sliding_window(tmp_path):
    # Rotary on half of each 16-wide head: 4 frequencies, each with its own short and
    # long factor. All sequences stay under original_max_position_embeddings, where
    # transformers uses the short factors (and the attention factor of the 4x extension).
    rope = {"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
            "short_factor": [1.0, 1.3, 2.1, 3.4], "long_factor": [1.5, 2.5, 4.0, 8.0]}
    config = Phi3Config(**COMMON, rope_parameters=rope, original_max_position_embeddings=128,
                        sliding_window=20)
    path = assert_matches_hf(config, tmp_path).engine.config.model_path
    with safe_open(path / "model.safetensors", "pt") as f:
        assert "model.layers.0.self_attn.qkv_proj.weight" in f.keys()  # noqa: SIM118 (not a dict)


def test_phi3_longrope_table_across_original_length():
    # Position p rotates with the frequencies transformers uses for a step whose last
    # position is p: short factors up to original_max_position_embeddings, long ones past
    # it, and the attention factor of the extension throughout. (Past that length
    # transformers' generate recomputes the whole cache with the long factors; a paged
    # cache keeps the earlier keys, so only prompts within it match token for token.)
    rope = {"rope_type": "longrope", "rope_theta": 10000.0,
            "short_factor": [1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0],
            "long_factor": [1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0]}
    config = Phi3Config(**COMMON, rope_parameters=rope, original_max_position_embeddings=24)
    table = Phi3ForCausalLM.adapt(config, 64).rope.cos_sin_cache
    hf_rotary = Phi3RotaryEmbedding(config)
    for position in range(64):
        cos, sin = hf_rotary(table, torch.tensor([[position]]))
        expected = torch.cat((cos[0, 0, :8], sin[0, 0, :8]))
        torch.testing.assert_close(table[position], expected, rtol=0, atol=1e-6,
                                   msg=f"position {position}")


def test_starcoder2_biases_plain_gelu_sliding_window(tmp_path):
    config = Starcoder2Config(**COMMON, sliding_window=20, use_bias=True, hidden_act="gelu_pytorch_tanh")
    assert config.tie_word_embeddings
    assert_matches_hf(config, tmp_path)


def test_vllm_spelling_of_olmo_resolves():
    assert resolve(["OLMoForCausalLM"])[1].cls is resolve(["OlmoForCausalLM"])[1].cls


def test_gemma2_bidirectional_attention_is_refused():
    config = Gemma2Config(**COMMON, head_dim=16, use_bidirectional_attention=True)
    with pytest.raises(ValueError, match="use_bidirectional_attention"):
        Gemma2ForCausalLM.adapt(config, 64)
