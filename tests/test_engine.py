"""Engine behaviour: batching, prefix caching, preemption, stops, n, seeds, chat."""

import pytest
import torch
from hf_reference import PROMPTS
from transformers import AutoModelForCausalLM

from intarsia import LLM, SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(tiny_llama_path):
    return LLM(str(tiny_llama_path), device="cpu", max_model_len=256)


def token_ids(outputs):
    return [[c.token_ids for c in o.outputs] for o in outputs]


def assert_no_leaked_blocks(llm):
    manager = llm.engine.block_manager
    assert manager.num_free_blocks == manager.num_blocks
    assert not llm.engine.scheduler.running and not llm.engine.scheduler.waiting


def test_batch_equals_one_by_one(llm):
    batched = token_ids(llm.generate(PROMPTS, GREEDY, use_tqdm=False))
    alone = [token_ids(llm.generate(p, GREEDY, use_tqdm=False))[0] for p in PROMPTS]
    assert batched == alone
    assert_no_leaked_blocks(llm)


def test_prefix_cache_hits_keep_outputs(tiny_llama_path):
    llm = LLM(str(tiny_llama_path), device="cpu", max_model_len=256)
    long_prompt = PROMPTS[1]
    first = llm.generate(long_prompt, GREEDY, use_tqdm=False)
    second = llm.generate([long_prompt, long_prompt + " again"], GREEDY, use_tqdm=False)
    assert token_ids(second)[0] == token_ids(first)[0]
    assert first[0].num_cached_tokens == 0
    # The cached prefix covers every full block but the one holding the last prompt token.
    n = len(first[0].prompt_token_ids)
    assert second[0].num_cached_tokens == (n - 1) // 16 * 16 > 0
    assert second[1].num_cached_tokens == n // 16 * 16
    assert_no_leaked_blocks(llm)


def test_preemption_gives_same_outputs(tiny_llama_path, llm):
    expected = token_ids(llm.generate(PROMPTS * 3, GREEDY, use_tqdm=False))
    # 20 blocks of 16 tokens: enough for any one sequence, not for all at once.
    small = LLM(str(tiny_llama_path), device="cpu", max_model_len=256, num_kv_blocks=20)
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    assert token_ids(small.generate(PROMPTS * 3, params, use_tqdm=False)) == expected
    assert small.engine.scheduler.num_preemptions > 0
    assert_no_leaked_blocks(small)


def test_stops_inside_a_running_batch(tiny_llama_path, llm):
    """The engine launches each step before reading the previous one's tokens back:
    sequences stopping on stop tokens at different steps while others run on (and get
    preempted) end as they do alone, and every block is freed."""
    alone = [token_ids(llm.generate(p, GREEDY, use_tqdm=False))[0][0] for p in PROMPTS]
    stops = [tokens[i % 5 + 1] for i, tokens in enumerate(alone)]
    params = [SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, stop_token_ids=[stop])
              for stop in stops]
    expected = [tokens[:tokens.index(stop) + 1] for tokens, stop in zip(alone, stops, strict=True)]
    small = LLM(str(tiny_llama_path), device="cpu", max_model_len=256, num_kv_blocks=16)
    outputs = small.generate(PROMPTS * 5, [GREEDY] * len(PROMPTS) * 2 + params * 3, use_tqdm=False)
    assert [o[0] for o in token_ids(outputs)] == alone * 2 + expected * 3
    assert small.engine.scheduler.num_preemptions > 0
    assert_no_leaked_blocks(small)


def test_chunked_prefill_gives_same_outputs(tiny_llama_path, llm):
    expected = token_ids(llm.generate(PROMPTS, GREEDY, use_tqdm=False))
    chunked = LLM(str(tiny_llama_path), device="cpu", max_model_len=256, max_num_batched_tokens=7,
                  enable_prefix_caching=False)
    assert token_ids(chunked.generate(PROMPTS, GREEDY, use_tqdm=False)) == expected


def test_max_num_seqs_limits_the_batch(tiny_llama_path, llm):
    narrow = LLM(str(tiny_llama_path), device="cpu", max_model_len=256, max_num_seqs=2)
    seen = []
    original = narrow.engine.scheduler.schedule

    def spy():
        scheduled = original()
        seen.append(len(narrow.engine.scheduler.running))
        return scheduled

    narrow.engine.scheduler.schedule = spy
    out = narrow.generate(PROMPTS, GREEDY, use_tqdm=False)
    assert max(seen) == 2
    assert token_ids(out) == token_ids(llm.generate(PROMPTS, GREEDY, use_tqdm=False))


def test_seeded_sampling_is_reproducible(llm):
    params = SamplingParams(temperature=1.0, max_tokens=12, seed=1234, ignore_eos=True)
    a = token_ids(llm.generate(PROMPTS, params, use_tqdm=False))
    # Same seed, different batch company: same tokens.
    b = token_ids(llm.generate(PROMPTS[::-1], params, use_tqdm=False))[::-1]
    assert a == b
    other = SamplingParams(temperature=1.0, max_tokens=12, seed=99, ignore_eos=True)
    assert token_ids(llm.generate(PROMPTS, other, use_tqdm=False)) != a


def test_n_returns_distinct_samples(llm):
    out = llm.generate("Hello", SamplingParams(n=3, temperature=1.0, max_tokens=8, seed=7,
                                               ignore_eos=True), use_tqdm=False)[0]
    assert [c.index for c in out.outputs] == [0, 1, 2]
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1
    assert_no_leaked_blocks(llm)


def test_max_tokens_and_length_finish(llm):
    out = llm.generate("Hello", SamplingParams(temperature=0, max_tokens=5, ignore_eos=True),
                       use_tqdm=False)[0].outputs[0]
    assert len(out.token_ids) == 5 and out.finish_reason == "length"


def test_stop_token_ids_and_min_tokens(llm):
    greedy = llm.generate("Hello", GREEDY, use_tqdm=False)[0].outputs[0].token_ids
    stop_id = greedy[2]
    first = greedy.index(stop_id)
    out = llm.generate("Hello", SamplingParams(temperature=0, max_tokens=16, ignore_eos=True,
                                               stop_token_ids=[stop_id]), use_tqdm=False)[0].outputs[0]
    assert out.token_ids == greedy[:first + 1]
    assert out.finish_reason == "stop" and out.stop_reason == stop_id
    # min_tokens forbids the stop token until `min_tokens` outputs exist.
    held = llm.generate("Hello", SamplingParams(temperature=0, max_tokens=16, ignore_eos=True,
                                                stop_token_ids=[stop_id], min_tokens=first + 2),
                        use_tqdm=False)[0].outputs[0]
    assert stop_id not in held.token_ids[:first + 2]


def test_eos_stops_unless_ignored(tiny_llama_path, llm):
    greedy = llm.generate("Hello", GREEDY, use_tqdm=False)[0].outputs[0].token_ids
    llm.engine.eos_token_ids.add(greedy[3])
    try:
        out = llm.generate("Hello", SamplingParams(temperature=0, max_tokens=16), use_tqdm=False)
        assert out[0].outputs[0].token_ids == greedy[:greedy.index(greedy[3]) + 1]
        assert out[0].outputs[0].finish_reason == "stop"
        ignored = llm.generate("Hello", GREEDY, use_tqdm=False)[0].outputs[0].token_ids
        assert ignored == greedy
    finally:
        llm.engine.eos_token_ids.discard(greedy[3])


def test_stop_strings_truncate_text(llm):
    full = llm.generate("Hello", SamplingParams(temperature=0, max_tokens=16, ignore_eos=True,
                                                skip_special_tokens=False), use_tqdm=False)[0]
    text = full.outputs[0].text
    stop = text[len(text) // 2:len(text) // 2 + 2]
    out = llm.generate("Hello", SamplingParams(temperature=0, max_tokens=16, ignore_eos=True,
                                               stop=[stop], skip_special_tokens=False),
                       use_tqdm=False)[0].outputs[0]
    assert out.text == text[:text.find(stop)]
    assert out.finish_reason == "stop" and out.stop_reason == stop


def test_incremental_detokenizer_matches_full_decode(llm):
    from intarsia.engine.detokenizer import IncrementalDetokenizer

    tokenizer = llm.get_tokenizer()
    ids = tokenizer("Hello, how are you today? The capital of France is Paris.").input_ids
    generator = torch.Generator().manual_seed(0)
    outputs = ids[3:] + torch.randint(0, 512, (30,), generator=generator).tolist()
    detok = IncrementalDetokenizer(tokenizer, ids[:3], skip_special_tokens=True)
    for t in outputs:
        detok.add(t)
    full = tokenizer.decode(outputs, skip_special_tokens=True)
    # Held-back incomplete characters at the very end are the only allowed difference.
    assert full.startswith(detok.text) and len(full) - len(detok.text) <= 2


def test_prompt_logprobs_match_transformers(tiny_llama_path, llm):
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama_path, dtype=torch.float32)
    out = llm.generate(PROMPTS[1], SamplingParams(temperature=0, max_tokens=2, prompt_logprobs=3),
                       use_tqdm=False)[0]
    ids = out.prompt_token_ids
    with torch.no_grad():
        ref = torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), dim=-1)
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == len(ids)
    for pos in range(1, len(ids)):
        entry = out.prompt_logprobs[pos]
        assert ids[pos] in entry and len(entry) in (3, 4)
        top = ref[pos - 1].topk(3)
        assert [e.rank for e in entry.values()][:3] == [1, 2, 3]
        assert list(entry)[:3] == top.indices.tolist()
        actual = entry[ids[pos]]
        assert abs(actual.logprob - float(ref[pos - 1, ids[pos]])) < 1e-3
        assert actual.rank == int((ref[pos - 1] > ref[pos - 1, ids[pos]]).sum()) + 1


def test_logprobs_report_sampled_token_and_rank(llm):
    out = llm.generate("Hello", SamplingParams(temperature=1.0, max_tokens=8, logprobs=2, seed=3,
                                               ignore_eos=True), use_tqdm=False)[0].outputs[0]
    total = 0.0
    for token, entry in zip(out.token_ids, out.logprobs, strict=True):
        assert token in entry and 2 <= len(entry) <= 3
        ranks = sorted(e.rank for e in entry.values())
        assert ranks[:2] == [1, 2]
        total += entry[token].logprob
        assert entry[token].decoded_token == llm.get_tokenizer().decode([token])
    assert abs(out.cumulative_logprob - total) < 1e-4


def test_chat_uses_the_chat_template(llm):
    messages = [{"role": "user", "content": "Hello"}]
    rendered = llm.get_tokenizer().apply_chat_template(messages, tokenize=False,
                                                       add_generation_prompt=True)
    chat = llm.chat(messages, GREEDY, use_tqdm=False)[0]
    ids = llm.get_tokenizer()(rendered, add_special_tokens=False).input_ids
    direct = llm.generate({"prompt_token_ids": ids}, GREEDY, use_tqdm=False)[0]
    assert chat.prompt == rendered and chat.prompt_token_ids == ids
    assert chat.outputs[0].token_ids == direct.outputs[0].token_ids
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}]
    assert llm.chat(parts, GREEDY, use_tqdm=False)[0].prompt_token_ids == ids


def test_progress_bar_and_prompt_forms(llm, capsys):
    outs = llm.generate(["Hello", {"prompt": "Hello"}], GREEDY, use_tqdm=True)
    assert outs[0].outputs[0].token_ids == outs[1].outputs[0].token_ids
    assert "Processed prompts" in capsys.readouterr().err


def test_request_metrics_are_ordered(llm):
    outs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    for out in outs:
        m = out.metrics
        assert m.arrival_time <= m.first_token_time <= m.finished_time
