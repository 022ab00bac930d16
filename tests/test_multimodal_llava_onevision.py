"""LLaVA-OneVision against transformers: SigLIP tiles with the anyres_max grid cap and
image_newline, videos pooled bilinearly 2x2 with a closing newline, images and videos
of different sizes and lengths, images and videos in one prompt, mixed text-only
prompts, chunked prefill splitting items.

Architectures: LlavaOnevisionForConditionalGeneration.
"""

from mm_reference import Case, assert_mm_matches_hf, random_image, random_video

from intarsia.tiny_multimodal import save_tiny_llava_onevision


def test_llava_onevision_matches_transformers(tmp_path):
    path = save_tiny_llava_onevision(tmp_path / "model")
    cases = [
        # a square image: a 2x2 tile grid, scaled down to anyres_max_2
        Case("<|user|><image>What is in this picture?<|end|><|assistant|>",
             {"image": [random_image(60, 60, 0)]}),
        # a tall image (a 2x1 grid, kept whole) and a video in one prompt
        Case("<image> and <video>: the quick brown fox", {"image": [random_image(20, 50, 1)],
                                                         "video": [random_video(3, 40, 30, 2)]}),
        # two videos of different sizes, with a length unlike the previous prompt's
        # (transformers batches one prompt's videos, so they share one)
        Case("<video><video> Describe both clips.", {"video": [random_video(2, 28, 28, 3),
                                                               random_video(2, 50, 30, 4)]}),
        Case("Hello, how are you today? The sky is blue and the grass is green."),  # text only
    ]
    assert_mm_matches_hf(path, cases)
