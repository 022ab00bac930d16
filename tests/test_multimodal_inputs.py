"""Media input forms, the prefix cache with media, chat content parts and bad input."""

import base64
import functools
import http.server
import io
import os
import socket
import threading

import numpy as np
import pytest
import torch
from mm_reference import Case, generate_cases, random_image, random_video

from intarsia import LLM, SamplingParams
from intarsia.engine.llm import BatchError
from intarsia.processors import media
from intarsia.tiny_multimodal import save_tiny_llava, save_tiny_qwen2_vl

GREEDY = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)


@pytest.fixture(scope="module")
def llava_path(tmp_path_factory):
    return save_tiny_llava(tmp_path_factory.mktemp("llava") / "model")


@pytest.fixture(scope="module")
def llava(llava_path):
    return LLM(str(llava_path), dtype="float32", device="cpu", limit_mm_per_prompt={"image": 2})


@pytest.fixture(scope="module")
def qwen2_vl_path(tmp_path_factory):
    return save_tiny_qwen2_vl(tmp_path_factory.mktemp("qwen2_vl") / "model")


@pytest.fixture(scope="module")
def qwen2_vl(qwen2_vl_path):
    return LLM(str(qwen2_vl_path), dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def qwen2_vl_processes(qwen2_vl_path):
    """Prompts preprocessed in 2 worker processes (the default of GPU runs)."""
    return LLM(str(qwen2_vl_path), dtype="float32", device="cpu", mm_preprocess_processes=2)


@pytest.fixture
def http_root(tmp_path):
    """A local HTTP server over tmp_path; yields its base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_image_form_gives_the_same_output(llava, tmp_path, http_root):
    image = random_image(36, 24, 0)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    (tmp_path / "image.png").write_bytes(buffer.getvalue())
    b64 = base64.b64encode(buffer.getvalue()).decode()
    array = np.asarray(image)
    forms = [image, str(tmp_path / "image.png"), tmp_path / "image.png", f"{http_root}/image.png",
             f"data:image/png;base64,{b64}", b64, buffer.getvalue(), array,
             torch.tensor(array).permute(2, 0, 1).float() / 255]
    cached_before = len(llava.processor.cache.entries)
    outputs = llava.generate(["<image>What is this?"] * len(forms), GREEDY, images=forms, use_tqdm=False)
    assert all(out.prompt_token_ids == outputs[0].prompt_token_ids for out in outputs)
    assert all(out.outputs[0].token_ids == outputs[0].outputs[0].token_ids for out in outputs)
    # every form decodes to the same pixels, hence one content hash and one processed item
    assert len(llava.processor.cache.entries) == cached_before + 1


def test_video_forms_and_frame_sampling(tmp_path):
    import av

    frames = random_video(6, 32, 32, 0)
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=3)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    assert media.load_video(path).shape == (6, 32, 32, 3)
    assert media.load_video(str(path), num_frames=3).shape == (3, 32, 32, 3)
    assert media.load_video(str(path), fps=1).shape == (2, 32, 32, 3)  # 2 s of video
    as_list = media.load_video([random_image(32, 32, i) for i in range(4)], num_frames=2)
    assert as_list.shape == (2, 32, 32, 3)
    np.testing.assert_array_equal(media.load_video(frames), frames)


def test_audio_forms_resample(tmp_path):
    import soundfile

    wave = np.sin(np.arange(8000) / 10).astype(np.float32)
    soundfile.write(tmp_path / "clip.wav", wave, 8000)
    from_file = media.load_audio(str(tmp_path / "clip.wav"), 16000)
    from_pair = media.load_audio((wave, 8000), 16000)
    assert from_file.shape == from_pair.shape == (16000,)
    np.testing.assert_allclose(from_file, from_pair, atol=1e-3)
    np.testing.assert_array_equal(media.load_audio(torch.from_numpy(wave), 8000), wave)


def test_prefix_cache_separates_images(llava_path):
    text = "<image>" + "Describe the scene in one sentence. " * 2
    images = [random_image(30, 30, 10), random_image(30, 30, 11)]
    cached = LLM(str(llava_path), dtype="float32", device="cpu", enable_prefix_caching=True)
    uncached = LLM(str(llava_path), dtype="float32", device="cpu", enable_prefix_caching=False)
    expected = [uncached.generate(text, GREEDY, images=image, use_tqdm=False)[0] for image in images]
    first = cached.generate(text, GREEDY, images=images[0], use_tqdm=False)[0]
    second = cached.generate(text, GREEDY, images=images[1], use_tqdm=False)[0]
    again = cached.generate(text, GREEDY, images=images[0], use_tqdm=False)[0]
    assert expected[0].outputs[0].token_ids != expected[1].outputs[0].token_ids
    assert first.outputs[0].token_ids == again.outputs[0].token_ids == expected[0].outputs[0].token_ids
    assert second.outputs[0].token_ids == expected[1].outputs[0].token_ids
    assert second.num_cached_tokens == 0  # same text, other image: no block shared
    assert again.num_cached_tokens > 0  # same text and image: the prefix is reused


def test_chat_content_parts(llava):
    image = random_image(30, 30, 20)
    b64 = base64.b64encode(np.asarray(image).tobytes()).decode()  # not an image file
    messages = [{"role": "user", "content": [{"type": "image", "image": image},
                                             {"type": "text", "text": "What is in this picture?"}]}]
    reply = llava.chat(messages, GREEDY, use_tqdm=False)[0]
    rendered = "<|user|><image>What is in this picture?<|end|><|assistant|>"
    direct = generate_cases(llava, [Case(rendered, {"image": [image]})], 4, add_special_tokens=False)[0]
    assert reply.prompt_token_ids == direct.prompt_token_ids
    assert reply.outputs[0].token_ids == direct.outputs[0].token_ids
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    by_url = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                           {"type": "text", "text": "What is in this picture?"}]}]
    assert llava.chat(by_url, GREEDY, use_tqdm=False)[0].outputs[0].token_ids == reply.outputs[0].token_ids
    with pytest.raises(ValueError, match="cannot decode image"):
        llava.chat([{"role": "user", "content": [{"type": "image_url", "image_url": {
            "url": "data:image/png;base64," + b64}}]}], GREEDY, use_tqdm=False)
    with pytest.raises(ValueError, match="unsupported media type audio"):
        llava.chat([{"role": "user", "content": [{"type": "audio", "audio": "x.wav"}]}], GREEDY,
                   use_tqdm=False)


def test_worker_processes_match_threads(qwen2_vl, qwen2_vl_processes):
    image = "<|vision_start|><|image_pad|><|vision_end|>"
    cases = [Case(f"{image} and {image} differ in",
                  {"image": [random_image(84, 56, 40), random_image(56, 112, 41)]}),
             Case("A video: <|vision_start|><|video_pad|><|vision_end|>",
                  {"video": [random_video(4, 56, 56, 42)]}),
             Case("Text only: the quick brown fox")]
    threaded, pooled = (generate_cases(llm, cases, 4) for llm in (qwen2_vl, qwen2_vl_processes))
    for a, b in zip(threaded, pooled, strict=True):
        assert a.prompt_token_ids == b.prompt_token_ids
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        assert a.outputs[0].cumulative_logprob == pytest.approx(b.outputs[0].cumulative_logprob, abs=1e-5)


def test_media_kept_in_the_model_dtype(qwen2_vl_path):
    """Floating media tensors are stored in the model's dtype (the encoder casts to it first,
    as transformers' does); integer ones (the grid) keep theirs; a bf16 model still runs."""
    llm = LLM(str(qwen2_vl_path), dtype="bfloat16", device="cpu")
    prompt = {"prompt": "<|vision_start|><|image_pad|><|vision_end|> shows"}
    processed = llm.processor.process(prompt, {"image": random_image(84, 56, 43)})
    data = processed.mm_inputs.items[0].data
    assert data["pixel_values"].dtype == torch.bfloat16
    assert data["image_grid_thw"].dtype == torch.int64
    out = llm.generate({**prompt, "multi_modal_data": {"image": random_image(84, 56, 43)}}, GREEDY,
                       use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == GREEDY.max_tokens


class KillsItsUnpickler:
    """Media whose unpickling ends the process: a preprocessing worker that crashes."""

    def __reduce__(self):
        return os._exit, (3,)


def test_a_dying_worker_fails_its_prompt_alone(qwen2_vl_processes):
    with pytest.raises(ValueError, match="preprocessing worker process died"):
        qwen2_vl_processes.generate({"prompt": "x", "multi_modal_data": {"image": KillsItsUnpickler()}},
                                    GREEDY, use_tqdm=False)
    image = "<|vision_start|><|image_pad|><|vision_end|>"
    out = qwen2_vl_processes.generate(f"{image} is", GREEDY, images=random_image(56, 56, 50),
                                      use_tqdm=False)  # the pool was replaced
    assert len(out[0].outputs[0].token_ids) == GREEDY.max_tokens


@pytest.mark.parametrize("engine", ["qwen2_vl", "qwen2_vl_processes"])
def test_bad_inputs_fail_alone(engine, request):
    qwen2_vl = request.getfixturevalue(engine)
    image = random_image(56, 56, 30)
    good = {"prompt": "<|vision_start|><|image_pad|><|vision_end|>What is this?",
            "multi_modal_data": {"image": image}}
    hidden = qwen2_vl.config.text_config.hidden_size
    url = f"http://127.0.0.1:{closed_port()}/image.png"
    bad = {
        "cannot decode image": {"prompt": "x", "multi_modal_data": {"image": b"\x89PNG not really"}},
        "unsupported media type audio": {"prompt": "x", "multi_modal_data": {"audio": (np.zeros(10), 16000)}},
        "unsupported image input": {"prompt": "x", "multi_modal_data": {"image": 3.5}},
        "2 image placeholders .* but 1 image items": {
            "prompt": "<|image_pad|><|image_pad|>", "multi_modal_data": {"image": image}},
        "the video has no frames": {"prompt": "x", "multi_modal_data": {"video": [[]]}},
        f"must be \\[tokens, {hidden}\\]": {"prompt": "x", "multi_modal_data": {"image": {
            "image_embeds": torch.zeros(4, hidden + 1), "image_grid_thw": torch.tensor([[1, 4, 4]])}}},
        "could not fetch media URL": {"prompt": "x", "multi_modal_data": {"image": url}},
    }
    prompts = [good, *bad.values(), good]
    with pytest.raises(BatchError) as raised:
        qwen2_vl.generate(prompts, GREEDY, use_tqdm=False)
    error = raised.value
    assert sorted(error.errors) == list(range(1, len(bad) + 1))
    for index, pattern in enumerate(bad, start=1):
        with pytest.raises(ValueError, match=pattern):
            raise ValueError(error.errors[index])
    assert error.outputs[0].outputs[0].token_ids == error.outputs[-1].outputs[0].token_ids
    assert len(error.outputs[0].outputs[0].token_ids) == GREEDY.max_tokens


def test_limit_mm_per_prompt(llava):
    images = [random_image(30, 30, i) for i in range(3)]
    with pytest.raises(ValueError, match=r"3 image items, more than limit_mm_per_prompt\['image'\] = 2"):
        llava.generate("<image><image><image>", GREEDY, images=images, use_tqdm=False)
