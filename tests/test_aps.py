"""APS mechanics on a tiny token prior made by the training script (the shipped one is still to be trained)."""

import pytest
import torch

from restore.priors import registry
from restore.solvers import base
from restore.tasks import parse

from conftest import make_image_folder


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    from restore.train import tokens as train

    d = tmp_path_factory.mktemp("tok")
    make_image_folder(d / "data", 3, 70, 80)
    train.main(["--data", str(d / "data"), "--out", str(d / "models" / "tokens-natural"), "--ckpt", str(d / "ck.pt"),
                "--tokenizer-steps", "3", "--transformer-steps", "2", "--batch", "2", "--patch", "32", "--ch", "16",
                "--dim", "32", "--depth", "1", "--heads", "2", "--val-images", "1", "--ckpt-every", "2",
                "--threads", "1"])
    mp = pytest.MonkeyPatch()
    mp.setenv("RESTORE_MODELS", str(d / "models"))
    yield registry.load("tokens-natural")
    mp.undo()


def test_card_and_fsq_round_trip(tokens):
    card = tokens.card
    assert card["steps"] == {"tokenizer": 3, "transformer": 2}
    assert {"tokenizer_psnr", "masked_token_accuracy_50pct", "perplexity_50pct"} <= set(card["held_out_64px"])
    tok = tokens.module.tokenizer
    assert tok.n_codes == 875
    z = torch.randn(2, 4, 3, 3) * 3
    codes = tok.quantize(z)
    assert torch.equal(tok.indices_to_codes(tok.codes_to_indices(codes)).movedim(-1, 1), codes)  # on the grid
    idx = torch.arange(tok.n_codes)
    assert torch.equal(tok.codes_to_indices(tok.indices_to_codes(idx)[None].movedim(-1, 1)[..., None])[0, :, 0], idx)


def _run(task, x, prior, n=2, seed=0, **cfg):
    y, physics = parse(task).simulate(x, torch.Generator().manual_seed(3))
    return base.get("aps", **{"steps": 4, "inner_steps": 6, **cfg})(
        y, physics, prior, n_samples=n, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("task", ["sr:x4", "inpaint:box:size=0.3", "denoise:gaussian:sigma=0.1"])
def test_shapes_and_measurement_fit_decreases(task, clean_rgb, tokens):
    post = _run(task, clean_rgb, tokens)
    assert post.mean.shape == clean_rgb.shape and post.samples.shape == (2, 3, 48, 48)
    fit = post.meta["measurement_fit_per_step"]
    assert len(fit) == 4 and fit[-1] < fit[0]


def test_deterministic_diverse_and_grey(clean_rgb, clean_grey, tokens):
    a = _run("sr:x4", clean_rgb, tokens, seed=1)
    b = _run("sr:x4", clean_rgb, tokens, seed=1)
    c = _run("sr:x4", clean_rgb, tokens, seed=2)
    assert torch.equal(a.samples, b.samples) and not torch.equal(a.samples, c.samples)
    assert float(a.std.mean()) > 0
    assert _run("denoise:gaussian:sigma=0.1", clean_grey, tokens).mean.shape == (1, 1, 48, 48)


def test_measurement_tilt_and_carried_tilt_beat_the_plain_reading(clean_rgb, monkeypatch):
    """On the shipped token prior with few steps: phi started from the tokenizer's encoding of the cheap estimate and
    carried across steps (the defaults) restores far better than phi reset to the prior at every step."""
    from pathlib import Path

    from restore import metrics

    monkeypatch.setenv("RESTORE_MODELS", str(Path(__file__).resolve().parents[1] / "models"))
    prior = registry.load("tokens-natural")
    y, physics = parse("denoise:gaussian:sigma=0.1").simulate(clean_rgb, torch.Generator().manual_seed(3))
    psnr = {}
    for label, cfg in {"plain": {"init": "prior", "carry_tilt": False}, "ours": {}}.items():
        post = base.get("aps", steps=4, inner_steps=6, **cfg)(y, physics, prior, n_samples=2,
                                                             generator=torch.Generator().manual_seed(0))
        psnr[label] = float(metrics.psnr(post.mean, clean_rgb))
    assert psnr["ours"] > psnr["plain"] + 2.0, psnr
    assert psnr["ours"] > float(metrics.psnr(y, clean_rgb)) + 1.0, psnr


def test_unknown_init_is_refused(clean_rgb, tokens):
    with pytest.raises(base.SolverError, match="init must be 'prior' or 'measurement'"):
        _run("sr:x4", clean_rgb, tokens, init="bicubic")


def test_sampled_anchors_widen_the_samples_and_stay_seeded(clean_rgb, monkeypatch):
    from pathlib import Path

    monkeypatch.setenv("RESTORE_MODELS", str(Path(__file__).resolve().parents[1] / "models"))
    prior = registry.load("tokens-natural")
    y, physics = parse("denoise:gaussian:sigma=0.1").simulate(clean_rgb, torch.Generator().manual_seed(3))

    def run(seed, **cfg):
        return base.get("aps", steps=4, inner_steps=6, **cfg)(y, physics, prior, n_samples=3,
                                                             generator=torch.Generator().manual_seed(seed))

    snapped, sampled = run(0), run(0, anchor_sampling=1.0)
    assert float(sampled.std.mean()) > 1.2 * float(snapped.std.mean())
    assert torch.equal(sampled.samples, run(0, anchor_sampling=1.0).samples)


def test_windowed_transformer_reads_each_tile_with_its_trained_positions(tokens):
    """A grid larger than the window is read as overlapping tiles: rows only one tile covers get exactly that tile's
    logits; a grid no larger than the window is one global pass."""
    tf = tokens.module.transformer.eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        small = torch.randint(0, tf.n_codes + 1, (2, 16, 16), generator=g)
        assert torch.equal(tf(small, window=16), tf(small))
        tall = torch.randint(0, tf.n_codes + 1, (2, 20, 16), generator=g)  # tiles start at rows 0 and 4
        out = tf(tall, window=16).view(2, 20, 16, -1)
        top = tf(tall[:, :16]).view(2, 16, 16, -1)
        bottom = tf(tall[:, 4:]).view(2, 16, 16, -1)
        assert torch.allclose(out[:, :4], top[:, :4], atol=1e-5)
        assert torch.allclose(out[:, 16:], bottom[:, 12:], atol=1e-5)
        assert torch.allclose(out[:, 4:16], (top[:, 4:] + bottom[:, :12]) / 2, atol=1e-5)
        assert tf(torch.randint(0, tf.n_codes, (1, 9, 37), generator=g), window=16).shape == (1, 9 * 37, tf.n_codes)
        assert not torch.allclose(tf(tall, window=16), tf(tall))  # global attention over the stretched table differs


def test_precision_setting(clean_rgb, tokens):
    from restore import precision

    assert precision.use_bf16("bf16") and not precision.use_bf16("float")
    with pytest.raises(ValueError, match="precision must be one of"):
        precision.use_bf16("half")
    with pytest.raises(base.SolverError, match="aps precision must be one of"):
        _run("sr:x4", clean_rgb, tokens, precision="half")
    post = _run("sr:x4", clean_rgb, tokens, precision="bf16")
    assert post.meta["precision"] == "bf16" and post.samples.dtype == torch.float32
    assert _run("sr:x4", clean_rgb, tokens, precision="float").meta["precision"] == "float32"
    assert base.get("aps", preset="paper").config.precision == "float"


def test_light_noise_warns_that_the_tokenizer_caps_the_result():
    """APS stayed near its tokenizer's 27 dB whatever the noise (benchmarks.lownoise): a cleaner input gets a
    warning."""
    from types import SimpleNamespace

    import torch

    from restore.solvers import base
    from restore.tasks import parse

    solver = base.get("aps")
    prior = SimpleNamespace(name="tokens-natural", card={"held_out_64px": {"tokenizer_psnr": 26.977}})
    y = torch.zeros(1, 3, 16, 16)
    light = parse("denoise:gaussian:sigma=0.02").physics((1, 3, 16, 16))
    assert "below this noisy input itself (34.0 dB" in solver.run_warning(y, light, prior)
    heavy = parse("denoise:gaussian:sigma=0.1").physics((1, 3, 16, 16))
    assert solver.run_warning(y, heavy, prior) is None
    blur = parse("deblur:gaussian:sigma=1,noise=0.001").physics((1, 3, 16, 16))
    assert solver.run_warning(y, blur, prior) is None  # denoising only: elsewhere the input's PSNR is not known


def test_transformer_fine_tune_decays_its_lr_from_where_it_resumed(tmp_path):
    """--tf-cosine-to: a resumed run decays the transformer's lr along a cosine from the step it resumed at (kept in
    the checkpoint, so a later resume continues the same curve) to the last step, and the card says so."""
    import json
    import math

    from restore.train import tokens as train

    make_image_folder(tmp_path / "data", 3, 70, 80)
    common = ["--data", str(tmp_path / "data"), "--out", str(tmp_path / "models" / "tokens-natural"), "--ckpt",
              str(tmp_path / "ck.pt"), "--tokenizer-steps", "3", "--batch", "2", "--patch", "32", "--ch", "16",
              "--dim", "32", "--depth", "1", "--heads", "2", "--val-images", "1", "--ckpt-every", "1",
              "--threads", "1"]
    train.main([*common, "--transformer-steps", "2"])
    train.main([*common, "--transformer-steps", "4", "--tf-lr", "1e-3", "--tf-cosine-to", "1e-5"])
    card = json.loads((tmp_path / "models" / "tokens-natural.json").read_text())
    assert card["steps"] == {"tokenizer": 3, "transformer": 4}
    assert card["transformer_lr"] == "cosine 0.001 -> 1e-05 from step 5 to 7"
    ck = torch.load(tmp_path / "ck.pt", weights_only=False)
    assert ck["decay_from"] == 5 and ck["step"] == 7
    # the last step taken (step 6) ran at the curve's midpoint
    lr = ck["opt_tf"]["param_groups"][0]["lr"]
    assert lr == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_decoder_fine_tune_keeps_the_tokens_and_resumes(tokens, tmp_path):
    """restore.train.token_decoder trains the decoder only: the exported prior encodes every image to the same
    tokens (the transformer stays valid), its decoder moved, its card logs the stage; a resumed run continues."""
    import json
    import os
    from pathlib import Path

    from restore.train import token_decoder

    make_image_folder(tmp_path / "data", 3, 70, 80)
    source = Path(os.environ["RESTORE_MODELS"]) / "tokens-natural"  # where the fixture trained it
    args = ["--data", str(tmp_path / "data"), "--from", str(source), "--out", str(tmp_path / "out" / "tok"),
            "--ckpt", str(tmp_path / "ck.pt"), "--batch", "2", "--patch", "32", "--val-images", "1",
            "--val-sizes", "32", "--val-every", "2", "--ckpt-every", "1", "--lr", "1e-2"]
    token_decoder.main([*args, "--steps", "2"])
    token_decoder.main([*args, "--steps", "4"])
    card = json.loads((tmp_path / "out" / "tok.json").read_text())
    stage = card["decoder_finetune"]
    assert stage["steps"] == 4 and [e["step"] for e in stage["validation_log"]] == [0, 2, 4]
    assert card["steps"] == tokens.card["steps"]  # the shipped prior's own training record stays
    new = torch.load(tmp_path / "out" / "tok.pt", weights_only=True)["state_dict"]
    old = tokens.module.state_dict()
    for k, v in new.items():
        same = torch.equal(v.float(), old[k].half().float())
        assert same != k.startswith("tokenizer.dec."), k
    assert torch.load(tmp_path / "ck.pt", weights_only=False)["step"] == 4


def test_deblurring_starts_from_a_wiener_deconvolution(clean_rgb, monkeypatch):
    """Deblurring's first tilt centres on the Wiener-Hunt deconvolution of y (PER_FAMILY), which restores better than
    centring it on the blurred y; other families keep the observation, and an explicit option wins."""
    from pathlib import Path

    from restore import metrics

    monkeypatch.setenv("RESTORE_MODELS", str(Path(__file__).resolve().parents[1] / "models"))
    prior = registry.load("tokens-natural")
    solver = base.get("aps", steps=4, inner_steps=3)
    assert solver.settings_for("deblur")[0].init_estimate == "wiener"
    assert solver.settings_for("denoise")[0].init_estimate == "observation"
    explicit = base.get("aps", init_estimate="observation")
    assert explicit.settings_for("deblur")[0].init_estimate == "observation"
    assert base.get("aps", preset="paper").settings_for("deblur")[0].init_estimate == "observation"
    y, physics = parse("deblur:motion:size=9,noise=0.01").simulate(clean_rgb, torch.Generator().manual_seed(3))
    psnr = {}
    for label in ("wiener", "observation"):
        post = base.get("aps", steps=4, inner_steps=3, init_estimate=label)(
            y, physics, prior, n_samples=2, generator=torch.Generator().manual_seed(0))
        psnr[label] = float(metrics.psnr(post.mean, clean_rgb))
    assert psnr["wiener"] > psnr["observation"] + 0.15, psnr  # 24.22 against 23.88 dB here


def test_unknown_init_estimate_is_refused(clean_rgb, tokens):
    with pytest.raises(base.SolverError, match="init_estimate must be 'wiener' or 'observation'"):
        _run("deblur:gaussian:sigma=1", clean_rgb, tokens, init_estimate="tv")
