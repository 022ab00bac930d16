"""Prompt preprocessing in worker processes (GPU runs of multimodal models).

Media decoding and the HF processors are partly pure Python. Run on threads of
the engine's process, that Python holds the GIL whenever the engine thread
releases it during a kernel launch, and the launch then waits for it: with 8
threads busy, a prefill step of 2 images that the H100 runs in 30 ms took 2 s to
launch. Worker processes have interpreters of their own.

Tensors cross in one shared-memory block per message, which the receiver copies
out of (with the GIL released) and unlinks; only the small rest is pickled. Through
the executor's pipe, a 448x448 image's 5 MB of pixels cost the receiving process
~25 ms of GIL-holding work.
"""

from __future__ import annotations

import io
import multiprocessing
import pickle
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import torch

from intarsia.processors.text import ProcessedPrompt

_START_TIMEOUT_S = 600
_ALIGN = 64  # bytes: each tensor starts at an aligned offset of the shared block
_worker_processor: Any = None  # the processor of this worker process
_workers_started: Any = None  # a barrier shared by the pool's processes


class _TensorsAside(pickle.Pickler):
    """Pickles tensors as references; `tensors` collects them for the shared block."""

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.tensors: list[torch.Tensor] = []
        self.nbytes = 0

    def persistent_id(self, obj: Any) -> Any:
        if not isinstance(obj, torch.Tensor):
            return None
        tensor = obj.detach().cpu().contiguous()
        ref = (self.nbytes, tensor.numel() * tensor.element_size(), tensor.dtype, tuple(tensor.shape))
        self.tensors.append(tensor)
        self.nbytes += -(-ref[1] // _ALIGN) * _ALIGN
        return ref


class _TensorsFromBlock(pickle.Unpickler):
    def __init__(self, data: bytes, block: SharedMemory | None) -> None:
        super().__init__(io.BytesIO(data))
        self.block = block

    def persistent_load(self, ref: Any) -> torch.Tensor:
        offset, nbytes, dtype, shape = ref
        if nbytes == 0:
            return torch.empty(shape, dtype=dtype)
        raw = torch.frombuffer(self.block.buf, dtype=torch.uint8, count=nbytes, offset=offset)
        return raw.clone().view(dtype).reshape(shape)


def _pack(obj: Any) -> tuple[str | None, bytes]:
    """(name of the shared block holding obj's tensors, or None; the pickled rest)."""
    buffer = io.BytesIO()
    pickler = _TensorsAside(buffer)
    pickler.dump(obj)
    if not pickler.nbytes:
        return None, buffer.getvalue()
    block = SharedMemory(create=True, size=pickler.nbytes)
    offset = 0
    for tensor in pickler.tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if nbytes:
            torch.frombuffer(block.buf, dtype=torch.uint8, count=nbytes, offset=offset).copy_(
                tensor.reshape(-1).view(torch.uint8))
        offset += -(-nbytes // _ALIGN) * _ALIGN
    block.close()
    return block.name, buffer.getvalue()


def _unpack(packed: tuple[str | None, bytes]) -> Any:
    """The object `_pack` packed; its shared block is copied out and unlinked."""
    name, data = packed
    if name is None:
        return _TensorsFromBlock(data, None).load()
    block = SharedMemory(name=name)
    try:
        return _TensorsFromBlock(data, block).load()
    finally:
        block.close()
        block.unlink()


def _start_worker(make_processor: Callable[[], Any], started: Any) -> None:
    global _worker_processor, _workers_started
    torch.set_num_threads(1)  # the pool's processes share the host's cores
    _worker_processor = make_processor()
    _workers_started = started


def _wait_all_started() -> None:
    _workers_started.wait(_START_TIMEOUT_S)


def _process(request: tuple[str | None, bytes]) -> tuple[str | None, bytes]:
    prompt, mm_data = _unpack(request)
    return _pack(_worker_processor.process(prompt, mm_data))


class ProcessorPool:
    """`process(prompt, mm_data)` of a processor built by `make_processor` (a picklable
    callable) in each of `workers` spawned processes; errors are re-raised here. A worker
    that dies (a crashing decoder, the OOM killer) breaks the pool: it is replaced, and
    the prompts it took down are tried once more on the new one."""

    def __init__(self, make_processor: Callable[[], Any], workers: int) -> None:
        self.make_processor, self.workers = make_processor, workers
        self.lock = threading.Lock()  # prompts run on several threads; one replaces a pool
        self.executor = self._start()

    def _start(self) -> ProcessPoolExecutor:
        context = multiprocessing.get_context("spawn")  # fork is unsafe once CUDA is up
        started = context.Barrier(self.workers)
        executor = ProcessPoolExecutor(self.workers, mp_context=context, initializer=_start_worker,
                                       initargs=(self.make_processor, started))
        # Spawning and imports take seconds: start every worker now, not in the first
        # batch. Each start call holds its worker at the barrier, so each lands on one.
        try:
            for future in [executor.submit(_wait_all_started) for _ in range(self.workers)]:
                future.result()
        except BrokenProcessPool as e:
            executor.shutdown(cancel_futures=True)
            raise RuntimeError(f"the preprocessing worker processes failed to start: {e}") from e
        return executor

    def process(self, prompt: dict, mm_data: dict[str, Any]) -> ProcessedPrompt:
        for _ in range(2):
            executor = self.executor
            try:
                return _unpack(executor.submit(_process, _pack((prompt, mm_data))).result())
            except BrokenProcessPool:
                with self.lock:
                    if self.executor is executor:  # not yet replaced by another prompt's thread
                        executor.shutdown(wait=False, cancel_futures=True)
                        self.executor = self._start()
        raise ValueError("a preprocessing worker process died twice while processing this prompt "
                         "(a crash or out of memory in media decoding or the HF processor)")

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
