"""Prompt preprocessing in worker processes (GPU runs of multimodal models).

Media decoding and the HF processors are partly pure Python. Run on threads of
the engine's process, that Python holds the GIL whenever the engine thread
releases it during a kernel launch, and the launch then waits for it: with 8
threads busy, a prefill step of 2 images that the H100 runs in 30 ms took 2 s to
launch. Worker processes have interpreters of their own. What crosses between
processes is pickled with tensors as plain byte arrays: no shared-memory files or
descriptors to run out of.
"""

from __future__ import annotations

import io
import multiprocessing
import pickle
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np
import torch

from intarsia.processors.text import ProcessedPrompt

_START_TIMEOUT_S = 600
_worker_processor: Any = None  # the processor of this worker process
_workers_started: Any = None  # a barrier shared by the pool's processes


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            raw = obj.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
            return _tensor_from_bytes, (raw, obj.dtype, tuple(obj.shape))
        return NotImplemented


def _tensor_from_bytes(raw: np.ndarray, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.from_numpy(raw).view(dtype).reshape(shape)


def _dumps(obj: Any) -> bytes:
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buffer.getvalue()


def _start_worker(make_processor: Callable[[], Any], started: Any) -> None:
    global _worker_processor, _workers_started
    torch.set_num_threads(1)  # the pool's processes share the host's cores
    _worker_processor = make_processor()
    _workers_started = started


def _wait_all_started() -> None:
    _workers_started.wait(_START_TIMEOUT_S)


def _process(request: bytes) -> bytes:
    prompt, mm_data = pickle.loads(request)
    return _dumps(_worker_processor.process(prompt, mm_data))


class ProcessorPool:
    """`process(prompt, mm_data)` of a processor built by `make_processor` (a picklable
    callable) in each of `workers` spawned processes; errors are re-raised here."""

    def __init__(self, make_processor: Callable[[], Any], workers: int) -> None:
        context = multiprocessing.get_context("spawn")  # fork is unsafe once CUDA is up
        started = context.Barrier(workers)
        self.executor = ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                                            initargs=(make_processor, started))
        # Spawning and imports take seconds: start every worker now, not in the first
        # batch. Each start call holds its worker at the barrier, so each lands on one.
        try:
            for future in [self.executor.submit(_wait_all_started) for _ in range(workers)]:
                future.result()
        except BrokenProcessPool as e:
            self.executor.shutdown(cancel_futures=True)
            raise RuntimeError(f"the preprocessing worker processes failed to start: {e}") from e

    def process(self, prompt: dict, mm_data: dict[str, Any]) -> ProcessedPrompt:
        return pickle.loads(self.executor.submit(_process, _dumps((prompt, mm_data))).result())

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
