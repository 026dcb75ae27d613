"""Wiener-Hunt deconvolution (restore.solvers.wiener): a prior-free deblurring that gains over the observation."""

import pytest
import torch

from restore import metrics
from restore.solvers.wiener import wiener_hunt
from restore.tasks import parse


@pytest.mark.parametrize("task", ["deblur:gaussian:sigma=2,noise=0.01", "deblur:motion:size=9,noise=0.01"])
def test_deblurs_better_than_the_observation(task, clean_rgb):
    y, physics = parse(task).simulate(clean_rgb, torch.Generator().manual_seed(0))
    x = wiener_hunt(y, physics)
    assert x.shape == clean_rgb.shape and float(x.min()) >= 0 and float(x.max()) <= 1
    assert float(metrics.psnr(x, clean_rgb)) > float(metrics.psnr(y, clean_rgb)) + 0.5


def test_the_weight_trades_noise_for_detail(clean_grey):
    y, physics = parse("deblur:gaussian:sigma=2,noise=0.02").simulate(clean_grey, torch.Generator().manual_seed(0))
    rough, smooth = wiener_hunt(y, physics, weight=0.01), wiener_hunt(y, physics, weight=1000.0)
    # a tiny weight amplifies the noise (rougher than the clean image), a huge one stays blurred (smoother)
    tv = lambda im: float((im[..., 1:, :] - im[..., :-1, :]).abs().mean())  # noqa: E731
    assert tv(rough) > tv(clean_grey) > tv(smooth)


def test_other_tasks_are_refused(clean_rgb):
    y, physics = parse("sr:x2").simulate(clean_rgb, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="denoising and deblurring, not sr"):
        wiener_hunt(y, physics)
