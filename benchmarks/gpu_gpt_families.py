"""GPU check of the GPT-lineage families (Triton attention incl. the ALiBi path, CUDA
graphs) against transformers on the same card, one tiny random model per layout.

    PYTHONPATH=. python3 benchmarks/gpu_gpt_families.py

Float32 greedy tokens must equal transformers'; bfloat16 must run end to end. Prints a
table and PASS/FAIL.
"""

from __future__ import annotations

import gc
import sys
import tempfile

import torch
from transformers import (
    AutoModelForCausalLM,
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

sys.path.insert(0, "tests")
from hf_reference import PROMPTS, hf_greedy  # noqa: E402

from intarsia import LLM, SamplingParams  # noqa: E402
from intarsia.tiny_models import save_tiny_model  # noqa: E402

TOKENS = dict(vocab_size=512, bos_token_id=0, eos_token_id=1, pad_token_id=2)
SIZE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=512)
CONFIGS = {
    "bloom (alibi, 6 heads)": BloomConfig(**TOKENS, hidden_size=48, n_layer=2, n_head=6),
    "falcon new arch (gqa)": FalconConfig(**TOKENS, **SIZE, new_decoder_architecture=True, num_kv_heads=2),
    "falcon old (mqa, parallel)": FalconConfig(**TOKENS, **SIZE, multi_query=True, parallel_attn=True),
    "falcon old (alibi)": FalconConfig(**TOKENS, **SIZE, alibi=True, multi_query=False,
                                       parallel_attn=False, bias=True),
    "gpt2": GPT2Config(**TOKENS, n_embd=64, n_layer=2, n_head=4, n_positions=512),
    "gpt_bigcode (mqa)": GPTBigCodeConfig(**TOKENS, n_embd=64, n_layer=2, n_head=4, n_positions=512),
    "gptj": GPTJConfig(**TOKENS, n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=512),
    "gpt_neox": GPTNeoXConfig(**TOKENS, **SIZE, intermediate_size=128, rotary_pct=0.25),
    "mpt (alibi, clip_qkv)": MptConfig(**TOKENS, d_model=64, n_heads=4, n_layers=2, max_seq_len=512,
                                       attn_config={"clip_qkv": 0.5}),
    "opt (post-ln, projected)": OPTConfig(**TOKENS, **SIZE, ffn_dim=128, do_layer_norm_before=False,
                                          word_embed_proj_dim=32),
    "phi (qk layernorm)": PhiConfig(**TOKENS, **SIZE, intermediate_size=128, num_key_value_heads=2,
                                    qk_layernorm=True),
    "persimmon": PersimmonConfig(**TOKENS, **SIZE, intermediate_size=128),
    "stablelm (parallel, qk norm)": StableLmConfig(**TOKENS, **SIZE, intermediate_size=128,
                                                   num_key_value_heads=2, use_parallel_residual=True,
                                                   qk_layernorm=True),
}
NEW_TOKENS = 16


def run(path: str, dtype: str) -> tuple[LLM, list[list[int]], list[list[int]]]:
    llm = LLM(path, dtype=dtype, device="cuda", max_model_len=256, num_kv_blocks=128)
    ids = [llm.get_tokenizer()(p).input_ids for p in PROMPTS]
    params = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": i} for i in ids], params, use_tqdm=False)
    return llm, ids, [o.outputs[0].token_ids for o in outs]


def check(name: str, config) -> tuple[str, str, bool]:
    path = str(save_tiny_model(config, tempfile.mkdtemp()))
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).cuda().eval()
    llm, ids, tokens = run(path, "float32")
    equal = sum(t == hf_greedy(hf, i, NEW_TOKENS)[0] for i, t in zip(ids, tokens, strict=True))
    del llm, hf
    try:
        llm, _, tokens = run(path, "bfloat16")
        bf16 = "ok" if all(len(t) == NEW_TOKENS for t in tokens) else "short output"
        del llm
    except Exception as e:  # report and go on to the next family
        bf16 = f"error: {type(e).__name__}: {e}"[:60]
    gc.collect()
    torch.cuda.empty_cache()
    return f"{equal}/{len(ids)}", bf16, equal == len(ids) and bf16 == "ok"


def main() -> None:
    rows, ok = [], True
    for name, config in CONFIGS.items():
        fp32, bf16, passed = check(name, config)
        rows.append((name, fp32, bf16))
        ok &= passed
    width = max(len(r[0]) for r in rows)
    print(f"\n{'family':<{width}}  fp32 tokens == HF  bf16")
    for name, fp32, bf16 in rows:
        print(f"{name:<{width}}  {fp32:<17}  {bf16}")
    print("PASS" if ok else "FAIL")


if __name__ == "__main__":
    main()
