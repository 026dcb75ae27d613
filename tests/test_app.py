"""The web app: handlers called directly, then the wiring through gradio_client against an in-process server."""

import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gradio")

from app import app as webapp  # noqa: E402

FAST = '{"iterations": 20}'


@pytest.fixture(scope="module")
def image():
    import skimage.data

    return skimage.data.astronaut()[100:164, 150:214].copy()  # 64x64 uint8 RGB


def test_task_specs_from_controls(tmp_path):
    from restore.tasks import parse

    assert webapp.task_spec("denoise", 25) == "denoise:gaussian:sigma=0.098039"
    assert str(parse(webapp.task_spec("super-resolution", 2.55, sr_factor=2))).startswith("sr:bicubic:factor=2")
    assert parse(webapp.task_spec("deblur (motion)", 5, motion_size=9)).kind == "deblur"
    assert "box" in webapp.task_spec("inpaint", 2.55, inpaint_mode="centred box")
    with pytest.raises(webapp.UserError, match="draw the region"):
        webapp.task_spec("inpaint", 2.55, inpaint_mode="draw")
    with pytest.raises(webapp.UserError, match="noise level above 0"):
        webapp.task_spec("denoise", 0)


def test_recommended_note_names_the_preset_and_why():
    x2 = webapp.recommended_note(webapp.task_spec("super-resolution", 2.55, sr_factor=2))
    x4 = webapp.recommended_note(webapp.task_spec("super-resolution", 2.55, sr_factor=4))
    assert x2.startswith("Recommended for this task: **pmrf**, best at x2") and "over TV" in x2
    assert "**reddiff**, best at x4" in x4
    assert "models unknown camera noise" in webapp.recommended_note("denoise:real")


def test_mask_from_editor(tmp_path):
    from restore.tasks import load_mask

    layer = np.zeros((20, 30, 4), np.uint8)
    layer[5:10, 5:15, 3] = 255
    path = webapp.mask_from_editor({"background": None, "layers": [layer], "composite": None}, (20, 30), tmp_path)
    m = load_mask(path)
    assert m.shape == (1, 1, 20, 30) and float(m.sum()) == 600 - 50
    assert webapp.mask_from_editor({"layers": [np.zeros((20, 30, 4), np.uint8)]}, (20, 30), tmp_path) is None


def test_the_info_says_what_became_of_a_noisy_files_clipped_values():
    import skimage.data

    dark = skimage.data.astronaut()[250:378:2, 60:188:2].astype(np.float64) / 255  # dark suit, bright helmet
    rng = np.random.default_rng(0)
    noisy = (np.clip(dark + 0.2 * rng.standard_normal(dark.shape), 0, 1) * 255).round().astype(np.uint8)
    r = webapp.restore_image(noisy, False, "denoise:gaussian:sigma=0.2", "pmrf", None, 2, 0)
    assert "Clipped values:" in r["info"] and "imputed as clipped Gaussian noise" in r["info"]


def test_restore_handler_outputs(image):
    r = webapp.restore_image(image, True, "denoise:gaussian:sigma=0.1", "langevin", "wavelet", 3, 0, None, FAST)
    before, after = r["slider"]
    assert before.shape == after.shape == (64, 64, 3) and before.dtype == np.uint8
    assert len(r["gallery"]) == 3 and r["error_vs_std"] is not None
    row = r["metrics"][0]
    assert row[0] == "langevin" and row[1] > 15
    assert {p.rsplit("/", 1)[-1] for p in r["files"]} == {"mean.png", "std.png", "std.npy", "std.tiff", "meta.json"}


def test_sr_before_is_shown_at_output_size(image):
    r = webapp.restore_image(image[:, :, :], True, "sr:x2", "langevin", None, 1, 0, None, FAST)
    assert r["slider"][0].shape == r["slider"][1].shape == (64, 64, 3)


@pytest.mark.parametrize("args, message", [
    ((None, True, "denoise:gaussian:sigma=0.1", "langevin", None, 1, 0), "upload an image"),
    ((np.zeros((1100, 1000, 3), np.uint8), True, "denoise:gaussian:sigma=0.1", "langevin", None, 1, 0), "megapixels"),
    ((np.zeros((32, 32, 3), np.uint8), True, "denoise:gaussian:sigma=7", "langevin", None, 1, 0), "out of range"),
    ((np.zeros((32, 32, 3), np.uint8), True, "denoise:gaussian:sigma=0.1", "nope", None, 1, 0), "unknown solver"),
    ((np.zeros((32, 32, 3), np.uint8), True, "deblur:gaussian:sigma=2", "scoredvi", None, 1, 0), "does not support"),
])
def test_bad_requests_are_user_errors(args, message):
    with pytest.raises(webapp.UserError, match=message):
        webapp.restore_image(*args, options=FAST)


def test_bad_options_json(image):
    with pytest.raises(webapp.UserError, match="JSON object"):
        webapp.restore_image(image, True, "denoise:gaussian:sigma=0.1", "langevin", None, 1, 0, None, "[1, 2")
    with pytest.raises(webapp.UserError, match="Prior list"):  # one place names the prior
        webapp.restore_image(image, True, "denoise:gaussian:sigma=0.1", "vble", None, 1, 0, None,
                             '{"prior": "cae-natural-q2"}')


def test_compare_handler_shares_one_scale(image):
    r = webapp.compare_solvers(image, True, "denoise:gaussian:sigma=0.1", ["langevin", "reddiff"], 2, 0)
    assert [c for _, c in r["means"]] == ["langevin", "reddiff"] and len(r["stds"]) == 2
    assert "one colour scale" in r["info"] and len(r["metrics"]) == 2


@pytest.fixture(scope="module")
def client():
    from gradio_client import Client

    demo = webapp.launch(host="127.0.0.1", port=None, block=False)
    yield Client(demo.local_url, verbose=False)
    demo.close()


def test_api_restore_through_gradio_client(client, image, tmp_path):
    from gradio_client import handle_file

    from restore.io import read_image, write_image

    write_image(tmp_path / "in.png", image.astype(np.float32) / 255)
    job = client.submit(handle_file(str(tmp_path / "in.png")), True, "denoise", 25, 2, 19, 4, "random pixels", 0.5,
                        0.3, None, "langevin", "wavelet", 2, 0, None, '{"iterations": 10}', "none",
                        api_name="/restore")
    info, slider, mean, std, err, gallery, metrics, files = job.result(timeout=300)
    assert "langevin" in info and len(gallery) == 2
    assert read_image(mean).shape == (1, 3, 64, 64)  # PNG, full size
    assert metrics["headers"][:2] == ["estimate", "PSNR [dB]"] and metrics["data"][0][1] > 15
    assert len(files) == 5


def test_api_reports_errors(client):
    from gradio_client import handle_file  # noqa: F401

    with pytest.raises(Exception, match="upload an image"):
        client.predict(None, True, "denoise", 25, 2, 19, 4, "random pixels", 0.5, 0.3, None, "langevin", "wavelet",
                       1, 0, None, "", "none", api_name="/restore")


def test_quantised_backbone_from_the_app(image):
    r = webapp.restore_image(image, True, "denoise:gaussian:sigma=0.1", "reddiff", "score-natural", 1, 0, None,
                             '{"steps": 5}', quant="int8")
    assert "(int8)" in r["info"]


def test_api_page_shows_only_the_named_endpoints(client):
    """UI plumbing (task toggles, prior lists, the overlay switch, the noise estimate) stays off the API page."""
    endpoints = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert endpoints == {"/restore", "/compare"}


@pytest.mark.parametrize("host, share, auth, no_auth, env, expect", [
    ("127.0.0.1", False, [], False, None, None),                       # loopback: no login needed
    ("0.0.0.0", False, [], False, None, "serves the app beyond this machine"),
    ("192.168.1.5", False, [], True, None, None),                      # exposed on purpose
    ("0.0.0.0", False, ["ann:pw"], False, None, [("ann", "pw")]),
    ("0.0.0.0", False, [], False, "ann:pw,bob:pw2", [("ann", "pw"), ("bob", "pw2")]),
    ("127.0.0.1", True, [], False, None, "public share link"),
    ("0.0.0.0", False, ["ann"], False, None, "user:password"),
    ("0.0.0.0", False, ["ann:pw"], True, None, "contradicts"),
])
def test_ui_needs_a_login_when_exposed(host, share, auth, no_auth, env, expect):
    from restore.cli import ui_auth

    if isinstance(expect, str):
        with pytest.raises(ValueError, match=expect):
            ui_auth(host, share, auth, None, no_auth, env)
    else:
        assert ui_auth(host, share, auth, None, no_auth, env) == expect


def test_cli_refuses_an_exposed_app_without_login():
    from typer.testing import CliRunner

    from restore import cli

    r = CliRunner().invoke(cli.app, ["ui", "--host", "0.0.0.0"])
    assert r.exit_code != 0 and "--auth user:password" in r.output


def test_login_required_through_gradio_client():
    """With credentials, an anonymous client is refused and a logged-in one is answered."""
    from gradio_client import Client

    demo = webapp.launch(host="127.0.0.1", port=None, block=False, auth=[("ann", "s3cret")])
    try:
        with pytest.raises(Exception):
            Client(demo.local_url, verbose=False).view_api(print_info=False)
        with pytest.raises(Exception):
            Client(demo.local_url, auth=("ann", "wrong"), verbose=False)
        client = Client(demo.local_url, auth=("ann", "s3cret"), verbose=False)
        assert "/restore" in client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    finally:
        demo.close()


# ---- large images: fit_to_limit and its use in both tabs ------------------------------------------------------

def test_fit_of_a_phone_photo_is_described_before_running():
    """A 12 MP photo: both the downscale and the centre crop give the largest size within the limit, same aspect."""
    for mode, word in (("downscale to fit", "downscaled"), ("centre crop", "centre crop")):
        fit = webapp.plan_fit((3024, 4032, 3), mode)
        assert fit.description == f"4032x3024 -> 1182x886 ({word})"
        assert fit.size == (886, 1182) and 886 * 1182 <= webapp.MAX_UI_PIXELS
    assert webapp.plan_fit((3024, 4032), "centre crop").box == ((3024 - 886) // 2, (4032 - 1182) // 2, 886, 1182)
    note = webapp.fit_note((3024, 4032), "downscale to fit", simulate=True)
    assert "4032x3024 -> 1182x886 (downscaled)" in note and "tiles" in note and "noise" not in note
    assert "noise and blur" in webapp.fit_note((3024, 4032), "downscale to fit", simulate=False)  # already degraded
    assert "noise and blur" not in webapp.fit_note((3024, 4032), "centre crop", simulate=False)
    assert webapp.fit_note((480, 640), "region", (0, 0, 0, 0)) == "Size: 640x480 (restored as is)."


@pytest.mark.parametrize("shape", [(300, 200, 3), (200, 300), (1000, 40, 3), (101, 99, 4)])
def test_fit_to_limit_shapes(shape):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    limit = 3000
    h, w = shape[:2]
    down, desc = webapp.fit_to_limit(img, "downscale to fit", limit=limit)
    crop, _ = webapp.fit_to_limit(img, "centre crop", limit=limit)
    assert down.shape == crop.shape and down.shape[2:] == shape[2:] and down.dtype == np.uint8
    dh, dw = down.shape[:2]
    assert dh * dw <= limit and dh * dw > 0.9 * limit  # within the limit, and not needlessly small
    assert abs(dw / dh - w / h) <= (w / h) * 2 / min(dh, dw)  # aspect ratio kept (to the rounding of a pixel)
    assert desc == f"{w}x{h} -> {dw}x{dh} (downscaled)"
    t, left = (h - dh) // 2, (w - dw) // 2
    np.testing.assert_array_equal(crop, img[t:t + dh, left:left + dw])  # the crop is the middle, pixels untouched


def test_downscale_keeps_the_whole_picture():
    """Left half dark, right half bright: the downscaled copy is too (a crop of the middle would not tell)."""
    img = np.zeros((400, 600, 3), np.uint8)
    img[:, 300:] = 200
    img[:100] = 90  # a band over the top quarter, which a centre crop would lose
    down, _ = webapp.fit_to_limit(img, "downscale to fit", limit=60 * 40)
    assert down.shape == (40, 60, 3)
    assert down[20:, :25].max() < 5 and down[20:, 35:].min() > 195
    assert np.all(np.abs(down[:8].astype(int) - 90) < 5)


def test_fit_region_is_exact_and_small_images_are_kept_whole():
    img = np.arange(300 * 200, dtype=np.int32).reshape(300, 200).astype(np.uint16)
    out, desc = webapp.fit_to_limit(img, "region", (10, 20, 50, 40), limit=3000)
    np.testing.assert_array_equal(out, img[20:60, 10:60])
    assert desc == "200x300 -> 50x40 (region at x=10, y=20)"
    small = img[:50, :50]
    for mode in webapp.FIT_MODES:  # within the limit: restored whole whatever the choice (no region needed)
        out, desc = webapp.fit_to_limit(small, mode, None, limit=3000)
        assert out is small and desc == "50x50 (restored as is)"


@pytest.mark.parametrize("region, message", [
    ((150, 20, 60, 40), r"x=150 \+ width=60 = 210\) reaches past the image's right edge \(width 200\)"),
    ((10, 280, 40, 30), r"y=280 \+ height=30 = 310\) reaches past the image's bottom edge \(height 300\)"),
    ((-1, 0, 40, 40), "x and y must be 0 or more; got x=-1"),
    ((0, 0, 4, 40), "at least 8 pixels a side; got 4x40"),
    ((0, 0, 100, 100), r"100x100 = 0.01 megapixels; the app takes at most 0.0"),
    ((0, 0, 20.5, 40), "whole numbers"),
    (None, "x, y, width and height"),
    ((0, 0, None, 40), "x, y, width and height"),
])
def test_fit_region_bounds_are_checked(region, message):
    with pytest.raises(webapp.UserError, match=message):
        webapp.fit_to_limit(np.zeros((300, 200), np.uint8), "region", region, limit=3000)


def test_fit_needs_a_known_choice_above_the_limit():
    img = np.zeros((300, 200), np.uint8)
    with pytest.raises(webapp.UserError, match="200x300 pixels.*downscale to fit / centre crop / region.*tiles"):
        webapp.fit_to_limit(img, None, limit=3000)
    with pytest.raises(webapp.UserError, match="unknown large-image choice 'zoom'"):
        webapp.fit_to_limit(img, "zoom", limit=3000)
    with pytest.raises(webapp.UserError, match="upload an image"):
        webapp.fit_to_limit(None, "centre crop")


def test_fit_applies_to_masks_and_references():
    fit = webapp.plan_fit((300, 200), "downscale to fit", limit=3000)
    mask = np.zeros((300, 200), bool)
    mask[:, :100] = True
    small = fit.apply(mask)
    assert small.dtype == bool and small.shape == fit.size
    assert small[:, : fit.size[1] // 2 - 1].all() and not small[:, fit.size[1] // 2 + 1:].any()
    big = fit.scaled(2).apply(np.zeros((600, 400, 3), np.uint8))  # an SR x2 reference
    assert big.shape == (2 * fit.size[0], 2 * fit.size[1], 3)
    with pytest.raises(webapp.UserError, match="does not match"):
        fit.apply(np.zeros((100, 100)))


def test_restore_handler_fits_a_large_image_and_its_reference(image, monkeypatch):
    monkeypatch.setattr(webapp, "MAX_UI_PIXELS", 32 * 32)
    with pytest.raises(webapp.UserError, match="megapixels: pick"):  # no choice given: refused, as before
        webapp.restore_image(image, True, "denoise:gaussian:sigma=0.1", "langevin", None, 1, 0, None, FAST)
    r = webapp.restore_image(image, False, "denoise:gaussian:sigma=0.1", "langevin", None, 1, 0, image, FAST,
                             fit="centre crop")
    assert r["slider"][1].shape == (32, 32, 3) and r["size"] == "64x64 -> 32x32 (centre crop)"
    assert "64x64 -> 32x32 (centre crop)" in r["info"]
    assert r["error_vs_std"] is not None  # the reference was cropped the same way, so metrics were computed
    shifted = webapp.restore_image(image, False, "denoise:gaussian:sigma=0.1", "langevin", None, 1, 0,
                                   np.roll(image, 8, axis=1), FAST, fit="centre crop")
    # the reference is cropped like the image: the estimate matches it far better than a shifted reference
    assert r["metrics"][0][1] > shifted["metrics"][0][1] + 5
    r = webapp.restore_image(image, True, "sr:x2", "langevin", None, 1, 0, None, FAST, fit="region",
                             region=(8, 16, 32, 24))
    assert r["slider"][1].shape == (24, 32, 3)
    with pytest.raises(webapp.UserError, match="reaches past the image's right edge"):
        webapp.restore_image(image, True, "sr:x2", "langevin", None, 1, 0, None, FAST, fit="region",
                             region=(40, 0, 32, 32))
    with pytest.raises(webapp.UserError, match="ground truth is 50x64 pixels"):
        webapp.restore_image(image, False, "denoise:gaussian:sigma=0.1", "langevin", None, 1, 0, image[:, :50], FAST,
                             fit="centre crop")


def test_controls_spec_and_a_drawn_mask_on_a_large_image(monkeypatch):
    from restore.tasks import load_mask, parse

    assert webapp.controls_spec(None, "deblur (gaussian)", 2.55, 1.5) == webapp.task_spec("deblur (gaussian)", 2.55,
                                                                                          1.5)
    monkeypatch.setattr(webapp, "MAX_UI_PIXELS", 30 * 20)
    img = np.zeros((60, 40, 3), np.uint8)
    layer = np.zeros((60, 40, 4), np.uint8)
    layer[:, :20, 3] = 255  # the left half painted (to fill)
    spec = webapp.controls_spec(img, "inpaint", 2.55, inpaint_mode="draw", editor={"layers": [layer]},
                                fit="downscale to fit")
    t = parse(spec)
    m = load_mask(spec.split("path=")[1].split(",noise")[0])
    assert t.kind == "inpaint" and m.shape == (1, 1, 30, 20)  # the mask is downscaled with the image
    assert float(m[..., :, :9].max()) == 0 and float(m[..., :, 11:].min()) == 1
    spec = webapp.controls_spec(img, "inpaint", 2.55, inpaint_mode="draw", editor={"layers": [layer]},
                                fit="region", region=(10, 0, 20, 30))
    m = load_mask(spec.split("path=")[1].split(",noise")[0])
    assert m.shape == (1, 1, 30, 20) and float(m[..., :10].max()) == 0 and float(m[..., 10:].min()) == 1


def _compare_recorder(monkeypatch):
    calls = []

    def fake(image, simulate, task, solvers, samples, seed, progress=None, fit=None, region=None, session=None):
        assert isinstance(session, str) and session  # the client's session: its files go in its own folder
        calls.append({"shape": np.asarray(image).shape, "task": task, "solvers": solvers, "fit": fit,
                      "region": tuple(region)})
        return {"info": "recorded", "means": [], "stds": [], "metrics": []}

    monkeypatch.setattr(webapp, "compare_solvers", fake)
    return calls


def test_api_compare_takes_the_restore_tabs_task_controls(client, image, tmp_path, monkeypatch):
    """The Compare tab sends the same task controls as the Restore tab: the spec is derived with task_spec."""
    from gradio_client import handle_file

    from restore.io import write_image

    calls = _compare_recorder(monkeypatch)
    write_image(tmp_path / "in.png", image.astype(np.float32) / 255)
    info = client.predict(handle_file(str(tmp_path / "in.png")), True, "", ["pmrf", "vble"], 2, 0,
                          "deblur (motion)", 5.1, 2, 9, 4, "random pixels", 0.5, 0.3, None, "centre crop", 1, 2, 30,
                          20, api_name="/compare")[0]
    assert info == "recorded"
    assert calls[-1] == {"shape": (64, 64, 3), "task": webapp.task_spec("deblur (motion)", 5.1, motion_size=9),
                         "solvers": ["pmrf", "vble"], "fit": "centre crop", "region": (1, 2, 30, 20)}


def test_api_compare_still_takes_a_spec_string(client, image, tmp_path, monkeypatch):
    """Scripts written for the first /compare (image, simulate, spec, solvers, samples, seed) keep working."""
    from gradio_client import handle_file

    from restore.io import write_image

    calls = _compare_recorder(monkeypatch)
    write_image(tmp_path / "in.png", image.astype(np.float32) / 255)
    client.predict(handle_file(str(tmp_path / "in.png")), True, "sr:x2", ["langevin"], 1, 0, api_name="/compare")
    assert calls[-1]["task"] == "sr:x2" and calls[-1]["fit"] == webapp.FIT_DEFAULT


def test_api_restore_fits_a_large_image(client, image, tmp_path, monkeypatch):
    from gradio_client import handle_file

    from restore.io import read_image, write_image

    monkeypatch.setattr(webapp, "MAX_UI_PIXELS", 32 * 32)
    write_image(tmp_path / "in.png", image.astype(np.float32) / 255)
    args = (handle_file(str(tmp_path / "in.png")), True, "denoise", 25, 2, 19, 4, "random pixels", 0.5, 0.3, None,
            "langevin", "wavelet", 1, 0, None, '{"iterations": 10}', "none")
    info, _, mean, *_ = client.predict(*args, api_name="/restore")  # the first version's 18 parameters: downscaled
    assert read_image(mean).shape == (1, 3, 32, 32) and "64x64 -> 32x32 (downscaled)" in info
    info, _, mean, *_ = client.predict(*args, "region", 0, 8, 16, 48, api_name="/restore")
    assert read_image(mean).shape == (1, 3, 48, 16) and "(region at x=0, y=8)" in info
    with pytest.raises(Exception, match="reaches past the image's bottom edge"):
        client.predict(*args, "region", 0, 40, 16, 48, api_name="/restore")


def test_queue_is_bounded_and_refusals_are_clear(image, tmp_path, monkeypatch):
    """One solve at a time, ``queue_size`` waiting; the rest are told "queue is full" at once: none is lost."""
    import threading
    import time

    from gradio_client import Client, handle_file

    from restore.io import write_image

    def slow(*args, **kwargs):
        time.sleep(3)
        return {"info": "done", "means": [], "stds": [], "metrics": []}

    monkeypatch.setattr(webapp, "compare_solvers", slow)
    write_image(tmp_path / "in.png", image.astype(np.float32) / 255)
    demo = webapp.launch(host="127.0.0.1", port=None, block=False, queue_size=1)
    outcomes, ready = [], threading.Barrier(5, timeout=60)
    try:
        def one():
            c = Client(demo.local_url, verbose=False)
            ready.wait()  # all five submit together
            try:
                outcomes.append(c.predict(handle_file(str(tmp_path / "in.png")), True, "", ["pmrf"], 1, 0,
                                          api_name="/compare")[0])
            except Exception as exc:  # noqa: BLE001
                outcomes.append(f"refused: {exc}")
        threads = [threading.Thread(target=one) for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=90)
    finally:
        demo.close()
    assert len(outcomes) == 5
    refused = [o for o in outcomes if o.startswith("refused")]
    assert all("queue is full" in o.lower() for o in refused), refused
    assert 1 <= len(refused) <= 3 and outcomes.count("done") == 5 - len(refused)


def test_estimate_text_before_a_run_and_the_countdown():
    from app import app as w

    img = np.zeros((64, 96, 3), np.uint8)
    text = w.estimate_text(img, True, "denoise:gaussian:sigma=0.1", "reddiff", None, 8)
    assert text.startswith("Estimated time here: **about") and "96x64 restored, 8 samples" in text
    # an observation for x4 SR restores 4x larger; a photo above the limit is estimated at the size it will run
    assert "384x256 restored" in w.estimate_text(img, False, "sr:bicubic:factor=4", "pmrf", None, 2)
    big = np.zeros((3024, 4032, 3), np.uint8)
    fitted = w.plan_fit(big.shape, "downscale to fit").size
    assert f"{fitted[1]}x{fitted[0]} restored" in w.estimate_text(big, True, "denoise:gaussian:sigma=0.1", "pmrf",
                                                                  None, 2, fit="downscale to fit")
    assert w.estimate_text(None, True, "denoise:gaussian:sigma=0.1", "pmrf", None, 2) == ""
    assert w.estimate_text(img, True, "not a task", "pmrf", None, 2) == ""  # the run itself reports the error
    seen = []
    cb = w._countdown(lambda f, desc: seen.append(desc), 120.0)
    cb(0.0, "step 0")
    assert seen[-1] == "step 0 (about 2 min left)"
    cb(0.5, "step 5")  # from the pace so far: as long again as it took
    assert seen[-1].startswith("step 5 (about") and seen[-1].endswith("s left)")
    assert w._countdown(None, 3.0) is None


def test_a_spec_string_cannot_make_the_app_read_server_files(tmp_path):
    from PIL import Image

    from app import app as w
    from restore.tasks import parse

    secret = tmp_path / "mask.png"
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(secret)
    np.save(tmp_path / "k.npy", np.ones((3, 3), np.float32) / 9)
    img = np.zeros((32, 32, 3), np.uint8)
    for spec in (f"inpaint:mask:path={secret}", f"deblur:kernel:path={tmp_path / 'k.npy'},noise=0.01"):
        with pytest.raises(w.UserError, match="does not read files named in a task spec"):
            w.restore_image(img, True, spec, "pmrf", None, 1, 0)
    # a mask the page drew (written under the app's own output folder) is read
    inside = w._fresh_dir() / "mask.png"
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(inside)
    w._check_server_paths(parse(f"inpaint:mask:path={inside}"))
    out = w.restore_image(img, True, f"inpaint:mask:path={inside}", "pmrf", None, 1, 0)
    assert os.path.exists(out["mean"])
    # sessions are isolated: each one's files live in its own folder, and another session cannot name them
    theirs = w._fresh_dir("alice") / "mask.png"
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(theirs)
    w._check_server_paths(parse(f"inpaint:mask:path={theirs}"), "alice")
    with pytest.raises(w.UserError, match="does not read files named in a task spec"):
        w.restore_image(img, True, f"inpaint:mask:path={theirs}", "pmrf", None, 1, 0, session="mallory")
    mine = w.restore_image(img, True, "denoise:gaussian:sigma=0.1", "pmrf", None, 1, 0, session="../alice")
    assert w._session_root("../alice") in Path(mine["mean"]).parents  # the session name cannot climb out
    assert w._session_root("alice") not in Path(mine["mean"]).parents


def test_the_estimate_loads_models_on_the_solve_thread_and_waits_for_a_run(monkeypatch):
    """The estimate's prior load (RED-Diff's quantises it: a torch.fx trace, which patches every module's call in the
    process) shares the one solve thread with runs: beside a run it broke the run (CI, the drawn-mask e2e test)."""
    import threading

    from app import app as w

    img = np.zeros((64, 96, 3), np.uint8)
    threads = []
    original = w._restorer
    monkeypatch.setattr(w, "_restorer", lambda *a: threads.append(threading.current_thread().name) or original(*a))
    assert w.estimate_text(img, True, "denoise:gaussian:sigma=0.1", "pmrf", None, 2).startswith("Estimated time")
    assert threads and all(name.startswith("restore-solve") for name in threads)
    release = threading.Event()
    busy = w._submit_to_solve_thread(release.wait, 30)  # a run in progress
    monkeypatch.setattr(w, "ESTIMATE_WAIT_S", 0.2)
    try:
        text = w.estimate_text(img, True, "denoise:gaussian:sigma=0.1", "pmrf", None, 2)
    finally:
        release.set()
        busy.result()
    assert "once the run in progress has finished" in text


def test_prior_list_follows_the_task():
    """VBLE picks its CAE's rate per task: the app's prior list shows that pick when the task or solver changes."""
    demo = webapp.build_demo()
    priors_for = next(b.fn for b in demo.fns.values() if b.fn.__name__ == "priors_for")
    picks = {(solver, kind, factor): priors_for(solver, kind, factor).value for solver, kind, factor in
             [("vble", "super-resolution", 4), ("vble", "super-resolution", 2), ("vble", "deblur (motion)", 4),
              ("vble", "inpaint", 4), ("pmrf", "super-resolution", 4)]}
    assert list(picks.values()) == ["cae-natural-q2", "cae-natural-q6", "cae-natural-q4", "cae-natural-q6",
                                    "flow-natural"]
    dropdown = priors_for("vble", "denoise", 4)
    assert dropdown.value == "cae-natural-q6" and {c[0] if isinstance(c, tuple) else c for c in dropdown.choices} >= {
        "cae-natural-q2", "cae-natural-q4", "cae-natural-q6"}


def test_a_noise_level_left_at_its_reading_counts_as_estimated(image):
    """An upload's noise slider holds the estimate: a restore at that level is treated as sigma=auto (no imputation
    of clipped values, the camera-noise cell where the noise is not white Gaussian); a level the user moved is
    stated."""
    from restore.tasks import parse

    rng = np.random.default_rng(0)
    noisy = np.clip(image.astype(float) + rng.normal(0, 20, image.shape), 0, 255).astype(np.uint8)
    value, _ = webapp.estimate_noise_level(noisy)
    assert value is not None
    assert webapp.slider_holds_estimate(parse(f"denoise:gaussian:sigma={value / 255:.6f}"), noisy)
    assert not webapp.slider_holds_estimate(parse(f"denoise:gaussian:sigma={(value + 3) / 255:.6f}"), noisy)
    assert not webapp.slider_holds_estimate(parse("denoise:real"), noisy)
    assert not webapp.slider_holds_estimate(parse("inpaint:random:missing=0.5"), noisy)
