"""Wiener-Hunt deconvolution (restore.solvers.wiener): a prior-free deblurring that gains over the observation, and
the start of the solvers that begin deblurring from it (APS, VBLE)."""

import pytest
import torch

from restore import metrics
from restore.solvers import base
from restore.solvers.wiener import starting_estimate, wiener_hunt
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


def test_starting_estimate_is_wiener_on_deblurring_only(clean_rgb):
    y, physics = parse("deblur:gaussian:sigma=2,noise=0.01").simulate(clean_rgb, torch.Generator().manual_seed(0))
    assert torch.equal(starting_estimate(y, physics, "wiener"), wiener_hunt(y, physics))
    assert torch.equal(starting_estimate(y, physics, "observation"), y)
    y, physics = parse("sr:x2").simulate(clean_rgb, torch.Generator().manual_seed(0))
    bicubic = starting_estimate(y, physics, "observation")
    assert bicubic.shape == clean_rgb.shape and torch.equal(starting_estimate(y, physics, "wiener"), bicubic)
    with pytest.raises(base.SolverError, match="init_estimate must be 'wiener' or 'observation', not 'tv'"):
        starting_estimate(y, physics, "tv")


@pytest.mark.parametrize("solver", ["aps", "vble"])
def test_results_recorded_before_the_wiener_start_are_stale_on_deblurring_only(solver):
    """A config recorded before ``init_estimate`` existed ran deblurring from y: its deblurring results (and
    calibration cells) differ from today's, the other families' do not; the paper preset still starts from y."""
    import dataclasses

    from restore import stale
    from restore.provenance import canonical

    def recorded(**options):
        """(today's config, as recorded before init_estimate: the option and its per-family entries gone; VBLE's
        other per-family settings, its rate and lambda, kept so that only the start differs)"""
        now = canonical(dataclasses.asdict(base.get(solver, **options).config))
        then = {k: v for k, v in now.items() if k != "init_estimate"}
        table = {f: {k: v for k, v in (e or {}).items() if k != "init_estimate"} for f, e in
                 (now.get("per_family") or {}).items()}
        then["per_family"] = {f: e for f, e in table.items() if e} or None
        return now, then

    now, then = recorded()
    assert base.get(solver).settings_for("deblur")[0].init_estimate == "wiener"
    assert stale.settings_changed(solver, now, then, {}, "deblur") == ["init_estimate"]
    for family in ("denoise", "sr4", "inpaint-region", "inpaint-random"):
        assert base.get(solver).settings_for(family)[0].init_estimate == "observation"
        assert stale.settings_changed(solver, now, then, {}, family) == []
    paper, paper_then = recorded(preset="paper")
    assert stale.settings_changed(solver, paper, paper_then, {"preset": "paper"}, "deblur") == []
    assert base.get(solver, init_estimate="observation").settings_for("deblur")[0].init_estimate == "observation"
