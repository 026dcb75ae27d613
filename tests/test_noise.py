"""restore.noise: blind noise-level estimation (scikit-image's bundled pictures, never the evaluation data)."""

import math

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F

from restore.noise import NoiseEstimate, estimate_noise, estimate_noise_std
from restore.solvers.scoredvi import estimate_noise_std as old_estimate


def _tensor(arr: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(arr.astype(np.float32) / 255.0)
    return (t[None] if t.ndim == 2 else t.permute(2, 0, 1))[None].contiguous()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Small ops on a busy machine are many times slower with several threads: keep these tests quick."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def pictures() -> dict:
    """Half-size (1, C, 256, 256) colour and grey photographs in [0, 1] (small: the tests stay fast)."""
    return {"astronaut": F.avg_pool2d(_tensor(skimage.data.astronaut()), 2),
            "coffee": F.avg_pool2d(_tensor(skimage.data.coffee()[:, 44:556]), 2),
            "camera": F.avg_pool2d(_tensor(skimage.data.camera()), 2),
            "moon": F.avg_pool2d(_tensor(skimage.data.moon()), 2)}


@pytest.mark.parametrize("name", ["astronaut", "coffee", "camera", "moon"])
@pytest.mark.parametrize("sigma255", [5, 15, 30, 50])
def test_gaussian_noise_of_known_std_is_found_within_15_percent(pictures, name, sigma255):
    x = pictures[name]
    g = torch.Generator().manual_seed(sigma255)
    y = x + sigma255 / 255 * torch.randn(x.shape, generator=g)
    est = estimate_noise_std(y)
    assert abs(est - sigma255 / 255) < 0.15 * sigma255 / 255, (name, sigma255, 255 * est)


def test_clipped_8bit_noise_with_saturated_areas_is_still_found(pictures):
    """Clipping at 0 and 1 truncates the noise; the saturated patches are left out instead of read as noise-free."""
    x = pictures["astronaut"].clone()
    x[..., :, :96] = 1.0  # a blown-out third of the picture
    g = torch.Generator().manual_seed(3)
    y = torch.round((x + 20 / 255 * torch.randn(x.shape, generator=g)).clamp(0, 1) * 255) / 255
    assert abs(estimate_noise_std(y) - 20 / 255) < 0.15 * 20 / 255


def test_clean_smooth_images_read_small(pictures):
    ramp = torch.linspace(0, 1, 128)
    smooth = torch.stack([ramp[None, :] * ramp[:, None], ramp[None, :].expand(128, 128),
                          1 - ramp[:, None].expand(128, 128)])
    assert estimate_noise_std(smooth[None]) < 0.5 / 255
    assert estimate_noise_std(torch.full((1, 3, 64, 64), 0.5)) == 0.0
    blurred = F.avg_pool2d(pictures["astronaut"], 5, 1, 2, count_include_pad=False)  # a clean, smooth photograph
    assert estimate_noise_std(blurred) < 1.5 / 255


@pytest.mark.parametrize("name", ["astronaut", "camera"])
def test_spatially_correlated_noise_reads_closer_to_its_std_than_the_old_estimate(pictures, name):
    """Camera noise is correlated after demosaicing: i.i.d. noise through a 3x3 box, rescaled to a known std."""
    x = pictures[name]
    c = x.shape[1]
    g = torch.Generator().manual_seed(1)
    n = F.conv2d(F.pad(torch.randn(x.shape, generator=g), (1, 1, 1, 1), mode="reflect"), torch.ones(c, 1, 3, 3) / 9,
                 groups=c)
    sigma = 20 / 255
    y = x + sigma * n / n.std()
    new, old = estimate_noise_std(y), old_estimate(y)
    assert abs(new - sigma) < abs(old - sigma), (255 * new, 255 * old)
    assert abs(new - sigma) < 0.15 * sigma, 255 * new
    # the same on a 64 px crop, where the old estimate reads the image unshuffled and under-reads most
    crop = y[..., 96:160, 96:160]
    assert abs(estimate_noise_std(crop) - sigma) < abs(old_estimate(crop) - sigma)


def test_details_are_consistent_and_the_result_is_deterministic(pictures):
    g = torch.Generator().manual_seed(5)
    y = pictures["coffee"] + 10 / 255 * torch.randn(pictures["coffee"].shape, generator=g)
    est = estimate_noise(y)
    assert isinstance(est, NoiseEstimate) and len(est.per_channel) == 3 and est.method
    assert est.sigma == pytest.approx(math.sqrt(sum(s * s for s in est.per_channel) / 3))
    assert est.sigma255 == pytest.approx(255 * est.sigma)
    assert est.details["patch"] == 8 and not est.details["fallback"]
    assert estimate_noise_std(y.clone()) == est.sigma  # bit-identical on a rerun
    assert estimate_noise_std(y.double()) == pytest.approx(est.sigma, rel=1e-6)


@pytest.mark.parametrize("bad, message", [
    (torch.rand(3, 64, 64), "shape"),
    (torch.rand(2, 3, 64, 64), "shape"),
    (torch.rand(1, 0, 64, 64), "shape"),
    (torch.rand(1, 3, 8, 64), "too small"),
    (torch.rand(1, 3, 64, 64).index_fill_(3, torch.tensor([7]), float("nan")), "NaN"),
    (torch.rand(1, 3, 64, 64).index_fill_(2, torch.tensor([7]), float("inf")), "infinite"),
    (torch.rand(1, 3, 64, 64) * 255, "0, 1"),
    (torch.randint(0, 255, (1, 3, 64, 64)), "float"),
    (np.zeros((1, 3, 64, 64)), "torch.Tensor"),
])
def test_bad_input_is_refused_with_a_clear_message(bad, message):
    with pytest.raises(ValueError, match=message):
        estimate_noise_std(bad)
