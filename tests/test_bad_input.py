"""Bad input gets a clear error naming the problem; the same LLM keeps serving."""

import json
import shutil

import pytest
from transformers import AutoConfig

from intarsia import LLM, BatchError, SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(tiny_llama_path):
    return LLM(str(tiny_llama_path), device="cpu", max_model_len=64)


def still_serves(llm):
    out = llm.generate("Hello", GREEDY, use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 4
    manager = llm.engine.block_manager
    assert manager.num_free_blocks == manager.num_blocks


@pytest.mark.parametrize("prompt, message", [
    ("", "prompt is empty"),
    ({"prompt_token_ids": []}, "prompt is empty"),
    ("Hello " * 100, "max_model_len is 64"),
    ({"prompt_token_ids": [1, 99999]}, "outside the vocabulary"),
    ({"prompt_token_ids": "abc"}, "list of ints"),
    (42, "must be a string or a dict"),
])
def test_bad_prompts(llm, prompt, message):
    with pytest.raises(ValueError, match=message):
        llm.generate(prompt, GREEDY, use_tqdm=False)
    still_serves(llm)


def test_bad_prompt_fails_alone_in_a_batch(llm):
    with pytest.raises(BatchError, match="prompt 1: the prompt is empty") as info:
        llm.generate(["Hello", "", "The quick brown fox"], GREEDY, use_tqdm=False)
    outputs = info.value.outputs
    assert outputs[1] is None and len(outputs[0].outputs[0].token_ids) == 4
    assert outputs[2].prompt == "The quick brown fox"
    still_serves(llm)


def test_wrong_params_type_and_media_on_text_model(llm):
    with pytest.raises(ValueError, match="SamplingParams"):
        llm.generate("Hello", {"temperature": 0}, use_tqdm=False)
    with pytest.raises(ValueError, match="text only.*image"):
        llm.generate("Hello", GREEDY, images="cat.png", use_tqdm=False)
    with pytest.raises(ValueError, match="2 entries for 3 prompts"):
        llm.generate(["a", "b", "c"], [GREEDY, GREEDY], use_tqdm=False)
    still_serves(llm)


def copy_model(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_missing_weights(tiny_llama_path, tmp_path):
    path = copy_model(tiny_llama_path, tmp_path / "m")
    (path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors weights"):
        LLM(str(path), device="cpu")


def test_corrupt_weights(tiny_llama_path, tmp_path):
    path = copy_model(tiny_llama_path, tmp_path / "m")
    (path / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="corrupt safetensors file .*model.safetensors"):
        LLM(str(path), device="cpu")


def test_weights_not_matching_config(tiny_llama_path, tmp_path):
    path = copy_model(tiny_llama_path, tmp_path / "m")
    config = json.loads((path / "config.json").read_text())
    config["intermediate_size"] = 96
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="mlp.*shape mismatch"):
        LLM(str(path), device="cpu")


def test_unknown_architecture_lists_supported(tiny_llama_path, tmp_path):
    path = copy_model(tiny_llama_path, tmp_path / "m")
    config = json.loads((path / "config.json").read_text())
    config["architectures"] = ["FancyNewForCausalLM"]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unsupported architecture.*LlamaForCausalLM"):
        LLM(str(path), device="cpu")


def test_missing_model():
    with pytest.raises(FileNotFoundError, match="not a folder"):
        LLM("./no/such/model", device="cpu")


def test_sharded_checkpoint_and_hub_cache(tiny_llama_path, tmp_path, monkeypatch):
    """A sharded checkpoint in the huggingface_hub cache layout loads by hub id offline."""
    from transformers import AutoModelForCausalLM

    cache = tmp_path / "hub"
    snapshot = cache / "models--intarsia--tiny" / "snapshots" / "0123abcd"
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_path)
    model.save_pretrained(snapshot, max_shard_size="100KB")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_llama_path / name, snapshot / name)
    (cache / "models--intarsia--tiny" / "refs").mkdir()
    (cache / "models--intarsia--tiny" / "refs" / "main").write_text("0123abcd")
    assert (snapshot / "model.safetensors.index.json").exists()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    sharded = LLM("intarsia/tiny", device="cpu", max_model_len=64)
    plain = LLM(str(tiny_llama_path), device="cpu", max_model_len=64)
    assert (sharded.generate("Hello", GREEDY, use_tqdm=False)[0].outputs[0].token_ids
            == plain.generate("Hello", GREEDY, use_tqdm=False)[0].outputs[0].token_ids)
    with pytest.raises(FileNotFoundError, match="neither a local folder nor in the Hugging Face cache"):
        LLM("intarsia/not-cached", device="cpu")
    # A shard listed in the index but missing on disk.
    index = json.loads((snapshot / "model.safetensors.index.json").read_text())
    (snapshot / sorted(set(index["weight_map"].values()))[0]).unlink()
    with pytest.raises(FileNotFoundError, match="shards listed in .* are missing"):
        LLM("intarsia/tiny", device="cpu")


def test_dtype_auto_from_config(tiny_llama_path):
    config = AutoConfig.from_pretrained(tiny_llama_path)
    llm = LLM(str(tiny_llama_path), device="cpu", max_model_len=64)
    assert llm.config.dtype.is_floating_point and config.architectures == ["LlamaForCausalLM"]
    with pytest.raises(ValueError, match="unknown dtype"):
        LLM(str(tiny_llama_path), device="cpu", dtype="float8")
