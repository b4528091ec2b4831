"""Where Stage 2 runs and how many pairs it hands the device at once.

The EMD solver's CPU default (4 MiB of kernels per chunk: 256 pairs of 8x8 grids, sized to
stay in cache while two workers iterate) is slow on a GPU, which needs tens of thousands of
pairs in flight to hide its launch overhead. Measured on an H200 (torch 2.11 + CUDA 13, 2,500
LFW queries x top-100 on `l2`, uniform weights): 4 MiB chunks 38.6 us/pair, 4,096-pair chunks
4.2, 32,768-pair chunks 1.3, 131,072-pair chunks 0.95 us/pair, scores equal to the CPU's within
2.4e-7. So on an accelerator the default is 32,768 pairs (1.3 us/pair at about 0.5 GiB of
float32 kernels for 8x8 grids); on the CPU it stays what it was.
"""

from __future__ import annotations

import torch

from facerank.errors import InputError

GPU_CHUNK_PAIRS = 32768  # pairs per chunk on an accelerator (H200: 1.3 us/pair for EMD on l2)
CPU_EMD_CALL_PAIRS = 4096  # pairs per Stage2EMD call on the CPU (the solver then chunks by bytes)
CPU_VIT_CHUNK_PAIRS = 1024  # pairs per ViT forward on the CPU (activations stay ~100 MB)


def pick_device(name: str = "cpu") -> torch.device:
    """"cpu", "cuda", "cuda:N", "mps" or "auto" (an accelerator if torch sees one)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name!r} asked for but torch sees no CUDA device; pass "
                         "device=\"cpu\" (or \"auto\") to the re-ranker")
    return dev


def is_accelerator(device: torch.device | str) -> bool:
    return torch.device(device).type != "cpu"


def default_chunk_pairs(device: torch.device | str, cpu_default: int) -> int:
    """Pairs per chunk: `cpu_default` on the CPU, GPU_CHUNK_PAIRS on an accelerator."""
    return GPU_CHUNK_PAIRS if is_accelerator(device) else cpu_default
