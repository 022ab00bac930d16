"""Pooling models (embed / classify / reward) against transformers, or for
Qwen2ForRewardModel an equivalent reference in its published checkpoint layout;
tiny random models in float32.

Architectures: MistralModel, Gemma2Model, Qwen2ForSequenceClassification, Qwen2ForRewardModel.
"""

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from hf_reference import PROMPTS
from safetensors.torch import save_file
from torch import nn
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    Gemma2Config,
    MistralConfig,
    Qwen2Config,
    Qwen2Model,
)

from intarsia import LLM, PoolerConfig
from intarsia.tiny_models import randomize_weights, save_tiny_model, tiny_llama_config, train_tokenizer

COMMON = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
              bos_token_id=0, eos_token_id=1, pad_token_id=2)
# Prefix caching on, then off with a token budget that splits the long prompt into chunks.
VARIANTS = [{}, {"enable_prefix_caching": False, "max_num_batched_tokens": 8}]


def make_llm(path, **kwargs) -> LLM:
    return LLM(str(path), dtype="float32", device="cpu", **kwargs)


def hf_hidden(model: nn.Module, ids: list[int]) -> torch.Tensor:
    """The decoder's final (normed) hidden states of one unpadded prompt."""
    with torch.no_grad():
        return model(torch.tensor([ids])).last_hidden_state[0]


def token_ids(llm: LLM, prompts: list[str]) -> list[list[int]]:
    return [llm.get_tokenizer()(p).input_ids for p in prompts]


def assert_cosine(actual: torch.Tensor, expected: torch.Tensor) -> None:
    cosine = F.cosine_similarity(actual.float(), expected.float(), dim=-1)
    assert cosine.min() >= 0.99999, cosine


def assert_kv_free(llm: LLM) -> None:
    manager = llm.engine.block_manager
    assert manager.num_free_blocks == manager.num_blocks


def check_embedder(path, hf: nn.Module) -> None:
    """LAST-token, normalised embeddings equal transformers' for every engine variant,
    whatever else shares the batch, and again when the prefix cache serves them."""
    for variant in VARIANTS:
        llm = make_llm(path, **variant)
        assert llm.config.task == "embed"
        ids = token_ids(llm, PROMPTS)
        outputs = llm.embed([{"prompt_token_ids": i} for i in ids], use_tqdm=False)
        for out, prompt_ids in zip(outputs, ids, strict=True):
            embedding = torch.tensor(out.outputs.embedding)
            assert out.prompt_token_ids == prompt_ids
            assert torch.linalg.vector_norm(embedding) == pytest.approx(1.0, abs=1e-5)
            assert_cosine(embedding, F.normalize(hf_hidden(hf, prompt_ids)[-1], dim=-1))
        alone = llm.embed({"prompt_token_ids": ids[1]}, use_tqdm=False)[0].outputs.data
        torch.testing.assert_close(alone, outputs[1].outputs.data, atol=1e-6, rtol=0)
        again = llm.embed([{"prompt_token_ids": i} for i in ids], use_tqdm=False)
        for first, second in zip(outputs, again, strict=True):
            torch.testing.assert_close(first.outputs.data, second.outputs.data, atol=1e-6, rtol=0)
        assert_kv_free(llm)


@pytest.fixture(scope="module")
def mistral_embedder(tmp_path_factory):
    """A bare MistralModel checkpoint (e5-mistral's layout: no "model." prefix, no LM head);
    a window shorter than the long prompt, so the sliding mask matters."""
    path = save_tiny_model(MistralConfig(**COMMON, sliding_window=20),
                           tmp_path_factory.mktemp("mistral_embed"), model_cls=AutoModel)
    return path, AutoModel.from_pretrained(path, dtype=torch.float32).eval()


def test_mistral_model_embeddings_match_hf(mistral_embedder):
    check_embedder(*mistral_embedder)


def test_gemma2_model_embeddings_match_hf(tmp_path):
    config = Gemma2Config(**{**COMMON, "num_hidden_layers": 3}, head_dim=16, sliding_window=20,
                          attn_logit_softcapping=2.0, query_pre_attn_scalar=24)
    path = save_tiny_model(config, tmp_path / "model", model_cls=AutoModel)
    check_embedder(path, AutoModel.from_pretrained(path, dtype=torch.float32).eval())


def test_generation_model_embeds_with_task_embed(tmp_path):
    path = save_tiny_model(tiny_llama_config(), tmp_path / "model")
    llm = make_llm(path, task="embed")
    hf = AutoModel.from_pretrained(path, dtype=torch.float32).eval()  # the decoder alone
    ids = token_ids(llm, PROMPTS[:2])
    for out, prompt_ids in zip(llm.embed(PROMPTS[:2], use_tqdm=False), ids, strict=True):
        assert_cosine(out.outputs.data, F.normalize(hf_hidden(hf, prompt_ids)[-1], dim=-1))


def test_sentence_transformers_pooling_and_overrides(mistral_embedder, tmp_path):
    """MEAN from the checkpoint's modules.json, then CLS and ALL through pooler_config; a
    budget of 8 tokens makes each prompt several chunks the pooler must accumulate."""
    source, hf = mistral_embedder
    path = shutil.copytree(source, tmp_path / "st_model")
    (path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]))
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 64, "pooling_mode_cls_token": False,
         "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False}))
    expected = {
        None: (PoolerConfig("MEAN", normalize=True), lambda h: F.normalize(h.mean(0), dim=-1)),
        "cls": (PoolerConfig("CLS"), lambda h: h[0]),
        "all": (PoolerConfig("ALL"), lambda h: h),
    }
    overrides = {None: None, "cls": {"pooling_type": "cls", "normalize": False},
                 "all": PoolerConfig("ALL")}
    for key, (config, reference) in expected.items():
        llm = make_llm(path, max_num_batched_tokens=8, pooler_config=overrides[key])
        assert llm.config.pooler_config == config
        ids = token_ids(llm, PROMPTS)
        for out, prompt_ids in zip(llm.embed(PROMPTS, use_tqdm=False), ids, strict=True):
            want = reference(hf_hidden(hf, prompt_ids))
            assert out.outputs.data.shape == want.shape
            assert_cosine(out.outputs.data, want)
            torch.testing.assert_close(out.outputs.data.norm(dim=-1), want.norm(dim=-1), atol=1e-4,
                                       rtol=1e-5)
        assert_kv_free(llm)


def test_qwen2_sequence_classification_matches_hf(tmp_path):
    config = Qwen2Config(**COMMON, num_labels=3)
    path = save_tiny_model(config, tmp_path / "model", model_cls=AutoModelForSequenceClassification)
    hf = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    for variant in VARIANTS:
        llm = make_llm(path, **variant)
        assert llm.config.task == "classify"
        ids = token_ids(llm, PROMPTS)
        for out, prompt_ids in zip(llm.classify(PROMPTS, use_tqdm=False), ids, strict=True):
            with torch.no_grad():
                want = hf(torch.tensor([prompt_ids])).logits[0].softmax(-1)
            torch.testing.assert_close(torch.tensor(out.outputs.probs), want, atol=1e-5, rtol=0)
        assert_kv_free(llm)


class Qwen2RewardReference(nn.Module):
    """What Qwen2.5-Math-RM's published modeling_qwen2_rm.py computes: the Qwen2 decoder,
    then Linear(h, h) -> ReLU -> Linear(h, 1) on every token."""

    def __init__(self, config: Qwen2Config) -> None:
        super().__init__()
        self.model = Qwen2Model(config)
        h = config.hidden_size
        self.score = nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 1))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.score(self.model(ids).last_hidden_state)


def test_qwen2_reward_model_matches_reference(tmp_path):
    config = Qwen2Config(**COMMON, architectures=["Qwen2ForRewardModel"])
    torch.manual_seed(0)
    reference = randomize_weights(Qwen2RewardReference(config)).eval()
    path = tmp_path / "model"
    config.save_pretrained(path)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()},
              path / "model.safetensors", metadata={"format": "pt"})
    train_tokenizer(config.vocab_size).save_pretrained(path)
    for variant in VARIANTS:
        llm = make_llm(path, **variant)
        assert llm.config.task == "reward"
        assert llm.config.pooler_config == PoolerConfig("ALL")
        ids = token_ids(llm, PROMPTS)
        for out, prompt_ids in zip(llm.reward(PROMPTS, use_tqdm=False), ids, strict=True):
            with torch.no_grad():
                want = reference(torch.tensor([prompt_ids]))[0]
            assert out.outputs.embedding is None and out.outputs.probs is None
            torch.testing.assert_close(out.outputs.data, want, atol=1e-5, rtol=0)
        assert_kv_free(llm)


def test_score_ranks_by_cosine(mistral_embedder):
    path, _ = mistral_embedder
    llm = make_llm(path)
    documents = ["The sky is blue", "A photo of a cat", "The quick brown fox"]
    embeddings = torch.stack([o.outputs.data for o in llm.embed(documents, use_tqdm=False)])
    one_to_many = llm.score("The quick brown fox", documents, use_tqdm=False)
    assert [s.outputs.score for s in one_to_many] == pytest.approx(
        (embeddings @ embeddings[2]).tolist(), abs=1e-5)
    assert one_to_many[2].outputs.score == pytest.approx(1.0, abs=1e-5)
    pairwise = llm.score(documents, documents[::-1], use_tqdm=False)
    assert [s.outputs.score for s in pairwise] == pytest.approx(
        (embeddings * embeddings.flip(0)).sum(-1).tolist(), abs=1e-5)


def test_bad_pooling_input_fails_alone(mistral_embedder, tmp_path):
    from PIL import Image

    path, _ = mistral_embedder
    llm = make_llm(path)
    image = Image.new("RGB", (8, 8))
    bad_calls = [
        (lambda: llm.embed([], use_tqdm=False), "no prompts"),
        (lambda: llm.embed("", use_tqdm=False), "empty"),
        (lambda: llm.embed("A", images=image, use_tqdm=False), "text only"),
        (lambda: llm.generate("A", use_tqdm=False), "generation model"),
        (lambda: llm.classify("A", use_tqdm=False), "classification model"),
        (lambda: llm.score([], ["A"], use_tqdm=False), "at least one"),
        (lambda: llm.score(["A", "B"], ["A", "B", "C"], use_tqdm=False), "one per document"),
        (lambda: llm.score("A", ["B", ""], use_tqdm=False), "document 1"),
    ]
    for call, message in bad_calls:
        with pytest.raises(ValueError, match=message):
            call()
    with pytest.raises(ValueError, match="prompt 1") as batch_error:
        llm.embed(["A", {"prompt": "B", "multi_modal_data": {"image": image}}, "C"], use_tqdm=False)
    survivors = batch_error.value.outputs
    assert survivors[1] is None and len(survivors[0].outputs.embedding) == 64
    assert len(llm.embed("Still serving", use_tqdm=False)[0].outputs.embedding) == 64
    assert_kv_free(llm)

    generator = make_llm(save_tiny_model(tiny_llama_config(), tmp_path / "llama"))
    with pytest.raises(ValueError, match="task='embed'"):
        generator.embed("A", use_tqdm=False)
    assert generator.generate("A", use_tqdm=False)[0].outputs[0].token_ids
    with pytest.raises(ValueError, match="cannot run task 'classify'"):
        make_llm(generator.config.model_path, task="classify")
    with pytest.raises(ValueError, match="pooler_config applies"):
        make_llm(generator.config.model_path, pooler_config={"normalize": False})
    with pytest.raises(ValueError, match="unknown pooler_config keys"):
        make_llm(path, pooler_config={"pooling": "MEAN"})
    with pytest.raises(ValueError, match="unknown pooling_type"):
        make_llm(path, pooler_config={"pooling_type": "MAX"})
