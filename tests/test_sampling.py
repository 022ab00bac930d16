"""Every sampling parameter against a direct computation."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from intarsia import LLM, SamplingParams
from intarsia.engine.sampler import Sampler, apply_penalties, truncate
from intarsia.engine.sequence import Request, Sequence

VOCAB = 12


def make_seq(params: SamplingParams, prompt=(1, 2, 3), outputs=(), seed=None) -> Sequence:
    request = Request("r", None, list(prompt), params)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    seq = Sequence(0, request, 0, 16, generator)
    seq.token_ids.extend(outputs)
    return seq


def empirical(sampler, logits, params, draws=20000):
    seqs = [make_seq(params)] * draws
    tokens = torch.tensor(sampler(logits.expand(draws, -1).clone(), seqs).result().token_ids)
    return torch.bincount(tokens, minlength=logits.shape[-1]).float() / draws


@pytest.fixture
def logits():
    return torch.randn(1, VOCAB, generator=torch.Generator().manual_seed(0)) * 2


@pytest.fixture
def sampler():
    return Sampler({0}, torch.Generator().manual_seed(0))


def test_temperature_matches_softmax(sampler, logits):
    for temperature in (0.5, 1.0, 2.0):
        freq = empirical(sampler, logits, SamplingParams(temperature=temperature))
        expected = torch.softmax(logits[0] / temperature, -1)
        assert (freq - expected).abs().max() < 0.02


def test_greedy_is_argmax(sampler, logits):
    result = sampler(logits.clone(), [make_seq(SamplingParams(temperature=0))]).result()
    assert result.token_ids == [int(logits.argmax())]


def test_top_k_top_p_min_p_match_direct_computation(logits):
    probs = torch.softmax(logits[0], -1)
    order = probs.argsort(descending=True)
    for top_k, top_p, min_p in [(3, 1.0, 0.0), (-1, 0.6, 0.0), (-1, 1.0, 0.2), (5, 0.8, 0.05)]:
        keep = torch.ones(VOCAB, dtype=torch.bool)
        keep &= probs >= min_p * probs.max()
        if top_k > 0:
            keep &= torch.isin(torch.arange(VOCAB), order[:top_k])
        masked = torch.where(keep, probs, torch.zeros(()))
        renorm = masked / masked.sum()
        sorted_p = renorm[order]
        mass_before = sorted_p.cumsum(0) - sorted_p
        nucleus = order[(mass_before < top_p) & (sorted_p > 0)]
        keep &= torch.isin(torch.arange(VOCAB), nucleus)
        out = truncate(logits.clone(), torch.tensor([top_k]), torch.tensor([top_p]), torch.tensor([min_p]))
        assert torch.equal(torch.isfinite(out[0]), keep), (top_k, top_p, min_p)


def test_truncated_sampling_follows_renormalised_distribution(sampler, logits):
    params = SamplingParams(temperature=1.0, top_k=4, top_p=0.9)
    freq = empirical(sampler, logits, params)
    masked = truncate(logits.clone(), torch.tensor([4]), torch.tensor([0.9]), torch.tensor([0.0]))
    assert (freq - torch.softmax(masked[0], -1)).abs().max() < 0.02


def test_penalties_match_formula(logits):
    prompt, outputs = [1, 2], [2, 5, 5, 7]
    params = SamplingParams(repetition_penalty=1.3, presence_penalty=0.5, frequency_penalty=0.25)
    got = apply_penalties(logits.clone(), [make_seq(params, prompt, outputs)])[0]
    expected = logits[0].clone()
    for t in set(prompt + outputs):
        expected[t] = expected[t] / 1.3 if expected[t] > 0 else expected[t] * 1.3
    for t in set(outputs):
        expected[t] -= 0.25 * outputs.count(t) + 0.5
    assert torch.allclose(got, expected)


def test_per_request_seed_is_independent_of_batch(sampler, logits):
    params = SamplingParams(temperature=1.0)
    alone = sampler(logits.clone(), [make_seq(params, seed=5)]).result().token_ids
    rows = logits.expand(3, -1).clone()
    mixed = sampler(rows, [make_seq(params), make_seq(params, seed=5), make_seq(params)]).result().token_ids
    assert mixed[1] == alone[0]


def test_logprob_ranks(sampler, logits):
    result = sampler(logits.clone(), [make_seq(SamplingParams(temperature=0, logprobs=3))]).result()
    ids, values, rank = result.top[0]
    expected = torch.log_softmax(logits[0], -1)
    assert ids == expected.topk(3).indices.tolist() and rank == 1
    assert all(math.isclose(v, float(expected[i]), abs_tol=1e-6) for i, v in zip(ids, values, strict=True))


def test_penalised_greedy_decoding_matches_manual_loop(tiny_llama_path):
    """Engine-level: greedy with all three penalties equals a hand-written loop over
    transformers' logits with the same formula."""
    llm = LLM(str(tiny_llama_path), device="cpu", max_model_len=128)
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama_path, dtype=torch.float32)
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, repetition_penalty=1.5,
                            presence_penalty=0.7, frequency_penalty=0.4)
    out = llm.generate("Hello, how are you", params, use_tqdm=False)[0]
    ids = list(out.prompt_token_ids)
    generated: list[int] = []
    with torch.no_grad():
        for _ in range(10):
            row = hf(torch.tensor([ids])).logits[0, -1].float()
            for t in set(ids):
                row[t] = row[t] / 1.5 if row[t] > 0 else row[t] * 1.5
            for t in set(generated):
                row[t] -= 0.4 * generated.count(t) + 0.7
            generated.append(int(row.argmax()))
            ids.append(generated[-1])
    assert out.outputs[0].token_ids == generated


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p"), ({"top_p": 1.5}, "top_p"),
    ({"top_k": 0}, "top_k"), ({"min_p": 2}, "min_p"), ({"max_tokens": 0}, "max_tokens"),
    ({"n": 0}, "n must"), ({"min_tokens": 5, "max_tokens": 2}, "min_tokens"),
    ({"logprobs": -1}, "logprobs"), ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"presence_penalty": 3}, "presence_penalty"), ({"frequency_penalty": -3}, "frequency_penalty"),
    ({"stop": [""]}, "stop"),
])
def test_invalid_sampling_params(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)
