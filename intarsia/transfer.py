"""Copies between host and device that never wait for the device's queued work.

The engine launches a step while the previous one still runs on the GPU. A copy
from or to pageable host memory synchronises with the stream (torch's blocking copy
waits for everything queued), which would let the GPU run dry while the host
prepares the next step; a copy through pinned memory is queued like a kernel.
"""

from __future__ import annotations

import torch


def device_tensor(values: list | torch.Tensor, device: torch.device,
                  dtype: torch.dtype | None = None) -> torch.Tensor:
    """`values` (a list, or a tensor on any device) as a tensor on `device`."""
    tensor = torch.as_tensor(values, dtype=dtype)
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def device_cat(parts: list[torch.Tensor], device: torch.device,
               dtype: torch.dtype | None = None) -> torch.Tensor:
    """``torch.cat(parts)`` (host tensors) on `device`, converted to `dtype`; on CUDA
    concatenated straight into pinned memory, so the host makes one pass over the bytes."""
    dtype = dtype or parts[0].dtype
    if device.type != "cuda":
        return torch.cat(parts).to(device, dtype)
    staged = torch.empty((sum(len(p) for p in parts), *parts[0].shape[1:]), dtype=dtype, pin_memory=True)
    torch.cat([p.to(dtype) for p in parts], out=staged)
    return staged.to(device, non_blocking=True)


def host_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """A CUDA tensor's copy in pinned host memory, queued behind the work that produces it
    (valid once that work is done: wait on an event recorded after this call)."""
    if tensor.device.type != "cuda":
        return tensor
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    return host.copy_(tensor, non_blocking=True)
