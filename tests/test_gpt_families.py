"""GPT-lineage families against transformers (float32, tiny random models): ALiBi,
learned and rotary positions, LayerNorm, parallel and post-norm residuals, fused q/k/v
layouts; each config chosen to exercise what sets the variant apart.

Architectures: BloomForCausalLM, FalconForCausalLM, GPT2LMHeadModel, GPTBigCodeForCausalLM,
GPTJForCausalLM, GPTNeoXForCausalLM, MPTForCausalLM, OPTForCausalLM, PhiForCausalLM,
PersimmonForCausalLM, StableLmForCausalLM.
"""

import pytest
import torch
from hf_reference import assert_matches_hf
from transformers import (
    BloomConfig,
    FalconConfig,
    GPT2Config,
    GPTBigCodeConfig,
    GPTJConfig,
    GPTNeoXConfig,
    MptConfig,
    OPTConfig,
    PersimmonConfig,
    PhiConfig,
    StableLmConfig,
)

from intarsia import LLM
from intarsia.backbones.gpt_blocks import alibi_slopes

TOKENS = dict(vocab_size=512, bos_token_id=0, eos_token_id=1, pad_token_id=2)
ONE_VARIANT = [{}]  # the default engine settings only, where a second run adds no coverage


def _bloom_slopes(num_heads: int) -> list[float]:
    """transformers' Bloom formula, the reference for `alibi_slopes`."""
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    alibi = build_alibi_tensor(torch.ones(1, 2), num_heads, torch.float32)  # [heads, 1, 2]
    return alibi[:, 0, 1].tolist()  # slope * position 1


def _mpt_slopes(num_heads: int, max_bias: float) -> list[float]:
    from transformers.models.mpt.modeling_mpt import build_mpt_alibi_tensor

    return (-build_mpt_alibi_tensor(num_heads, 2, max_bias)[:, 0, 0]).tolist()  # slope * -1


@pytest.mark.parametrize("num_heads", [1, 4, 6, 12, 20])
def test_alibi_slopes_match_bloom_and_mpt(num_heads):
    ours = alibi_slopes(num_heads).tolist()
    assert ours == pytest.approx(_bloom_slopes(num_heads), rel=1e-6)
    assert ours == pytest.approx(_mpt_slopes(num_heads, 8.0), rel=1e-6)
    assert alibi_slopes(num_heads, 4.0).tolist() == pytest.approx(_mpt_slopes(num_heads, 4.0), rel=1e-6)


def test_bloom_alibi_non_power_of_two_heads(tmp_path):
    # 6 heads: ALiBi's extra slopes for heads beyond the power of two; tied embeddings.
    assert_matches_hf(BloomConfig(**TOKENS, hidden_size=48, n_layer=2, n_head=6), tmp_path)


@pytest.mark.parametrize("layout", [
    dict(new_decoder_architecture=True, num_attention_heads=4, num_kv_heads=2, bias=False),
    dict(new_decoder_architecture=True, num_attention_heads=4, num_kv_heads=2, num_ln_in_parallel_attn=1),
    dict(multi_query=True, parallel_attn=True, bias=False),
    dict(alibi=True, multi_query=False, parallel_attn=False, bias=True, tie_word_embeddings=False),
], ids=["new-arch-gqa-two-norms", "new-arch-one-norm", "old-mqa-parallel", "old-alibi-sequential"])
def test_falcon(tmp_path, layout):
    config = FalconConfig(**TOKENS, hidden_size=64, num_hidden_layers=2, ffn_hidden_size=96,
                          max_position_embeddings=512, **{"num_attention_heads": 4, **layout})
    assert_matches_hf(config, tmp_path, engine_variants=ONE_VARIANT)


def test_gpt2_learned_positions_conv1d_layer_scaled_attention(tmp_path):
    config = GPT2Config(**TOKENS, n_embd=64, n_layer=2, n_head=4, n_positions=256,
                        scale_attn_by_inverse_layer_idx=True)
    assert_matches_hf(config, tmp_path)
    with pytest.raises(ValueError, match="learned positions"):
        LLM(str(tmp_path / "model"), device="cpu", max_model_len=300)


@pytest.mark.parametrize("multi_query", [True, False], ids=["mqa", "mha"])
def test_gpt_bigcode(tmp_path, multi_query):
    config = GPTBigCodeConfig(**TOKENS, n_embd=64, n_layer=2, n_head=4, n_positions=512,
                              multi_query=multi_query)
    assert_matches_hf(config, tmp_path, engine_variants=None if multi_query else ONE_VARIANT)


def test_gptj_interleaved_partial_rotary_parallel(tmp_path):
    # rotary_dim 8 of head_dim 16; biased, untied LM head.
    config = GPTJConfig(**TOKENS, n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=512)
    assert_matches_hf(config, tmp_path)


@pytest.mark.parametrize("parallel", [True, False], ids=["parallel", "sequential"])
def test_gpt_neox(tmp_path, parallel):
    config = GPTNeoXConfig(**TOKENS, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=128, max_position_embeddings=512, rotary_pct=0.25,
                           use_parallel_residual=parallel)
    assert_matches_hf(config, tmp_path, engine_variants=None if parallel else ONE_VARIANT)


def test_mpt_alibi_clip_qkv(tmp_path):
    # q/k/v activations are O(1) here, so clipping at 0.5 changes them. (transformers
    # ignores alibi_bias_max and always uses 8, so the default is what can be compared.)
    config = MptConfig(**TOKENS, d_model=64, n_heads=4, n_layers=2, max_seq_len=512,
                       attn_config={"clip_qkv": 0.5})
    assert_matches_hf(config, tmp_path)


@pytest.mark.parametrize("variant", [
    dict(do_layer_norm_before=True, word_embed_proj_dim=64),
    dict(do_layer_norm_before=False, word_embed_proj_dim=32),
], ids=["pre-ln", "post-ln-projected"])
def test_opt(tmp_path, variant):
    config = OPTConfig(**TOKENS, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                       ffn_dim=128, max_position_embeddings=512, **variant)
    assert_matches_hf(config, tmp_path, engine_variants=None if variant["do_layer_norm_before"]
                      else ONE_VARIANT)


def test_phi_parallel_partial_rotary_qk_layernorm(tmp_path):
    config = PhiConfig(**TOKENS, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       qk_layernorm=True)
    assert_matches_hf(config, tmp_path)


def test_persimmon_qk_layernorm_relu2(tmp_path):
    config = PersimmonConfig(**TOKENS, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, max_position_embeddings=512)
    assert config.qk_layernorm and config.hidden_act == "relu2"
    assert_matches_hf(config, tmp_path)


@pytest.mark.parametrize("variant", [
    dict(use_parallel_residual=True, qk_layernorm=True, use_qkv_bias=True),
    dict(),
], ids=["parallel-per-head-qk-norm", "sequential"])
def test_stablelm(tmp_path, variant):
    config = StableLmConfig(**TOKENS, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2,
                            max_position_embeddings=512, **variant)
    assert_matches_hf(config, tmp_path, engine_variants=None if variant else ONE_VARIANT)
