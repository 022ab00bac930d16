"""The start-up warm-up (which makes Triton compile its kernel variants on the GPU)
runs the shapes it claims through every kind of model: text, M-RoPE multimodal,
prefix-LM multimodal, pooling, latent attention. Here on the CPU, so that its
metadata and shapes are checked by CI; afterwards the engine still matches its
own outputs, since the warm-up writes nothing to the KV cache."""

import pytest
import torch
from transformers import AutoModel, DeepseekV2Config, MistralConfig

from intarsia import LLM, SamplingParams
from intarsia.tiny_models import save_tiny_model, tiny_llama_config
from intarsia.tiny_multimodal import save_tiny_paligemma, save_tiny_qwen2_vl

BUILDERS = {
    "llama": lambda p: save_tiny_model(tiny_llama_config(), p),
    "qwen2_vl (M-RoPE)": save_tiny_qwen2_vl,
    "paligemma (prefix-LM)": save_tiny_paligemma,
    "mistral embedder": lambda p: save_tiny_model(
        MistralConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2),
        p, model_cls=AutoModel),
    "deepseek_v2 (latent attention)": lambda p: save_tiny_model(DeepseekV2Config(
        vocab_size=512, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=16,
        q_lora_rank=None, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16,
        n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=1,
        max_position_embeddings=256), p),
}


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_warmup_runs_and_writes_nothing(kind, tmp_path):
    llm = LLM(str(BUILDERS[kind](tmp_path / "model")), device="cpu", max_model_len=128)
    runner = llm.engine.runner
    before = runner.kv_cache.clone()
    runner._compile_kernel_variants()
    assert torch.equal(runner.kv_cache, before)
    if llm.config.task == "generate":
        out = llm.generate({"prompt_token_ids": [5, 6, 7]}, SamplingParams(temperature=0, max_tokens=3),
                           use_tqdm=False)
        assert len(out[0].outputs[0].token_ids) == 3
