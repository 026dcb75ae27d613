"""CAE priors: training script (resume, export with real entropy coding), zoo loading from a local file."""

import json

import pytest
import torch

from restore.priors.cae import build, load_zoo

from conftest import make_image_folder


def test_train_resume_export_and_entropy_coding(tmp_path):
    from restore.priors.registry import load_checkpoint
    from restore.train import cae

    data = make_image_folder(tmp_path / "data", 3, 80, 96)
    common = ["--data", str(data), "--out", str(tmp_path / "cae"), "--ckpt", str(tmp_path / "ck.pt"), "--N", "16",
              "--M", "24", "--batch", "2", "--patch", "64", "--val-images", "1", "--val-size", "64",
              "--ckpt-every", "1", "--val-every", "2", "--threads", "1"]
    cae.main(common + ["--steps", "1"])
    cae.main(common + ["--steps", "2"])
    (tmp_path / "ck.pt").unlink()  # without the optimiser checkpoint: warm start from the shipped weights
    cae.main(common + ["--steps", "3"])
    card = json.loads((tmp_path / "cae.json").read_text())
    assert card["steps"] == 3 and card["kind"] == "cae" and len(card["validation_log"]) == 1
    rd = card["rate_distortion_held_out"]
    assert rd["bpp"] > 0 and rd["coded_bpp_first_image"] > 0 and rd["psnr"] > 0
    ck = load_checkpoint(tmp_path / "cae.pt")
    net = build(**ck["config"])
    net.load_state_dict(ck["state_dict"], strict=False)
    net.update(force=True)
    x = torch.rand(1, 3, 64, 64)
    comp = net.compress(x)
    rec = net.decompress(comp["strings"], comp["shape"])["x_hat"]
    with torch.no_grad():
        direct = net(x)["x_hat"]
    assert rec.shape == x.shape
    assert float((rec - direct).abs().mean()) < 0.1  # decoding the bitstream matches the quantised forward pass

    # another rate point fine-tuned from this one: its own step count, the origin named on its card
    other = common[:2] + ["--out", str(tmp_path / "cae-hi"), "--ckpt", str(tmp_path / "ck-hi.pt")] + common[6:]
    cae.main(other + ["--steps", "1", "--lmbda", "0.05", "--init-from", str(tmp_path / "cae.pt")])
    hi = json.loads((tmp_path / "cae-hi.json").read_text())
    assert hi["steps"] == 1 and hi["lambda"] == 0.05 and hi["initialised_from"].startswith("cae.pt (its 3 steps")
    with pytest.raises(SystemExit, match="does not fit"):
        cae.main(other[:-2] + ["--N", "8", "--M", "24", "--ckpt", str(tmp_path / "ck-x.pt"), "--steps", "1",
                               "--init-from", str(tmp_path / "cae.pt")])


def test_zoo_from_local_file_and_offline_error(tmp_path, monkeypatch):
    from compressai.zoo import image_models

    ref = image_models["mbt2018-mean"](quality=1, metric="mse", pretrained=False)
    torch.save(ref.state_dict(), tmp_path / "mbt.pth")
    net = load_zoo("compressai:mbt2018-mean:1", local_file=tmp_path / "mbt.pth")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(net(x)["x_hat"], ref.eval()(x)["x_hat"])
    with pytest.raises(ValueError, match="quality must be 1..8"):
        load_zoo("compressai:mbt2018-mean:9")
    with pytest.raises(ValueError, match="unknown compressai architecture"):
        load_zoo("compressai:nope:3")

    import compressai.zoo.image as zi

    def offline(*a, **k):
        raise OSError("Name or service not known")

    monkeypatch.setattr(zi, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match="offline, pass a local state-dict file"):
        load_zoo("compressai:mbt2018-mean:1")


def test_float16_export_keeps_constants_float16_cannot_hold():
    """compressai's likelihood bound (1e-9) underflows to 0 in float16, which made VBLE's rate -inf: it stays
    float32 on export, and shipped files that hold it as 0 get the architecture's constant back on load."""
    import torch

    from restore.priors import registry
    from restore.train.common import half_state_dict

    state = half_state_dict({"w": torch.ones(3), "bound": torch.tensor([1e-9]), "big": torch.tensor([1e6])})
    assert state["w"].dtype == torch.float16
    assert state["bound"].dtype == torch.float32 and float(state["bound"]) == pytest.approx(1e-9)
    assert state["big"].dtype == torch.float32
    # a weight with a few negligible entries (below float16's range) is still shipped as float16
    conv = torch.full((64,), 0.05)
    conv[0] = 1e-9
    assert half_state_dict({"conv": conv})["conv"].dtype == torch.float16
    for name in registry.available("cae"):
        if registry.PRIORS[name].file:
            net = registry.load(name).module
            assert float(net.gaussian_conditional.likelihood_lower_bound.bound) > 0
            assert float(net.entropy_bottleneck.likelihood_lower_bound.bound) > 0


def test_colour_jitter_moves_hues_and_saturates_within_range():
    from restore.train.common import colour_jitter, random_patches

    g = torch.Generator().manual_seed(0)
    # a muted patch: grey plus a small colour cast that varies across it
    base = torch.full((3, 16, 16), 0.5)
    base[0] += torch.linspace(-0.1, 0.1, 16)
    base[2] -= 0.05
    out = colour_jitter(base, g, max_saturation=2.5)
    assert out.shape == base.shape and out.min() >= 0 and out.max() <= 1
    # grey values are kept (up to clipping), chroma grows by a factor in [1, 2.5]
    assert torch.allclose(out.mean(0), base.mean(0), atol=1e-5)
    gain = (out - out.mean(0)).norm() / (base - base.mean(0)).norm()
    assert 1.0 <= gain <= 2.5 + 1e-5
    # over many draws the channels get permuted (the red-dominant ramp ends up in other channels)
    dominant = {int((colour_jitter(base, g) - 0.5)[:, :, -1].mean((1,)).argmax()) for _ in range(30)}
    assert len(dominant) >= 2
    # in random_patches: fraction 0 leaves patches as cropped, fraction 1 changes them; same seed, same batch
    imgs = [(torch.rand(3, 40, 40) * 255).to(torch.uint8)]
    plain = random_patches(imgs, 4, 16, torch.Generator().manual_seed(1))
    again = random_patches(imgs, 4, 16, torch.Generator().manual_seed(1))
    assert torch.equal(plain, again)
    jittered = random_patches(imgs, 4, 16, torch.Generator().manual_seed(1), colour_fraction=1.0)
    assert jittered.shape == plain.shape and not torch.allclose(jittered, plain)
