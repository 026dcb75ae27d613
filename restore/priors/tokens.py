"""Discrete-token prior for APS: an FSQ tokenizer (4x downsampling) and a bidirectional masked-token transformer.

FSQ (Mentzer et al. 2023) quantises each of the d latent channels to a few levels; the codebook is the implicit grid
of level combinations (levels (7, 5, 5, 5) -> 875 codes), so no code can die and no reassignment is needed. The
transformer predicts the token at masked positions (MaskGIT-style, cosine masking schedule); its learned position
embedding is interpolated for token grids of other sizes, so any image size works.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def _res(ch: int) -> nn.Module:
    return nn.Sequential(nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1), nn.GroupNorm(8, ch),
                         nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1))


class _Residual(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.body = _res(ch)

    def forward(self, x):
        return x + self.body(x)


class FSQTokenizer(nn.Module):
    """Encoder (two stride-2 convs) -> FSQ -> decoder; images (B, 3, H, W) in [0, 1] with H, W multiples of 4."""

    def __init__(self, levels=(7, 5, 5, 5), ch: int = 64):
        super().__init__()
        self.levels = tuple(int(v) for v in levels)
        if any(v % 2 == 0 or v < 3 for v in self.levels):
            # odd levels keep the grid on the integers -(L-1)/2 .. (L-1)/2 that rounding produces
            raise ValueError(f"FSQ levels must be odd and >= 3; got {self.levels}")
        self.ch = int(ch)
        d = len(self.levels)
        self.enc = nn.Sequential(nn.Conv2d(3, ch, 4, 2, 1), _Residual(ch), nn.Conv2d(ch, 2 * ch, 4, 2, 1),
                                 _Residual(2 * ch), _Residual(2 * ch), nn.GroupNorm(8, 2 * ch), nn.SiLU(),
                                 nn.Conv2d(2 * ch, d, 1))
        self.dec = nn.Sequential(nn.Conv2d(d, 2 * ch, 3, padding=1), _Residual(2 * ch), _Residual(2 * ch),
                                 nn.ConvTranspose2d(2 * ch, ch, 4, 2, 1), _Residual(ch),
                                 nn.ConvTranspose2d(ch, ch, 4, 2, 1), nn.GroupNorm(8, ch), nn.SiLU(),
                                 nn.Conv2d(ch, 3, 3, padding=1))
        half = torch.tensor([(lv - 1) / 2 for lv in self.levels])
        self.register_buffer("half_levels", half, persistent=False)
        basis = torch.cumprod(torch.tensor([1] + list(self.levels[:-1])), 0)
        self.register_buffer("basis", basis, persistent=False)

    @property
    def config(self) -> dict:
        return {"levels": list(self.levels), "ch": self.ch}

    @property
    def n_codes(self) -> int:
        return math.prod(self.levels)

    def codebook(self) -> torch.Tensor:
        """(K, d) the embedding of every token index (grid points scaled to [-1, 1])."""
        idx = torch.arange(self.n_codes, device=self.half_levels.device)
        return self.indices_to_codes(idx)

    def indices_to_codes(self, idx: torch.Tensor) -> torch.Tensor:
        digits = (idx[..., None] // self.basis) % torch.tensor(self.levels, device=idx.device)
        return (digits - self.half_levels) / self.half_levels

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """FSQ with a straight-through gradient; z (B, d, h, w) -> codes in [-1, 1]."""
        bounded = torch.tanh(z.movedim(1, -1)) * self.half_levels
        q = bounded + (bounded.round() - bounded).detach()
        return (q / self.half_levels).movedim(-1, 1)

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        digits = (codes.movedim(1, -1) * self.half_levels + self.half_levels).round().long()
        return (digits * self.basis).sum(-1)

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """Quantised code embeddings (B, d, h, w) of images x (B, 3, H, W) in [0, 1]."""
        return self.quantize(self.enc(x * 2 - 1))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Token indices (B, h, w) of images x."""
        return self.codes_to_indices(self.codes(x))

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, d, h, w) code embeddings -> images (B, 3, 4h, 4w), unclipped [0, 1] scale."""
        return self.dec(codes) * 0.5 + 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode_codes(self.codes(x))


class MaskedTokenTransformer(nn.Module):
    """Bidirectional transformer over a token grid; index ``n_codes`` is [MASK]. Returns logits (B, h*w, n_codes)."""

    def __init__(self, n_codes: int, dim: int = 192, depth: int = 6, heads: int = 6, grid: int = 16):
        super().__init__()
        self.n_codes, self.dim, self.depth, self.heads, self.grid = n_codes, dim, depth, heads, grid
        self.embed = nn.Embedding(n_codes + 1, dim)
        self.pos = nn.Parameter(torch.randn(1, dim, grid, grid) * 0.02)
        self.blocks = nn.ModuleList([_Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_codes)

    @property
    def config(self) -> dict:
        return {"n_codes": self.n_codes, "dim": self.dim, "depth": self.depth, "heads": self.heads, "grid": self.grid}

    @property
    def mask_id(self) -> int:
        return self.n_codes

    def forward(self, tokens: torch.Tensor, window: int | None = None) -> torch.Tensor:
        """tokens (B, h, w) -> logits (B, h*w, n_codes). ``window`` (in tokens): a grid larger than it is read as
        overlapping window x window tiles (stride 3/4 of a window, logits averaged where tiles overlap), each with the
        position table it was trained on; None or 0: one pass over the whole grid with the table stretched to it."""
        b, h, w = tokens.shape
        if window and (h > window or w > window):
            return self._windowed(tokens, window)
        pos = self.pos if (h, w) == (self.grid, self.grid) else F.interpolate(self.pos, size=(h, w), mode="bicubic",
                                                                              align_corners=False)
        x = self.embed(tokens.flatten(1)) + pos.flatten(2).transpose(1, 2)
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x))


    def _windowed(self, tokens: torch.Tensor, window: int) -> torch.Tensor:
        b, h, w = tokens.shape
        # a side shorter than the window is padded with [MASK] (the transformer's "unknown") and cropped afterwards
        ph, pw = max(h, window), max(w, window)
        padded = F.pad(tokens, (0, pw - w, 0, ph - h), value=self.mask_id)
        starts = [_window_starts(ph, window), _window_starts(pw, window)]
        tiles = torch.cat([padded[:, i:i + window, j:j + window] for i in starts[0] for j in starts[1]])
        logits = self.forward(tiles).view(len(starts[0]) * len(starts[1]), b, window, window, -1)
        total = logits.new_zeros(b, ph, pw, logits.shape[-1])
        count = logits.new_zeros(1, ph, pw, 1)
        n = 0
        for i in starts[0]:
            for j in starts[1]:
                total[:, i:i + window, j:j + window] += logits[n]
                count[:, i:i + window, j:j + window] += 1
                n += 1
        return (total / count)[:, :h, :w].reshape(b, h * w, -1)


def _window_starts(n: int, window: int) -> list[int]:
    """Evenly spaced starts of windows covering 0..n-1 that overlap by at least a quarter window."""
    if n <= window:
        return [0]
    count = -(-(n - window) // (window - window // 4)) + 1
    return [round(i * (n - window) / (count - 1)) for i in range(count)]


class _Block(nn.Module):
    """Pre-norm attention + MLP with plain Linear layers (so dynamic int8 quantisation applies)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.n1, self.n2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(self.n1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x = x + self.proj(a)
        return x + self.fc2(F.gelu(self.fc1(self.n2(x))))


class TokenPrior(nn.Module):
    """The APS prior: ``tokenizer`` (decoder needs gradients) + ``transformer`` (forward-only)."""

    def __init__(self, tokenizer: dict | None = None, transformer: dict | None = None):
        super().__init__()
        self.tokenizer = FSQTokenizer(**(tokenizer or {}))
        tf = dict(transformer or {})
        tf.setdefault("n_codes", self.tokenizer.n_codes)
        self.transformer = MaskedTokenTransformer(**tf)

    @property
    def config(self) -> dict:
        return {"tokenizer": self.tokenizer.config, "transformer": self.transformer.config}
