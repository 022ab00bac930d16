"""Shared checks of intarsia against transformers on tiny random checkpoints.

Every architecture test calls `assert_matches_hf`: the same checkpoint runs in
transformers (greedy, one prompt at a time, no padding) and in intarsia (all
prompts in one batch); greedy tokens must be equal and intarsia's top-k
logprobs must be within `atol` of transformers' log-softmax at each step.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig

from intarsia import LLM, SamplingParams
from intarsia.tiny_models import save_tiny_model

PROMPTS = [
    "The quick brown fox",
    "Hello, how are you today? " * 6,  # crosses several 16-token KV blocks
    "A",
    "Large language models predict the next token from the tokens before it. What is in this picture?",
]


def hf_greedy(model, prompt_ids: list[int], max_new_tokens: int) -> tuple[list[int], torch.Tensor]:
    """Greedy continuation (EOS not special, like ignore_eos) and the log-softmax of
    every generated position, each step a full forward over the whole sequence."""
    ids = list(prompt_ids)
    rows = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(torch.tensor([ids], device=model.device)).logits[0, -1].float()
            rows.append(torch.log_softmax(logits, dim=-1))
            ids.append(int(logits.argmax()))
    return ids[len(prompt_ids):], torch.stack(rows)


def assert_outputs_match(outputs, references, atol: float) -> None:
    for i, (out, (ref_tokens, ref_logprobs)) in enumerate(zip(outputs, references, strict=True)):
        completion = out.outputs[0]
        assert completion.token_ids == ref_tokens, f"prompt {i}: tokens differ"
        for step, entry in enumerate(completion.logprobs):
            for token_id, logprob in entry.items():
                expected = float(ref_logprobs[step, token_id])
                assert abs(logprob.logprob - expected) < atol, (
                    f"prompt {i} step {step} token {token_id}: {logprob.logprob} vs {expected}")


def assert_matches_hf(config: PretrainedConfig, tmp_path: Path, prompts: list[str] | None = None,
                      max_new_tokens: int = 12, atol: float = 1e-3, model_cls=AutoModelForCausalLM,
                      engine_variants: list[dict] | None = None, **llm_kwargs) -> LLM:
    """Build a tiny random `config` model, save it, and check intarsia == transformers
    for each of `engine_variants` (LLM kwargs; by default prefix caching on and off,
    and a small token budget forcing chunked prefill). Returns the last LLM."""
    path = save_tiny_model(config, tmp_path / "model", model_cls=model_cls)
    hf = model_cls.from_pretrained(path, dtype=torch.float32).eval()
    llm = None
    variants = engine_variants or [{}, {"enable_prefix_caching": False, "max_num_batched_tokens": 24}]
    references = None
    for variant in variants:
        llm = LLM(str(path), dtype="float32", device="cpu", **{**llm_kwargs, **variant})
        tokenizer = llm.get_tokenizer()
        prompt_ids = [tokenizer(p).input_ids for p in (prompts or PROMPTS)]
        if references is None:
            references = [hf_greedy(hf, ids, max_new_tokens) for ids in prompt_ids]
        params = SamplingParams(temperature=0, max_tokens=max_new_tokens, logprobs=5, ignore_eos=True)
        outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)
        assert_outputs_match(outputs, references, atol)
        assert llm.engine.block_manager.num_free_blocks == llm.engine.block_manager.num_blocks
    return llm
