"""Tiled restoration: coverage, same mask as the full problem, no seams in the mean or the std map."""

import pytest
import torch

from restore import Restorer
from restore.tasks import parse
from restore.tiling import tile_starts


@pytest.mark.parametrize("size, tile, overlap, align", [(200, 64, 16, 1), (64, 64, 16, 1), (252, 96, 32, 4),
                                                         (97, 64, 8, 1)])
def test_tiles_cover_with_overlap(size, tile, overlap, align):
    starts = tile_starts(size, tile, overlap, align)
    covered = torch.zeros(size, dtype=torch.bool)
    for s in starts:
        assert s % align == 0 and 0 <= s <= max(0, size - tile)
        covered[s:s + tile] = True
    assert bool(covered.all())
    for a, b in zip(starts, starts[1:]):
        assert b - a <= tile - overlap + align


def _smooth_image(h=96, w=224):
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    return (0.3 + 0.4 * xx * (0.5 + 0.5 * yy)).expand(1, 3, h, w).contiguous()


def test_no_seams_in_mean_or_std():
    x = _smooth_image()
    task = parse("denoise:gaussian:sigma=0.1")
    r = Restorer("langevin", tile=64, overlap=16, tile_above=0, iterations=40)
    y = r.simulate(x, task, seed=0)
    post = r(y, task, samples=2, seed=0)
    assert post.meta["tiling"]["tiles"] > 4 and post.mean.shape == x.shape
    col_err = (post.mean - x).abs().mean(dim=(0, 1, 2))  # error per column
    col_std = post.std.mean(dim=(0, 1, 2))
    seams = [s + d for s in tile_starts(224, 64, 16)[1:] for d in (0, 15)]  # where tiles start/end blending
    inner = [c for c in range(8, 216) if all(abs(c - s) > 4 for s in seams)]
    assert float(col_err[seams].mean()) < 1.5 * float(col_err[inner].mean())
    assert 0.8 < float(col_std[seams].mean()) / float(col_std[inner].mean()) < 1.2
    untiled = Restorer("langevin", tile=0, iterations=40)(y, task, samples=2, seed=0)
    assert abs(float((post.mean - x).abs().mean()) - float((untiled.mean - x).abs().mean())) < 0.01


def test_tiles_share_the_full_mask_and_sr_shapes(clean_rgb):
    big = torch.nn.functional.interpolate(clean_rgb, size=(96, 160), mode="bilinear").clamp(0, 1)
    task = parse("inpaint:random:missing=0.5,noise=0")
    r = Restorer("langevin", tile=64, overlap=16, tile_above=0, iterations=20)
    y = r.simulate(big, task, seed=0)
    post = r(y, task, samples=1, seed=0)
    observed = task.mask(big.shape).expand_as(big) > 0
    assert float((post.mean - big)[observed].abs().mean()) < 0.02  # observed pixels stay put in every tile
    sr = parse("sr:x2")
    y = r.simulate(big, sr, seed=0)
    post = r(y, sr, samples=1, seed=0)
    assert post.mean.shape == big.shape and post.meta["tiling"]["tiles"] > 1


def test_bad_tile_settings():
    with pytest.raises(ValueError, match="tile must be >= 64"):
        Restorer("langevin", tile=16)
    with pytest.raises(ValueError, match="overlap"):
        Restorer("langevin", tile=64, overlap=40)
