"""restore.train.tune: the grid syntax, its combinations, and one real scan on tiny crops."""

import pytest

from restore.train import tune


def test_grid_parses_numbers_none_booleans_and_json_objects():
    grid = tune.parse_grid(["steps=20,30", "lr_final=none,0.01", 'mean_options={"preset":"paper","steps":2},none',
                            "early=true", "init=denoised"])
    assert grid == {"steps": [20, 30], "lr_final": [None, 0.01], "mean_options": [{"preset": "paper", "steps": 2}, None],
                    "early": [True], "init": ["denoised"]}
    combos = tune.settings({"a": [1, 2], "b": ["x", "y", "z"]})
    assert len(combos) == 6 and combos[0] == {"a": 1, "b": "x"} and combos[-1] == {"a": 2, "b": "z"}
    for bad in ("steps", "=3", "steps="):
        with pytest.raises(ValueError, match="is not name=v1,v2"):
            tune.parse_grid([bad])


def test_evaluate_scores_each_task_above_its_input(clean_rgb):
    tasks = {"denoise": "denoise:gaussian:sigma=0.1", "inpaint": "inpaint:random:missing=0.5,noise=0.01"}
    images = clean_rgb.expand(2, -1, -1, -1).clone()
    res = tune.evaluate("pmrf", {}, images, tasks, samples=2)
    assert set(res) == {"denoise", "inpaint"}
    assert res["denoise"]["psnr"] > 22 and res["inpaint"]["psnr"] > 20  # noisy input ~20 dB, half the pixels missing
    assert 19 < res["denoise"]["input_psnr"] < 21 and res["denoise"]["psnr"] > res["denoise"]["input_psnr"] + 2
    assert 0 <= res["denoise"]["coverage_90"] <= 1 and res["denoise"]["seconds"] > 0
    # a task the solver cannot run is left out, not scored
    assert tune.evaluate("scoredvi", {"iterations": 2}, images[:1], {"sr": "sr:x2"}, samples=1) == {}


def test_camera_noise_is_signal_dependent_and_correlated():
    """The tuning stand-in for real noise: its std grows with the signal, neighbours and channels correlate, and the
    heavy level is about 5x the light one."""
    import torch

    from restore.train import camera_noise

    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    dark, bright = torch.full((1, 3, 64, 64), 0.1), torch.full((1, 3, 64, 64), 0.8)
    n_dark = camera_noise.simulate(dark, "heavy", g()) - dark
    n_bright = camera_noise.simulate(bright, "heavy", g()) - bright
    assert float(n_bright.std()) > 1.8 * float(n_dark.std())
    light = (camera_noise.simulate(torch.full((1, 3, 64, 64), 0.5), "light", g()) - 0.5).std()
    heavy = (camera_noise.simulate(torch.full((1, 3, 64, 64), 0.5), "heavy", g()) - 0.5).std()
    assert 2 / 255 < float(light) < 6 / 255 and 4 < float(heavy / light) < 6
    n = n_bright[0]
    assert float(torch.corrcoef(torch.stack([n[0, :, 1:].flatten(), n[0, :, :-1].flatten()]))[0, 1]) > 0.3
    assert float(torch.corrcoef(torch.stack([n[0].flatten(), n[1].flatten()]))[0, 1]) > 0.3
    with pytest.raises(ValueError, match="unknown camera-noise level"):
        camera_noise.simulate(dark, "medium", g())


def test_raw_pipeline_camera_noise_peaks_in_the_mid_tones_and_is_reproducible():
    """The unprocessed-raw stand-in: noise levels about 4 / 20 / 33 per 255 at mid-grey, fading towards black and
    white (the tone curve), correlated between neighbours (the demosaic), seeded by the generator alone, any size."""
    import torch

    from restore.train import camera_noise

    g = lambda seed=0: torch.Generator().manual_seed(seed)  # noqa: E731

    def std(value, level):
        x = torch.full((1, 3, 64, 64), value)
        return float((camera_noise.simulate(x, level, g()) - x).std()) * 255

    light, heavy, very = (std(0.5, level) for level in camera_noise.RAW_LEVELS)
    assert 3 < light < 5.5 and 17 < heavy < 25 and 30 < very < 42
    assert std(0.05, "raw_heavy") < 0.7 * heavy and std(0.95, "raw_heavy") < 0.7 * heavy
    x = torch.rand(1, 3, 33, 47, generator=g(3))
    y = camera_noise.simulate(x, "raw_heavy", g())
    assert y.shape == x.shape and 0 <= float(y.min()) and float(y.max()) <= 1
    assert torch.equal(y, camera_noise.simulate(x, "raw_heavy", g()))
    assert not torch.equal(y, camera_noise.simulate(x, "raw_heavy", g(1)))
    flat = torch.full((1, 3, 64, 64), 0.4)
    n = (camera_noise.simulate(flat, "raw_heavy", g()) - flat)[0]
    assert float(torch.corrcoef(torch.stack([n[1, :, 1:].flatten(), n[1, :, :-1].flatten()]))[0, 1]) > 0.3
    with pytest.raises(ValueError, match="colour images"):
        camera_noise.simulate(torch.rand(1, 1, 16, 16), "raw_light", g())
    with pytest.raises(ValueError, match="raw_light"):  # the error lists both models' levels
        camera_noise.simulate(flat, "medium", g())


def test_flattest_crops_pick_the_least_textured_window():
    """``--crop-at flattest``: a flat patch inside a textured image is found, and its texture reads near zero."""
    import torch

    from restore.train.common import centre_crops, flattest_crops, texture

    g = torch.Generator().manual_seed(0)
    img = (torch.rand(3, 96, 128, generator=g) * 255).to(torch.uint8)
    img[:, 64:96, 0:32] = 120  # a flat corner, away from the centre
    flat = flattest_crops([img], 32)
    assert flat.shape == (1, 3, 32, 32) and torch.allclose(flat, torch.full_like(flat, 120 / 255))
    assert float(texture(flat)[0]) < 1e-3 < float(texture(centre_crops([img], 32))[0])


def test_tuning_only_x2_sr_is_a_calibration_family_the_benchmarks_lack():
    """``--tasks sr2`` scans x2 SR, which the calibration grid has (cell sr2) and the benchmark's six do not."""
    from benchmarks.common import tasks as benchmark_tasks
    from restore.calibration import family
    from restore.tasks import parse

    spec = parse(tune.EXTRA["sr2"])
    assert dict(spec.params)["factor"] == 2 and family(spec)[0] == "sr2"
    assert not set(tune.EXTRA) & set(benchmark_tasks())
