"""Loading media from every form a user may hand over: objects, paths, URLs, base64.

Images become RGB `PIL.Image`s (pillow), videos `[frames, height, width, 3]` uint8
arrays (decoded with `av`, frames sampled uniformly), audio mono float32 waveforms
resampled to the feature extractor's rate (`librosa`). Every failure is a
`ValueError` that names the input and what was wrong with it.
"""

from __future__ import annotations

import base64
import binascii
import io
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

URL_TIMEOUT_S = 10.0
MAX_MEDIA_BYTES = 256 << 20  # refuse downloads and data URLs larger than this


def _describe(source: Any) -> str:
    text = source if isinstance(source, str) else type(source).__name__
    return text if len(text) <= 80 else text[:77] + "..."


def fetch_url(url: str, timeout: float = URL_TIMEOUT_S, max_bytes: int = MAX_MEDIA_BYTES) -> bytes:
    """Download an http(s) URL with a timeout and a size cap."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (scheme checked)
            data = response.read(max_bytes + 1)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise ValueError(f"could not fetch media URL {_describe(url)}: {e}") from e
    if len(data) > max_bytes:
        raise ValueError(f"media at {_describe(url)} is larger than {max_bytes} bytes")
    return data


def _decode_base64(text: str) -> bytes:
    if len(text) > MAX_MEDIA_BYTES * 4 // 3 + 4:
        raise ValueError(f"base64 media is larger than {MAX_MEDIA_BYTES} bytes")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"invalid base64 media data: {e}") from e


def media_bytes(source: str | bytes | Path) -> bytes | Path:
    """Resolve a string source to raw bytes (URL, data URL, base64) or a local path."""
    if isinstance(source, bytes):
        return source
    if isinstance(source, Path):
        return source
    if source.startswith(("http://", "https://")):
        return fetch_url(source)
    if source.startswith("data:"):
        header, _, payload = source.partition(",")
        if ";base64" not in header:
            raise ValueError(f"only base64 data URLs are supported, got {_describe(header)}")
        return _decode_base64(payload)
    try:
        path = Path(source).expanduser()
        if path.exists():
            return path
    except OSError:  # e.g. a base64 string too long to be a file name
        pass
    if source.startswith("file://"):
        return Path(source[len("file://"):])
    if len(source) > 64 and "/" not in source[:8] and "." not in source[-6:]:
        return _decode_base64(source)  # a bare base64 string
    raise ValueError(f"media {_describe(source)} is not an existing file, an http(s) URL, "
                     "a data URL or base64 data")


def _open(data: bytes | Path) -> io.BytesIO | Path:
    if isinstance(data, Path) and not data.is_file():
        raise ValueError(f"media file {data} does not exist")
    return io.BytesIO(data) if isinstance(data, bytes) else data


def _array_image(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = array.transpose(1, 2, 0)  # channels-first -> channels-last
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"an image array must be [H, W], [H, W, C] or [C, H, W] with 1, 3 or 4 "
                         f"channels, got shape {tuple(array.shape)}")
    if array.dtype != np.uint8:
        scaled = array.astype(np.float32)
        if scaled.size and scaled.max() <= 1.0:
            scaled = scaled * 255.0
        array = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(array)


def load_image(source: Any) -> Image.Image:
    """An RGB image from a PIL image, path, URL, data URL, base64 string, bytes,
    numpy array or torch tensor (HWC or CHW; floats in [0, 1] or [0, 255])."""
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    if isinstance(source, torch.Tensor):
        source = source.detach().cpu().numpy()
    if isinstance(source, np.ndarray):
        return _array_image(source).convert("RGB")
    if not isinstance(source, (str, bytes, Path)):
        raise ValueError(f"unsupported image input of type {type(source).__name__}; pass a PIL "
                         "image, a path, a URL, base64 data, a numpy array or a torch tensor")
    try:
        with Image.open(_open(media_bytes(source))) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot decode image {_describe(source)}: {e}") from e


def _sample_indices(total: int, num_frames: int | None, fps: float | None,
                    native_fps: float | None) -> np.ndarray:
    """Uniformly spaced frame indices: `num_frames` of them, or `fps` per second."""
    if num_frames is None and fps is not None and native_fps:
        num_frames = max(1, round(total / native_fps * fps))
    if num_frames is None or num_frames >= total:
        return np.arange(total)
    return np.linspace(0, total - 1, num_frames).round().astype(np.int64)


def load_video(source: Any, num_frames: int | None = None, fps: float | None = None) -> np.ndarray:
    """Frames `[T, H, W, 3]` uint8 from a file/URL/base64 (decoded with av), an array or
    tensor of frames, or a list of images; sampled uniformly to `num_frames` or `fps`."""
    if isinstance(source, (list, tuple)):
        if not source:
            raise ValueError("the video has no frames")
        frames = np.stack([np.asarray(load_image(frame)) for frame in source])
        return frames[_sample_indices(len(frames), num_frames, None, None)]
    if isinstance(source, torch.Tensor):
        source = source.detach().cpu().numpy()
    if isinstance(source, np.ndarray):
        if source.ndim != 4 or source.shape[0] == 0:
            raise ValueError(f"a video array must be [T, H, W, C] or [T, C, H, W] with at least one "
                             f"frame, got shape {tuple(source.shape)}")
        frames = np.stack([np.asarray(_array_image(frame).convert("RGB")) for frame in source])
        return frames[_sample_indices(len(frames), num_frames, None, None)]
    if not isinstance(source, (str, bytes, Path)):
        raise ValueError(f"unsupported video input of type {type(source).__name__}; pass a path, "
                         "a URL, base64 data, a [T, H, W, C] array or a list of frames")
    import av  # deferred: decoding video is rare next to images

    try:
        with av.open(_open(media_bytes(source))) as container:
            if not container.streams.video:
                raise ValueError(f"video {_describe(source)} has no video stream")
            stream = container.streams.video[0]
            decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
            native_fps = float(stream.average_rate) if stream.average_rate else None
    except av.error.FFmpegError as e:
        raise ValueError(f"cannot decode video {_describe(source)}: {e}") from e
    if not decoded:
        raise ValueError(f"video {_describe(source)} has no frames")
    frames = np.stack(decoded)
    return frames[_sample_indices(len(frames), num_frames, fps, native_fps)]


def load_audio(source: Any, sampling_rate: int) -> np.ndarray:
    """A mono float32 waveform at `sampling_rate` from a path/URL/base64 (librosa), a
    `(waveform, rate)` pair, or a waveform array/tensor already at `sampling_rate`."""
    import librosa  # deferred: librosa's import is slow

    if isinstance(source, tuple):
        if len(source) != 2:
            raise ValueError("audio as a tuple must be (waveform, sample_rate)")
        waveform, rate = source
        waveform = _waveform(waveform)
        if int(rate) != sampling_rate:
            waveform = librosa.resample(waveform, orig_sr=int(rate), target_sr=sampling_rate)
        return waveform
    if isinstance(source, (np.ndarray, torch.Tensor)):
        return _waveform(source)
    if not isinstance(source, (str, bytes, Path)):
        raise ValueError(f"unsupported audio input of type {type(source).__name__}; pass a path, "
                         "a URL, base64 data or (waveform, sample_rate)")
    try:
        waveform, _ = librosa.load(_open(media_bytes(source)), sr=sampling_rate, mono=True)
    except Exception as e:  # soundfile/audioread raise many unrelated types
        raise ValueError(f"cannot decode audio {_describe(source)}: {e}") from e
    return _waveform(waveform)


def _waveform(data: Any) -> np.ndarray:
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().numpy()
    waveform = np.asarray(data, dtype=np.float32)
    if waveform.ndim == 2:  # [channels, samples] -> mono
        waveform = waveform.mean(axis=0)
    if waveform.ndim != 1 or waveform.size == 0:
        raise ValueError(f"an audio waveform must be a non-empty 1-D (or [channels, samples]) "
                         f"array, got shape {waveform.shape}")
    return waveform
