"""Qwen2AudioForConditionalGeneration against transformers: the Whisper encoder (conv
front-end, positions, padded frames masked out, average pooling), the projector and a
Qwen2 decoder; clips of different lengths, mixed with text-only prompts."""

import numpy as np
import pytest
from mm_reference import Case, assert_mm_matches_hf, generate_cases
from transformers import AutoModelForSeq2SeqLM

from intarsia import LLM, SamplingParams
from intarsia.tiny_multimodal import save_tiny_qwen2_audio

AUDIO = "<|audio_bos|><|AUDIO|><|audio_eos|>"


def waveform(seconds: float, seed: int, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(seed).normal(0, 0.1, t.shape)
    return (np.sin(2 * np.pi * (220 + 110 * seed) * t) * 0.5 + noise).astype(np.float32)


@pytest.fixture(scope="module")
def qwen2_audio_path(tmp_path_factory):
    return save_tiny_qwen2_audio(tmp_path_factory.mktemp("qwen2_audio") / "model")


def test_qwen2_audio_matches_transformers(qwen2_audio_path):
    cases = [
        Case(f"<|user|>{AUDIO}What is in this recording?<|end|><|assistant|>", {"audio": [waveform(0.5, 0)]}),
        # two clips of different lengths (one filling the whole window) in one prompt
        Case(f"{AUDIO} then {AUDIO}: the quick brown fox", {"audio": [waveform(0.27, 1), waveform(1.0, 2)]}),
        Case("Hello, how are you today? The sky is blue and the grass is green."),  # text only
    ]
    assert_mm_matches_hf(qwen2_audio_path, cases, model_cls=AutoModelForSeq2SeqLM)


def test_qwen2_audio_waveform_with_rate_and_chat(qwen2_audio_path):
    """(waveform, sample_rate) at another rate is resampled to the extractor's 16 kHz; a
    clip with no placeholder in the prompt gets one prepended; a chat audio part renders
    to the same prompt as the explicit placeholder."""
    import librosa

    clip = waveform(0.5, 3, rate=8000)
    resampled = librosa.resample(clip, orig_sr=8000, target_sr=16000)
    llm = LLM(str(qwen2_audio_path), dtype="float32", device="cpu")
    pair, array = generate_cases(llm, [Case("Describe the sound.", {"audio": [(clip, 8000)]}),
                                       Case(f"{AUDIO}Describe the sound.", {"audio": [resampled]})], 4)
    assert pair.prompt_token_ids == array.prompt_token_ids
    assert pair.outputs[0].token_ids == array.outputs[0].token_ids
    params = SamplingParams(temperature=0, max_tokens=4)
    chat, = llm.chat([{"role": "user", "content": [{"type": "audio", "audio": (clip, 8000)},
                                                   {"type": "text", "text": "Describe the sound."}]}],
                     params, use_tqdm=False)
    explicit, = llm.generate(f"<|user|>{AUDIO}Describe the sound.<|end|><|assistant|>", params,
                             audio=[resampled], use_tqdm=False)
    assert chat.prompt_token_ids == explicit.prompt_token_ids
    assert chat.outputs[0].token_ids == explicit.outputs[0].token_ids
