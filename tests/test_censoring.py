"""Clipped observations (restore.censoring): the imputation restores the Gaussian noise the solvers assume, leaves
every unclipped pixel alone, and a restore of a clipped noisy photo is better and better covered for it."""

import numpy as np
import pytest
import skimage.data
import torch
from scipy import stats

from restore import censoring
from restore.api import Restorer
from restore.tasks import parse


def _dark_crop() -> torch.Tensor:
    """(1, 3, 64, 64) in [0, 1]: the astronaut's dark suit and bright helmet, many pixels near both ends."""
    arr = skimage.data.astronaut()[250:378:2, 60:188:2].astype(np.float32) / 255
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


def test_censored_masks_mark_the_ends_only():
    y = torch.tensor([[[[0.0, 0.3, 1.0, -0.2, 1.4, 0.999]]]])
    low, high = censoring.censored(y)
    assert low.flatten().tolist() == [True, False, False, False, False, False]  # -0.2 was observed, not clipped
    assert high.flatten().tolist() == [False, False, True, False, False, False]


def test_imputation_given_the_truth_gives_back_gaussian_noise(gen):
    """Given the true A x, the completed observation's noise is N(0, sigma^2) again, where the clipped one's was
    biased and narrow."""
    x = torch.rand((1, 3, 96, 96), generator=gen) * 0.3  # dark: a third of the noisy values fall below 0
    sigma = 0.2
    y = (x + sigma * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    low, high = censoring.censored(y)
    assert low.float().mean() > 0.2
    z_clipped = ((y - x) / sigma).flatten().numpy()
    completed = censoring.impute(y, x, sigma, gen)
    z = ((completed - x) / sigma).flatten().numpy()
    assert abs(z_clipped.mean()) > 0.15  # the clipped noise is biased: what the solvers do not expect
    assert abs(z.mean()) < 0.03 and abs(z.std() - 1) < 0.03
    assert stats.kstest(z, "norm").pvalue > 1e-3
    assert torch.equal(completed[~(low | high)], y[~(low | high)])  # unclipped pixels untouched
    assert (completed[low] <= 0).all() and (completed[high] >= 1).all()  # on the side the file reports


def test_truncated_draws_match_the_truncated_normal(gen):
    level = torch.full((200_000,), 0.1)
    draws = censoring._draw_below(level, 0.2, gen).numpy()
    ref = stats.truncnorm(-np.inf, (0 - 0.1) / 0.2, loc=0.1, scale=0.2)
    assert draws.max() <= 0
    assert abs(draws.mean() - ref.mean()) < 2e-3 and abs(draws.std() - ref.std()) < 2e-3
    # far into the tail (an estimate of 1 where the file says 0) the draws stay finite and at or below 0
    far = censoring._draw_below(torch.full((1000,), 1.0), 0.05, gen)
    assert torch.isfinite(far).all() and (far <= 0).all()


def test_the_clipping_level_follows_the_noise_the_shadows_have(gen):
    """White Gaussian noise crosses 0 as often as its level says: the fitted level comes out near it. Noise that
    fades in the shadows (a camera's) crosses less often: the fitted level is the shadows' own, far below the
    image-wide one, so the draws do not pour the image-wide noise into dark areas."""
    x = torch.rand((1, 3, 128, 128), generator=gen) * 0.4
    sigma = 0.15
    white = (x + sigma * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    n_white = int(censoring.censored(white)[0].sum())
    assert censoring.clipping_sigma(x, n_white, sigma) == pytest.approx(sigma, rel=0.1)
    fading = (x + (0.02 + 0.3 * x) * torch.randn(x.shape, generator=gen)).clamp(0, 1)  # 0.02 at black
    n_fading = int(censoring.censored(fading)[0].sum())
    assert 0 < n_fading < n_white
    assert censoring.clipping_sigma(x, n_fading, sigma) < 0.5 * sigma
    assert censoring.clipping_sigma(x, 0, sigma) == sigma and censoring.clipping_sigma(x, x.numel(), sigma) == sigma


def test_nothing_clipped_or_no_noise_leaves_y_alone(gen):
    y = torch.rand((1, 3, 16, 16), generator=gen) * 0.8 + 0.1
    called = []
    out, note = censoring.uncensor(y, 0.1, lambda x, s: called.append(1) or x, gen)
    assert out is y and note is None and not called
    clipped = y.clone()
    clipped[..., 0, 0] = 0.0
    out, note = censoring.uncensor(clipped, 0.0, lambda x, s: x, gen)
    assert out is clipped and note is None


def test_tiled_denoiser_covers_every_pixel_with_context(gen):
    """Tiles with context give what one pass gives, for a denoiser that looks 2 px around (a 5x5 box)."""
    def box(x, s):
        return torch.nn.functional.avg_pool2d(torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect"), 5, 1)

    y = torch.rand((1, 3, 70, 53), generator=gen)
    whole = box(y, 0.1).clamp(0, 1)
    tiled = censoring.denoise_tiled(box, y, 0.1, tile=32, pad=4)
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))  # borders: reflect of a tile's pad vs the image's
    assert torch.allclose(tiled[inner], whole[inner], atol=1e-6)
    assert tiled.shape == y.shape


@pytest.mark.parametrize("sigma", [50 / 255])
def test_restore_of_a_clipped_photo_gains_from_the_imputation(sigma):
    """PMRF on an 8-bit clipped noisy crop: the imputation is on by default, said in meta, and it beats the same
    run on the clipped values as they are in PSNR and in 90 % coverage; psnr_input stays the file's."""
    x = _dark_crop()
    g = torch.Generator().manual_seed(3)
    y = ((x + sigma * torch.randn(x.shape, generator=g)).clamp(0, 1) * 255).round() / 255
    task = f"denoise:gaussian:sigma={sigma:.6f}"
    restorer = Restorer("pmrf")
    post = restorer(y, task, samples=4, seed=0, ground_truth=x)
    note = post.meta["censored"]
    assert note["imputed"] and note["fraction_at_0"] > 0.02
    assert note["denoiser"]["name"].startswith(censoring.DENOISER)

    class AsIs(Restorer):
        def uncensor(self, y, task, seed, force=False, estimated=False):
            return y, None

    plain = AsIs("pmrf")(y, task, samples=4, seed=0, ground_truth=x)
    assert "censored" not in plain.meta
    assert post.meta["metrics"]["psnr"] > plain.meta["metrics"]["psnr"] + 0.15  # 0.26 dB here
    assert post.meta["metrics"]["coverage_90"] > plain.meta["metrics"]["coverage_90"] + 0.02
    assert post.meta["metrics"]["psnr_input"] == pytest.approx(plain.meta["metrics"]["psnr_input"])


def test_inpainting_and_unclipped_observations_are_not_imputed(gen):
    x = _dark_crop()
    restorer = Restorer("pmrf")
    y_inpaint = restorer.simulate(x, "inpaint:random:missing=0.5,noise=0.01", seed=0).clamp(0, 1)
    y_out, note = restorer.uncensor(y_inpaint, parse("inpaint:random:missing=0.5,noise=0.01"), 0)
    assert note is None and y_out is y_inpaint
    y = (x * 0.8 + 0.1 + 0.01 * torch.randn(x.shape, generator=gen)).clamp(0.01, 0.99)  # nothing at the ends
    y_out, note = restorer.uncensor(y, parse("denoise:gaussian:sigma=0.01"), 0)
    assert note is None and y_out is y


def test_a_solver_that_opts_out_gets_the_file_as_it_is_unless_forced():
    """Langevin measured worse with the imputation (held-out crops, its module): its runs see the clipped values;
    a benchmark can still force the imputation to show why."""
    from restore.solvers.langevin import LangevinSolver

    assert LangevinSolver.impute_clipped is False
    x = _dark_crop()
    y = (x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    task = parse("denoise:gaussian:sigma=0.2")
    restorer = Restorer("langevin")
    out, note = restorer.uncensor(y, task, 0)
    assert out is y and note is None
    forced, note = restorer.uncensor(y, task, 0, force=True)
    assert note["imputed"] and (forced[y == 0] <= 0).all() and (forced[y == 0] < 0).any()


def test_gaussian_clipping_at_an_estimated_level_is_imputed():
    """sigma=auto on a file with clipped Gaussian noise: the clipped values cross the bounds as often as Gaussian
    noise would and the noise fills the estimated level, so they are imputed, and the restore is better and better
    covered than on the file as it is."""
    x = _dark_crop()
    y = (x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    post = Restorer("pmrf")(y, "denoise:gaussian:sigma=auto", samples=4, seed=0, ground_truth=x)
    note = post.meta["censored"]
    assert note["imputed"] is True and "look like white Gaussian noise" in note["why"]
    assert note["estimate_chi2"] >= censoring.GAUSSIAN_FIT
    as_is = Restorer("pmrf")
    as_is.uncensor = lambda y, task, seed, **k: (y, None)
    plain = as_is(y, "denoise:gaussian:sigma=auto", samples=4, seed=0, ground_truth=x)
    assert post.meta["metrics"]["psnr"] > plain.meta["metrics"]["psnr"] + 0.15  # 0.26 dB here
    assert post.meta["metrics"]["coverage_90"] > plain.meta["metrics"]["coverage_90"] + 0.04  # 0.80 -> 0.89


def test_camera_like_clipping_at_an_estimated_level_is_left_alone(gen):
    """Noise that fades towards black (a camera's) clips far less often than Gaussian noise at the estimated level:
    nothing imputed, and the note says why."""
    x = _dark_crop() * 0.6
    y = (x + (0.01 + 0.25 * x) * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    post = Restorer("pmrf")(y, "denoise:gaussian:sigma=auto", samples=2, seed=0)
    note = post.meta["censored"]
    assert note["imputed"] is False and "weaker" in note["why"]
    assert note["clipped_vs_expected"]["0"] < censoring.GAUSSIAN_CLIPPING


def test_what_counts_as_clipped_gaussian_noise():
    base = {"imputed": True, "crushed": [], "fraction_at_0": 0.05, "fraction_at_1": 0.001,
            "clipped_vs_expected": {"0": 1.1, "1": 0.2}, "estimate_chi2": 0.8}
    assert censoring.clipping_unlike_gaussian(base) is None  # the more-hit bound decides
    assert "weaker towards" in censoring.clipping_unlike_gaussian({**base, "clipped_vs_expected": {"0": 0.6}})
    assert "too few" in censoring.clipping_unlike_gaussian({**base, "fraction_at_0": 0.001})
    assert "crushed" in censoring.clipping_unlike_gaussian({**base, "imputed": False, "crushed": ["0", "1"]})
    # a crushed bound does not count: the other one decides
    assert "weaker towards" in censoring.clipping_unlike_gaussian({**base, "crushed": ["0"], "fraction_at_1": 0.01})
    # clipping like Gaussian noise, but a residual far below the level (a camera's noise read at its bright areas)
    assert "explains" in censoring.clipping_unlike_gaussian({**base, "estimate_chi2": 0.4})


def test_the_estimate_fit_separates_white_noise_from_noise_that_fades(gen):
    """The note's estimate_chi2: white noise at its level leaves about its variance in the residual; noise whose
    level is read from the bright areas (a camera's, read at an image-wide level) leaves far less."""
    x = _dark_crop()
    # the true A x (as the tiles see it, with their context): the statistic itself, without a denoiser's errors
    oracle = lambda v, s: torch.nn.functional.pad(x, (censoring.PAD,) * 4, mode="reflect")  # noqa: E731
    white = (x + 0.1 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    _, note = censoring.uncensor(white, 0.1, oracle, gen)
    fading = (x + 0.1 * x * torch.randn(x.shape, generator=gen)).clamp(0, 1)  # 0.1 only where x is white
    _, faded = censoring.uncensor(fading, 0.1, oracle, gen)
    assert note["estimate_chi2"] == pytest.approx(0.95, abs=0.1)  # a little under 1: the clipped tails are left out
    assert faded["estimate_chi2"] < censoring.GAUSSIAN_FIT / 2


def test_a_level_the_caller_says_was_estimated_counts_as_auto():
    """The app's slider left at its reading: checked as sigma=auto is."""
    x = _dark_crop() * 0.6
    y = (x + (0.01 + 0.25 * x) * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    post = Restorer("pmrf")(y, "denoise:gaussian:sigma=0.13", samples=2, seed=0, noise_estimated=True)
    assert post.meta["censored"]["imputed"] is False and post.meta["noise_level_from_estimate"] is True
    assert "noise_estimate" not in post.meta  # nothing was estimated here
    stated = Restorer("pmrf")(y, "denoise:gaussian:sigma=0.13", samples=2, seed=0)
    assert stated.meta["censored"]["imputed"] is True


def test_crushed_blacks_are_left_as_the_file_has_them(gen):
    """A shadow the file holds at 0 as a whole (a camera's black level), far more often than noise at the stated
    level could put it there, is not clipped noise: nothing is drawn there."""
    x = torch.full((1, 3, 64, 64), 0.3)
    x[..., :32, :] = 0.02
    y = (x + 0.05 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    y[..., :32, :] = 0.0  # crushed: every shadow pixel at 0
    out, note = censoring.uncensor(y, 0.05, lambda v, s: torch.nn.functional.avg_pool2d(
        torch.nn.functional.pad(v, (2, 2, 2, 2), mode="replicate"), 5, 1), gen)
    assert note["crushed"] == ["0"] and note["imputed"] is False
    assert torch.equal(out[..., :32, :], y[..., :32, :])


def test_the_cli_line_says_what_was_done_with_the_clipped_values(tmp_path):
    from typer.testing import CliRunner

    from restore.batch import describe_clipping
    from restore.cli import app
    from restore.io import write_image

    assert describe_clipping({}) is None
    tiny = {"fraction_at_0": 0.0001, "fraction_at_1": 0.0, "imputed": False, "why": "too few"}
    assert describe_clipping({"censored": tiny}) is None  # nothing worth a word
    left = {**tiny, "fraction_at_0": 0.05, "why": "the noise level was estimated from the image and ..."}
    assert "left as they are: the noise level was estimated" in describe_clipping({"censored": left})
    crushed = {"fraction_at_0": 0.05, "fraction_at_1": 0.0, "imputed": False, "crushed": ["0"]}
    assert "look crushed" in describe_clipping({"censored": crushed})
    x = _dark_crop()
    y = (x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    write_image(tmp_path / "noisy.png", y)
    r = CliRunner().invoke(app, ["run", str(tmp_path / "noisy.png"), "-t", "denoise:gaussian:sigma=0.2", "-o",
                                 str(tmp_path / "out"), "-n", "2"])
    assert r.exit_code == 0, r.output
    assert "clipped values: 6." in r.output and "imputed as clipped Gaussian noise" in r.output


def test_too_few_clipped_values_at_an_estimated_level_cost_no_denoiser_pass():
    """The gate's first test needs only the counts: a photo with a handful of values at 0 is left as it is without
    running the denoiser over it, and says why."""
    y = torch.full((1, 3, 64, 64), 0.5)
    y[..., 0, :5] = 0.0  # 15 of 12 288 values
    restorer = Restorer("pmrf")
    out, note = restorer.uncensor(y, parse("denoise:gaussian:sigma=0.1"), 0, estimated=True)
    assert out is y and note["imputed"] is False and "too few" in note["why"]
    assert restorer._censor_denoiser is None
    _, stated = restorer.uncensor(y, parse("denoise:gaussian:sigma=0.1"), 0)
    # a stated level still goes through the imputation (here the lone zeros on flat grey read as crushed)
    assert restorer._censor_denoiser is not None and stated["crushed"] == ["0"]
