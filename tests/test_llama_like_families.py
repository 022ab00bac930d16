"""Llama-like families against transformers (float32, tiny random models), each
config chosen to exercise what sets the family apart."""

from hf_reference import assert_matches_hf
from transformers import CohereConfig, Gemma2Config, GemmaConfig, GraniteConfig

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
