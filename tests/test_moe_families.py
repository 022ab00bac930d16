"""Mixture-of-experts and latent-attention families against transformers (float32,
tiny random models, 4-8 experts, top-2), their checkpoint layouts and config errors.

Architectures: MixtralForCausalLM, Qwen2MoeForCausalLM, OlmoeForCausalLM,
GraniteMoeForCausalLM, PhimoeForCausalLM, DbrxForCausalLM, DeepseekV2ForCausalLM,
MiniCPM3ForCausalLM.
"""

import pytest
import torch
from hf_reference import assert_matches_hf
from transformers import (
    AutoModelForCausalLM,
    DbrxConfig,
    DeepseekV2Config,
    GraniteMoeConfig,
    MiniCPM3Config,
    MixtralConfig,
    OlmoeConfig,
    PhimoeConfig,
    Qwen2MoeConfig,
)

from intarsia import LLM
from intarsia.backbones.moe import MoEArgs
from intarsia.engine.loader import iterate_weights
from intarsia.engine.registry import resolve
from intarsia.tiny_models import save_tiny_model

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


MLA = dict(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
           num_attention_heads=4, max_position_embeddings=512, kv_lora_rank=24, qk_nope_head_dim=16,
           qk_rope_head_dim=8, bos_token_id=0, eos_token_id=1, pad_token_id=2)
YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 128,
        "mscale": 0.707, "mscale_all_dim": 0.707, "beta_fast": 32, "beta_slow": 1}


@pytest.mark.parametrize("variant", [
    # Low-rank q, v narrower than q/k (padded V), yarn, group-limited routing, a dense first layer.
    dict(q_lora_rank=32, v_head_dim=12, rope_parameters=YARN, topk_method="group_limited_greedy",
         n_group=2, topk_group=1, routed_scaling_factor=1.5, first_k_dense_replace=1),
    # Full-rank q (V2-Lite), v wider than q/k (padded q and k), greedy routing, all layers MoE.
    dict(q_lora_rank=None, v_head_dim=32, topk_method="greedy", first_k_dense_replace=0),
], ids=["lora_q-yarn-grouped", "full_q-greedy"])
def test_deepseek_v2_latent_attention_moe(tmp_path, variant):
    config = DeepseekV2Config(**MLA, **variant, moe_intermediate_size=32, n_routed_experts=8,
                              num_experts_per_tok=2, n_shared_experts=2)
    assert_matches_hf(config, tmp_path, engine_variants=[{}])


def test_minicpm3_latent_attention_scaling(tmp_path):
    config = MiniCPM3Config(**MLA, q_lora_rank=32, v_head_dim=16, scale_emb=12.0, scale_depth=1.4,
                            dim_model_base=32, tie_word_embeddings=True)
    assert_matches_hf(config, tmp_path)


@pytest.mark.parametrize("config", [
    MixtralConfig(**COMMON, num_local_experts=4, num_experts_per_tok=2),
    DeepseekV2Config(**MLA, q_lora_rank=None, v_head_dim=16, moe_intermediate_size=32, n_routed_experts=4,
                     num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=1),
], ids=["mixtral", "deepseek_v2"])
def test_stacked_and_per_expert_layouts_load_alike(tmp_path, config):
    """transformers 5 keeps experts stacked in memory ([E, 2I, H]) and saves them one
    tensor per expert; both load into the same parameters (benchmarks load the former)."""
    path = save_tiny_model(config, tmp_path / "model")
    from_disk = LLM(str(path), dtype="float32", device="cpu").engine.runner.model
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    stacked = hf.state_dict()
    assert any(name.endswith("experts.gate_up_proj") for name in stacked)
    from_memory = LLM(str(path), dtype="float32", device="cpu", load_format="dummy").engine.runner.model
    from_memory.load_weights(stacked.items())
    for (name, ours), (_, theirs) in zip(from_disk.named_parameters(), from_memory.named_parameters(),
                                         strict=True):
        assert torch.equal(ours, theirs), name
    per_expert = [(n, w) for n, w in iterate_weights(path) if ".experts.1." not in n]
    with pytest.raises(ValueError, match=r"missing weights for .*experts\.down_proj\.weight\[down\.1\]"):
        from_memory.load_weights(per_expert)


@pytest.mark.parametrize("bad, message", [
    (dict(top_k=5), "top_k=5 must be in"),
    (dict(routing="sparsemixer", top_k=3), "exactly 2 experts"),
    (dict(routing="sigmoid"), "unknown MoE routing"),
    (dict(num_groups=3, topk_groups=1), "divisible by num_groups=3"),
])
def test_moe_args_reject_bad_routing(bad, message):
    with pytest.raises(ValueError, match=message):
        MoEArgs(**{"num_experts": 4, "top_k": 2, "intermediate_size": 8, **bad})


def test_deepseek_rejects_unknown_routing(tmp_path):
    config = DeepseekV2Config(**MLA, q_lora_rank=None, v_head_dim=16, moe_intermediate_size=32,
                              n_routed_experts=4, num_experts_per_tok=2, topk_method="noaux_tc")
    with pytest.raises(ValueError, match="unsupported DeepSeek topk_method 'noaux_tc'"):
        LLM(str(save_tiny_model(config, tmp_path / "model")), device="cpu")


def test_vllm_spellings_are_aliases():
    for alias, name in [("OLMoEForCausalLM", "OlmoeForCausalLM"), ("PhiMoEForCausalLM", "PhimoeForCausalLM")]:
        assert resolve([alias])[1].cls is resolve([name])[1].cls
