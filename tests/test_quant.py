"""Quantised priors: int8 stays close to float, simulated schemes keep gradients, unsupported uses are refused."""

import pytest
import torch

from restore import Restorer
from restore.priors import registry
from restore.quant import QuantError, cache_dir, default_calibration, mixed_precision, quantize, sensitivity
from restore.solvers.base import SolverError


@pytest.fixture(scope="module")
def score():
    return registry.load("score-natural")


def _psnr(a, b):
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))


@pytest.fixture(scope="module")
def noisy(clean_rgb):
    g = torch.Generator().manual_seed(0)
    return clean_rgb + 0.1 * torch.randn(clean_rgb.shape, generator=g)


def test_int8_output_within_tolerance_of_float(score, noisy, clean_rgb):
    q = quantize(score, "int8")
    with torch.no_grad():
        ref, out = score.module(noisy, 0.1), q.module(noisy, 0.1)
    assert _psnr(out, ref) > 32  # stated tolerance: int8 output within 32 dB PSNR of the float output
    assert abs(_psnr(out.clamp(0, 1), clean_rgb) - _psnr(ref.clamp(0, 1), clean_rgb)) < 0.5
    assert q.card["quantized"] == "int8" and score.card.get("quantized") is None  # the float prior is untouched


@pytest.mark.parametrize("scheme, tol", [("w8a8", 40), ("w4a8", 30)])
def test_simulated_schemes_keep_gradients(score, noisy, scheme, tol):
    q = quantize(score, scheme)
    x = noisy.clone().requires_grad_(True)
    out = q.module(x, 0.1)
    out.sum().backward()
    assert float(x.grad.abs().mean()) > 0  # straight-through rounding: gradients reach the input
    with torch.no_grad():
        assert _psnr(out.detach(), score.module(noisy, 0.1)) > tol


def test_every_allowed_front_combination(clean_rgb):
    """Every (solver, scheme) the fronts allow runs; int8 with a gradient-based solver is refused up front."""
    for solver, opts in (("langevin", {"iterations": 10}), ("reddiff", {"steps": 10})):
        for scheme in ("int8", "w8a8"):
            post = Restorer(solver, prior="score-natural", quant=scheme, **opts)(
                clean_rgb, "denoise:gaussian:sigma=0.1", samples=1)
            assert torch.isfinite(post.mean).all()
    with pytest.raises(SolverError, match="zero gradients"):
        Restorer("vble", quant="int8")
    with pytest.raises(QuantError, match="known: auto, none, int8, w8a8, w4a8"):
        Restorer("langevin", quant="int4")


def test_unsupported_priors(score):
    with pytest.raises(QuantError, match="cannot be quantised"):
        quantize(registry.load("wavelet"), "int8")
    with pytest.raises(QuantError, match="unknown quantisation scheme"):
        quantize(score, "fp4")
    with pytest.raises(QuantError, match="CAE.*w8a8"):
        quantize(registry.load("cae-natural-q2"), "int8")
    with pytest.raises(QuantError, match="float_layers names no layer.*m_nope"):
        quantize(score, "w8a8", float_layers=("m_nope",))


@pytest.mark.parametrize("scheme", ["int8", "w4a8"])
def test_cached_copy_reloads_identically(score, noisy, scheme, tmp_path):
    # the cache's behaviour, not accuracy: two small calibration crops and two bands keep the five builds short
    small = {"calibration": default_calibration(32)[:2], "bands": 2}
    first = quantize(score, scheme, cache=tmp_path, **small)
    files = list(tmp_path.glob(f"score-natural-{scheme}-*.pt"))
    assert len(files) == 1 and first.card["quantized_cache"] == str(files[0])
    again = quantize(score, scheme, cache=tmp_path, **small)  # built from the file: no calibration run
    with torch.no_grad():
        assert torch.equal(first.module(noisy, 0.1), again.module(noisy, 0.1))
    other = quantize(score, scheme, cache=tmp_path, keep_first_last=False, **small)  # other options: another entry
    assert len(list(tmp_path.glob("*.pt"))) == 2 and other.card["quantized_cache"] != first.card["quantized_cache"]
    files[0].write_bytes(b"not a checkpoint")  # a damaged entry is rebuilt with a warning, not fatal
    with pytest.warns(UserWarning, match="unreadable quantisation cache"):
        quantize(score, scheme, cache=tmp_path, **small)
    assert quantize(score, scheme, cache=False, **small).card["quantized_cache"] is None
    assert str(cache_dir()).endswith("quant")


def test_cae_simulated_schemes_keep_gradients_and_vble_runs(clean_rgb):
    cae = registry.load("cae-natural-q2")
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for scheme, tol in (("w8a8", 28), ("w4a8", 20)):
        q = quantize(cae, scheme)
        latent = cae.module.g_a(x).detach().requires_grad_(True)
        out = q.module.g_s(latent)
        out.sum().backward()
        assert float(latent.grad.abs().mean()) > 0
        with torch.no_grad():
            assert _psnr(q.module(x)["x_hat"], cae.module(x)["x_hat"]) > tol
    noisy = clean_rgb + 0.1 * torch.randn(clean_rgb.shape, generator=torch.Generator().manual_seed(0))
    post = Restorer("vble", quant="w8a8", iterations=30, stat_samples=4)(noisy.clamp(0, 1), "denoise:gaussian:sigma=0.1",
                                                                         samples=2, seed=0)
    assert _psnr(post.mean, clean_rgb) > _psnr(noisy.clamp(0, 1), clean_rgb)


def test_mixed_precision_keeps_the_most_sensitive_layers_float(score, noisy):
    tiny = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    q = mixed_precision(score, "w4a8", n_float=2, calibration=tiny)
    assert len(q.card["float_layers"]) == 2
    plain = quantize(score, "w4a8", calibration=tiny)
    with torch.no_grad():
        ref = score.module(noisy, 0.1)
        assert _psnr(q.module(noisy, 0.1), ref) > _psnr(plain.module(noisy, 0.1), ref)


def test_sensitivity_scan_ranks_layers(score):
    tiny = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ranked = sensitivity(score, tiny)
    assert len(ranked) > 10 and ranked[0][1] <= ranked[-1][1]
    assert all(name for name, _ in ranked)


def test_token_prior_int8_transformer_and_float_tokenizer():
    """APS may use int8: only the transformer is quantised (dynamic int8); its decoder keeps real gradients."""
    tokens = registry.load("tokens-natural")
    q = quantize(tokens, "int8")
    assert q.card["quantized_parts"] == ["transformer"]
    assert any("quantized" in type(m).__module__ for m in q.module.transformer.modules())
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        idx = tokens.module.tokenizer.encode(x)
        ref = tokens.module.transformer(idx).softmax(-1)
        out = q.module.transformer(idx).softmax(-1)
    assert float((out - ref).abs().max()) < 0.1  # stated tolerance on token probabilities
    codes = q.module.tokenizer.codebook()[idx.flatten()].detach().clone().requires_grad_(True)
    img = q.module.tokenizer.decode_codes(codes.view(*idx.shape, -1).permute(0, 3, 1, 2))
    img.sum().backward()
    assert float(codes.grad.abs().mean()) > 0
    y = x[:1]
    post = Restorer("aps", quant="int8", steps=2, inner_steps=2)(y, "inpaint:box:size=0.3", samples=2, seed=0)
    assert post.samples.shape == (2, 3, 32, 32) and torch.isfinite(post.mean).all()
    for scheme in ("w8a8", "w4a8"):
        assert quantize(tokens, scheme).card["quantized"] == scheme


def test_pt2e_backend_int8_close_to_float(score, noisy):
    pytest.importorskip("torchao")
    q = quantize(score, "int8", backend="pt2e", bands=1)  # one band: one compile
    with torch.no_grad():
        ref, out = score.module(noisy, 0.1), q.module(noisy, 0.1)
    assert _psnr(out, ref) > 32  # the same stated tolerance as the FX path
    assert q.card["quantized_backend"] == "pt2e"
    with pytest.raises(QuantError, match="backend='pt2e' is for real int8"):
        quantize(score, "w8a8", backend="pt2e")
    with pytest.raises(QuantError, match="unknown int8 backend"):
        quantize(score, "int8", backend="tvm")


def test_solver_default_scheme_and_its_fallbacks(clean_rgb, monkeypatch):
    """RED-Diff and Langevin run int8 when no scheme is named; "none", the paper preset and other solvers run float; a
    weight-free prior stays float silently; a machine without int8 kernels runs float with a note, never a crash."""
    assert Restorer("reddiff").quant == "int8" and Restorer("reddiff", quant="auto").quant == "int8"
    assert Restorer("reddiff", quant="none").quant is None
    assert Restorer("reddiff", preset="paper").quant is None
    assert Restorer("langevin").quant == "int8" and Restorer("langevin", preset="paper").quant is None
    assert Restorer("pmrf").quant is None and Restorer("vble").quant is None
    assert Restorer("reddiff", prior="wavelet").prior().name == "wavelet"  # nothing to quantise: float, no error
    from benchmarks.quality import _default_scheme  # what --resume expects a kept result to have run with

    assert _default_scheme({"solver": "langevin", "prior": "wavelet", "options": {}}) is None
    assert _default_scheme({"solver": "langevin", "prior": None, "options": {}}) == "int8"
    with pytest.raises(QuantError, match="cannot be quantised"):
        Restorer("reddiff", prior="wavelet", quant="int8").prior()  # named by the user: refused as before
    y = clean_rgb[..., :32, :32]

    def no_engine(prior, scheme, **kw):
        raise RuntimeError("Didn't find engine for operation quantized::conv2d_prepack NoQEngine")

    monkeypatch.setattr("restore.quant.quantize", no_engine)
    r = Restorer("reddiff", steps=2)
    with pytest.warns(RuntimeWarning, match="int8 kernels unavailable here"):
        post = r(y, "denoise:gaussian:sigma=0.1", samples=1)
    assert post.meta["prior"] == "score-natural" and "ran in float" in post.meta["quant_note"]
    assert torch.isfinite(post.mean).all()


def test_quantised_prior_has_its_own_calibration_table(tmp_path, monkeypatch):
    """A table fitted with the int8 prior is found under its NAME@SCHEME, and checks the float weights' digest."""
    import json

    assert registry.digest("score-natural@int8") == registry.digest("score-natural")
    (tmp_path / "calibration").mkdir()
    (tmp_path / "calibration" / "reddiff.score-natural@int8.json").write_text(json.dumps({"cells": []}))
    monkeypatch.setattr(registry, "models_dir", lambda: tmp_path)
    assert registry.calibration_table("reddiff", "score-natural@int8")["file"] == \
        "calibration/reddiff.score-natural@int8.json"
    assert registry.calibration_table("reddiff", "score-natural") is None
