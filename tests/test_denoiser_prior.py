import json

import pytest
import torch

from restore.priors import registry
from restore.priors.denoiser import ScoreDenoiser

from conftest import make_image_folder

TINY = {"nc": (8, 16, 16, 16), "nb": 1}


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return ScoreDenoiser(**TINY).eval()


@pytest.mark.parametrize("shape", [(1, 3, 37, 50), (2, 1, 20, 9), (1, 3, 64, 64)])
def test_any_size_colour_and_grey(net, shape):
    x = torch.rand(shape)
    with torch.no_grad():
        out = net(x, 0.1)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_sigma_forms_agree(net):
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        a = net(x, 0.2)
        b = net(x, torch.tensor([0.2, 0.2]))
        c = net(x, torch.full((2, 1, 16, 16), 0.2))
    assert torch.allclose(a, b, atol=1e-6) and torch.allclose(a, c, atol=1e-6)
    with pytest.raises(ValueError, match="sigma has 3 entries"):
        net(x, torch.rand(3))


def test_preconditioning_limits(net):
    """Tiny sigma: D is (nearly) the identity; huge sigma: D ignores the input's detail (skip weight -> 0)."""
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert float((net(x, 1e-4) - x).abs().max()) < 0.01
        d1, d2 = net(x * 50, 50.0), net(torch.rand(1, 3, 16, 16) * 50, 50.0)
    assert float((d1 - d2).abs().max()) < 5  # bounded output despite inputs of size 50


def test_gradients_flow_through_input(net):
    x = torch.rand(1, 3, 16, 16, requires_grad=True)
    net(x, 0.1).sum().backward()
    assert float(x.grad.abs().sum()) > 0


def test_score_is_tweedie(net):
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(net.score(x, 0.1), (net(x, 0.1) - x) / 0.01, atol=1e-4)


def test_training_script_resumes_exports_and_registry_loads(tmp_path, monkeypatch):
    from restore.train import denoiser as train

    data = make_image_folder(tmp_path / "data", 4, 140, 150)
    common = ["--data", str(data), "--out", str(tmp_path / "models" / "score-natural"), "--ckpt",
              str(tmp_path / "ck.pt"), "--batch", "2", "--patch", "32", "--nc", "8", "16", "16", "16", "--nb", "1",
              "--val-images", "1", "--ckpt-every", "2", "--val-every", "2", "--threads", "1"]
    train.main(common + ["--steps", "2"])
    first = torch.load(tmp_path / "ck.pt", weights_only=False)
    assert first["step"] == 2
    train.main(common + ["--steps", "4"])
    second = torch.load(tmp_path / "ck.pt", weights_only=False)
    assert second["step"] == 4 and len(second["log"]) == 2  # resumed, not restarted
    card = json.loads((tmp_path / "models" / "score-natural.json").read_text())
    assert card["steps"] == 4 and set(card["validation_psnr_db"]["held_out_128px_crops"]) == {"15", "25", "50"}
    saved = torch.load(tmp_path / "models" / "score-natural.pt", weights_only=True)
    assert all(v.dtype == torch.float16 for v in saved["state_dict"].values() if v.is_floating_point())

    # without the optimiser checkpoint, training warm-starts from the shipped weights and card
    (tmp_path / "ck.pt").unlink()
    train.main(common + ["--steps", "6"])
    third = torch.load(tmp_path / "ck.pt", weights_only=False)
    assert third["step"] == 6
    assert json.loads((tmp_path / "models" / "score-natural.json").read_text())["steps"] == 6

    monkeypatch.setenv("RESTORE_MODELS", str(tmp_path / "models"))
    assert "score-natural" in registry.available()
    prior = registry.load("score-natural")
    assert prior.kind == "denoiser" and prior.card["steps"] == 6
    assert not any(p.requires_grad for p in prior.module.parameters())
    with torch.no_grad():
        assert prior.module(torch.rand(1, 3, 24, 24), 0.1).shape == (1, 3, 24, 24)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "score-natural.pt").write_bytes(b"garbage")
    monkeypatch.setenv("RESTORE_MODELS", str(tmp_path))
    with pytest.raises(registry.PriorError, match="cannot load checkpoint"):
        registry.load("score-natural")
    torch.save({"weights": 1}, tmp_path / "score-natural.pt")
    with pytest.raises(registry.PriorError, match="not a restore checkpoint"):
        registry.load("score-natural")
