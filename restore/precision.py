"""Reduced precision where the hardware makes it pay: bf16 autocast for backbones on CPUs with native bf16.

On CPUs with AMX or AVX512-BF16 (recent Xeons, some laptops' P-cores) oneDNN runs bf16 convolutions and matmuls about
twice as fast as float32 (our tokenizer decoder forward + backward at 256 px, K = 8: 1.6 -> 0.73 s; the token
transformer 2.6 -> 1.25 s; 2 threads). Elsewhere bf16 is emulated and slower, so "auto" keeps float32 there.
bf16 keeps 8 mantissa bits (relative error ~0.4 %): fine inside an iterative solver whose outputs are read at
20-40 dB, not for a final reconstruction read at 50 dB.
"""

from __future__ import annotations

import contextlib

import torch

MODES = ("auto", "bf16", "float")


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """True where bf16 matmuls/convolutions run natively: CUDA with bf16, or a CPU with AMX or AVX512-BF16."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, n, None) for n in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return any(bool(c()) for c in checks if c is not None)


def use_bf16(mode: str, device: torch.device | str = "cpu") -> bool:
    """Resolve a solver's precision setting ("auto" | "bf16" | "float") to whether autocast runs."""
    if mode not in MODES:
        raise ValueError(f"precision must be one of {MODES}, not {mode!r}")
    return mode == "bf16" or (mode == "auto" and native_bf16(device))


def estimate_bf16(mode: str) -> bool:
    """``use_bf16`` for cost estimates on this CPU: False for an unknown mode (the run itself reports that error)."""
    return mode in MODES and use_bf16(mode)


def autocast(enabled: bool, device: torch.device | str = "cpu"):
    """bf16 autocast on ``device`` when enabled, else a no-op context."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
