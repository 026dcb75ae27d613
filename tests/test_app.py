"""The web app: handlers called directly, then the wiring through gradio_client against an in-process server."""

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


def test_mask_from_editor(tmp_path):
    from restore.tasks import load_mask

    layer = np.zeros((20, 30, 4), np.uint8)
    layer[5:10, 5:15, 3] = 255
    path = webapp.mask_from_editor({"background": None, "layers": [layer], "composite": None}, (20, 30), tmp_path)
    m = load_mask(path)
    assert m.shape == (1, 1, 20, 30) and float(m.sum()) == 600 - 50
    assert webapp.mask_from_editor({"layers": [np.zeros((20, 30, 4), np.uint8)]}, (20, 30), tmp_path) is None


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
