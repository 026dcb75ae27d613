import pytest
import torch

from restore.tasks import Task, TaskError, parse

SPECS = [
    "denoise:gaussian:sigma=0.1", "denoise:poisson:gain=0.05", "denoise:poisson-gaussian:gain=0.05,sigma=0.02",
    "denoise:real", "deblur:gaussian:sigma=2,noise=0.01", "deblur:motion:size=9,seed=3,noise=0.01", "sr:x2",
    "sr:bicubic:factor=4,noise=0.01", "inpaint:random:missing=0.5,seed=1", "inpaint:box:size=0.3,noise=0.01",
]


@pytest.mark.parametrize("spec", SPECS)
def test_spec_round_trips(spec):
    t = parse(spec)
    assert parse(str(t)) == t
    assert str(parse(str(t))) == str(t)


def test_defaults_and_aliases():
    assert str(parse("sr:x4")) == "sr:bicubic:factor=4,noise=0.01"
    assert parse("deblur") == parse("deblur:gaussian:sigma=2,noise=0.01")
    assert parse(" Deblur:Gaussian:sigma=2 ") == parse("deblur:gaussian:sigma=2.0")


@pytest.mark.parametrize("spec", [s for s in SPECS if s != "denoise:real"])
def test_simulate_shapes_and_determinism(spec, clean_rgb):
    t = parse(spec)
    y1, physics = t.simulate(clean_rgb, torch.Generator().manual_seed(0))
    y2, _ = t.simulate(clean_rgb, torch.Generator().manual_seed(0))
    y3, _ = t.simulate(clean_rgb, torch.Generator().manual_seed(1))
    assert tuple(y1.shape) == t.y_shape(tuple(clean_rgb.shape))
    assert torch.equal(y1, y2)
    assert not torch.equal(y1, y3)  # every task here has noise
    assert physics.A(clean_rgb).shape == y1.shape
    assert t.x_shape(tuple(y1.shape)) == tuple(clean_rgb.shape)


def test_noise_level_matches_spec(clean_rgb):
    y, _ = parse("denoise:gaussian:sigma=0.1").simulate(clean_rgb, torch.Generator().manual_seed(0))
    assert abs(float((y - clean_rgb).std()) - 0.1) < 0.01


def test_blur_kernels_are_2d_and_normalised():
    for spec in ("deblur:gaussian:sigma=2", "deblur:motion:size=15,seed=2"):
        k = parse(spec).kernel()
        assert k.ndim == 4 and k.shape[-1] > 1 and k.shape[-2] > 1  # a 1-D Gaussian kernel is deepinv's trap
        assert abs(float(k.sum()) - 1) < 1e-5 and float(k.min()) >= 0
    k1 = parse("deblur:motion:size=15,seed=2").kernel()
    k2 = parse("deblur:motion:size=15,seed=2").kernel()
    assert torch.equal(k1, k2)


def test_masks(clean_rgb):
    m = parse("inpaint:random:missing=0.5,seed=3").mask(clean_rgb.shape)
    assert 0.4 < float(m.mean()) < 0.6
    box = parse("inpaint:box:size=0.5").mask(clean_rgb.shape)
    assert box[0, 0, 24, 24] == 0 and box[0, 0, 0, 0] == 1
    assert abs(float(1 - box.mean()) - 0.25) < 0.02
    y, physics = parse("inpaint:box:size=0.5").simulate(clean_rgb)
    assert float(y[..., 24, 24].abs().max()) == 0  # missing pixels read as 0


def test_user_kernel_and_mask_files(tmp_path, clean_rgb):
    import imageio.v3 as iio
    import numpy as np

    k = np.zeros((5, 5)); k[2, :] = 1
    np.save(tmp_path / "k.npy", k)
    t = parse(f"deblur:kernel:path={tmp_path / 'k.npy'},noise=0")
    assert parse(str(t)) == t
    y, _ = t.simulate(clean_rgb)
    assert y.shape == clean_rgb.shape
    mask = np.full((48, 48), 255, np.uint8); mask[10:20, 10:20] = 0
    iio.imwrite(tmp_path / "m.png", mask)
    m = parse(f"inpaint:mask:path={tmp_path / 'm.png'}").mask(clean_rgb.shape)
    assert float(m.sum()) == 48 * 48 - 100
    with pytest.raises(TaskError, match="same size"):
        parse(f"inpaint:mask:path={tmp_path / 'm.png'}").mask((1, 3, 64, 64))
    with pytest.raises(TaskError, match="not found"):
        parse("deblur:kernel:path=/nonexistent/k.npy").kernel()


@pytest.mark.parametrize("spec, message", [
    ("blur:gaussian", "unknown task kind 'blur'; known kinds: denoise, deblur, sr, inpaint"),
    ("deblur:foo", "known: gaussian, motion, kernel"),
    ("denoise:gaussian", "needs the parameter 'sigma'"),
    ("denoise:gaussian:sigma=25", "out of range"),
    ("denoise:gaussian:sigma=0", "out of range"),
    ("denoise:gaussian:sigma=nan", "finite"),
    ("deblur:gaussian:sigma=2,noise=-0.1", "out of range"),
    ("sr:x5", "SR factor"),
    ("sr:bicubic:factor=2.5", "whole number"),
    ("inpaint:random:missing=1.5", "missing fraction"),
    ("deblur:gaussian:foo=1", "unknown: foo"),
    ("deblur:gaussian:sigma", "key=value"),
    ("", "non-empty"),
])
def test_bad_specs_have_clear_errors(spec, message):
    with pytest.raises(TaskError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse(spec)


def test_sr_needs_divisible_size():
    with pytest.raises(TaskError, match="not divisible by the SR factor 4"):
        parse("sr:x4").simulate(torch.rand(1, 3, 30, 30))


def test_real_noise_cannot_be_simulated(clean_rgb):
    with pytest.raises(TaskError, match="cannot be simulated"):
        parse("denoise:real").simulate(clean_rgb)


def test_effective_sigma_for_poisson():
    y = torch.full((1, 3, 8, 8), 0.5)
    assert parse("denoise:gaussian:sigma=0.1").effective_sigma(y) == pytest.approx(0.1)
    assert parse("denoise:poisson:gain=0.02").effective_sigma(y) == pytest.approx((0.02 * 0.5) ** 0.5, rel=1e-4)
    assert isinstance(parse("sr:x2"), Task)


def test_membrane_fill_keeps_observed_and_bridges_a_box_smoothly():
    from restore.solvers.base import initial_estimate, membrane_fill

    # a linear ramp is harmonic, so the membrane through the hole's border is the ramp itself
    h = w = 64
    ramp = (torch.linspace(0.1, 0.9, w)[None, :] * 0.6 + torch.linspace(0.0, 0.3, h)[:, None]).expand(1, 3, h, w)
    mask = torch.ones(1, 3, h, w)
    mask[..., 16:48, 20:52] = 0
    y = ramp * mask
    filled = membrane_fill(y, mask)
    assert filled.shape == y.shape
    assert torch.equal(filled[mask > 0], ramp[mask > 0].clamp(0, 1))
    assert float((filled - ramp).abs().max()) < 0.02
    # the estimate every solver starts inpainting from is this fill; a full mask changes nothing
    physics = parse("inpaint:box:size=0.5,noise=0").physics((1, 3, h, w))
    start = initial_estimate(ramp * physics.mask, physics)
    assert float((start - ramp).abs().max()) < 0.02
    assert torch.equal(membrane_fill(ramp, torch.ones_like(ramp)), ramp.clamp(0, 1))
    # nothing observed at all: mid-grey, not NaN
    assert torch.allclose(membrane_fill(ramp, torch.zeros_like(ramp)), torch.full_like(ramp, 0.5))


def test_auto_noise_level_is_estimated_from_the_observation():
    import skimage.data

    from restore import io

    auto = parse("denoise:gaussian:sigma=auto")
    assert auto.auto and parse(str(auto)) == auto and str(auto) == "denoise:gaussian:sigma=auto"
    assert parse("deblur:motion:size=9,noise=AUTO").auto
    x = io.to_tensor(skimage.data.astronaut()[100:228, 150:278])
    for spec, true in (("denoise:gaussian:sigma={}", 0.08), ("deblur:gaussian:sigma=2,noise={}", 0.02)):
        y, _ = parse(spec.format(true)).simulate(x, torch.Generator().manual_seed(0))
        resolved, note = parse(spec.format("auto")).resolved(y)
        assert not resolved.auto and resolved.noise_sigma == pytest.approx(note["sigma"])
        assert abs(note["sigma"] / true - 1) < 0.15, note  # restore.noise on a photo: within a few per cent
        assert note["sigma_255"] == pytest.approx(255 * note["sigma"], abs=1e-2)
    assert parse("denoise:gaussian:sigma=0.1").resolved(x) == (parse("denoise:gaussian:sigma=0.1"), None)
    with pytest.raises(TaskError, match="still 'auto'"):
        auto.noise_sigma
    with pytest.raises(TaskError, match="cannot be simulated"):
        auto.simulate(x)
    for bad in ("sr:bicubic:factor=4,noise=auto", "inpaint:random:noise=auto", "deblur:gaussian:sigma=auto"):
        with pytest.raises(TaskError, match="'auto' is for the noise level"):
            parse(bad)


def test_inpainting_family_follows_the_mask_geometry():
    """Scattered missing pixels are 'inpaint-random', holes wider than REGION_RADIUS 'inpaint-region'; the spec's
    family agrees with the mask's for random masks up to 95 % missing and boxes of 0.2 and more at 128-512 px."""
    from restore.provenance import family_entry
    from restore.tasks import REGION_RADIUS, family_of, hole_radius

    m = torch.ones(1, 1, 40, 40)
    assert hole_radius(m) == 0
    m[..., 10:15, 20:29] = 0  # 5 rows deep: its middle row is 3 px from an observed pixel
    assert hole_radius(m) == 3
    assert hole_radius(torch.zeros(1, 1, 8, 8), cap=5) == 5
    for size in (128, 256, 512):
        shape = (1, 3, size, size)
        for spec in ("inpaint:random:missing=0.5", "inpaint:random:missing=0.95", "inpaint:box:size=0.2",
                     "inpaint:box:size=0.3"):
            task = parse(spec)
            assert family_of(task.physics(shape)) == task.family, (spec, size)
    assert hole_radius(parse("inpaint:random:missing=0.95").mask((1, 3, 256, 256))) <= REGION_RADIUS
    assert [parse(s).family for s in ("denoise:gaussian:sigma=0.1", "sr:x4", "deblur:gaussian:sigma=2")] == \
        ["denoise", "sr4", "deblur"]
    assert family_of(parse("sr:x2").physics((1, 3, 32, 32))) == parse("sr:x2").family == "sr2"
    # a family's own settings, else its kind's
    table = {"sr": {"steps": 50}, "inpaint-region": {"sigma_max": 0.5}}
    assert family_entry(table, "sr4") == {"steps": 50} and family_entry(table, "inpaint-region") == {"sigma_max": 0.5}
    assert family_entry(table, "inpaint-random") == {} and family_entry(table, "denoise-real") == {}
    assert family_entry({"denoise": {"a": 1}}, "denoise-real") == {"a": 1} and family_entry(None, "sr") == {}
