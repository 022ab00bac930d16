"""Mixture-of-experts and latent-attention families against transformers (float32,
tiny random models, 4-8 experts, top-2)."""

from hf_reference import assert_matches_hf
from transformers import (
    DbrxConfig,
    GraniteMoeConfig,
    MixtralConfig,
    OlmoeConfig,
    PhimoeConfig,
    Qwen2MoeConfig,
)

COMMON = dict(vocab_size=512, hidden_size=64, intermediate_size=48, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
              bos_token_id=0, eos_token_id=1, pad_token_id=2)


def test_mixtral(tmp_path):
    assert_matches_hf(MixtralConfig(**COMMON, num_local_experts=8, num_experts_per_tok=2), tmp_path)


def test_qwen2_moe_shared_expert_and_dense_layer(tmp_path):
    # Layer 1 is sparse (decoder_sparse_step=1) but listed dense; unnormalised top-k.
    config = Qwen2MoeConfig(**{**COMMON, "num_hidden_layers": 3}, num_experts=6, num_experts_per_tok=2,
                            moe_intermediate_size=32, shared_expert_intermediate_size=40,
                            mlp_only_layers=[1], norm_topk_prob=False)
    assert_matches_hf(config, tmp_path)


def test_olmoe_qk_norm_and_clip(tmp_path):
    config = OlmoeConfig(**COMMON, num_experts=8, num_experts_per_tok=2, norm_topk_prob=True,
                         clip_qkv=2.0)
    assert_matches_hf(config, tmp_path, engine_variants=[{}])


def test_granitemoe_multipliers(tmp_path):
    config = GraniteMoeConfig(**COMMON, num_local_experts=4, num_experts_per_tok=2,
                              embedding_multiplier=6.0, attention_multiplier=0.1,
                              residual_multiplier=0.5, logits_scaling=4.0, tie_word_embeddings=True)
    assert_matches_hf(config, tmp_path, engine_variants=[{}])


def test_phimoe_sparsemixer_layernorm_longrope(tmp_path):
    # Sequences stay within original_max_position_embeddings: short factors and short_mscale.
    half = COMMON["hidden_size"] // COMMON["num_attention_heads"] // 2
    rope = {"rope_type": "longrope", "rope_theta": 10000.0, "original_max_position_embeddings": 128,
            "short_factor": [1.0 + i / 8 for i in range(half)], "long_factor": [2.0 + i for i in range(half)],
            "short_mscale": 1.2, "long_mscale": 1.4}
    config = PhimoeConfig(**COMMON, num_local_experts=4, num_experts_per_tok=2, attention_bias=True,
                          lm_head_bias=True, rope_parameters=rope, router_jitter_noise=0.3)
    assert_matches_hf(config, tmp_path, engine_variants=[{}])


def test_dbrx_packed_experts_clip_qkv_pnorm(tmp_path):
    # The rope theta is given twice: transformers reads the top level, DBRX's checkpoints attn_config.
    config = DbrxConfig(vocab_size=512, d_model=64, n_heads=4, n_layers=2, max_seq_len=512,
                        attn_config={"kv_n_heads": 2, "clip_qkv": 1.5, "rope_theta": 20000.0},
                        ffn_config={"ffn_hidden_size": 48, "moe_num_experts": 4, "moe_top_k": 2,
                                    "moe_normalize_expert_weights": 2.0},
                        rope_parameters={"rope_type": "default", "rope_theta": 20000.0},
                        bos_token_id=0, eos_token_id=1, pad_token_id=2)
    assert_matches_hf(config, tmp_path, engine_variants=[{}])
