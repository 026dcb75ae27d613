"""The web app in a real headless Chromium (Debian's chromium + playwright's Python package).

Skipped, with the reason shown, when either is missing (`.ci/run` installs them where it can). Every non-local
request is aborted, so the test also proves the page works offline. Set RESTORE_SCREENSHOTS=DIR to keep screenshots.
"""

import os
import re
import shutil
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
if not CHROMIUM:
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True)

from app import app as webapp  # noqa: E402

pytestmark = pytest.mark.e2e
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
SHOTS = os.environ.get("RESTORE_SCREENSHOTS")


@pytest.fixture(scope="module")
def server():
    demo = webapp.launch(host="127.0.0.1", port=None, block=False)
    yield demo.local_url
    demo.close()


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    external = []
    pg = browser.new_page(viewport={"width": 1400, "height": 1100})

    def route(r):
        if urlparse(r.request.url).hostname in ("127.0.0.1", "localhost"):
            return r.continue_()
        external.append(r.request.url)
        return r.abort()

    pg.route("**/*", route)
    pg.goto(server, wait_until="networkidle")
    yield pg
    pg.close()
    assert not external, f"the page tried to reach the internet: {external[:3]}"


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    import skimage.data

    from restore.io import write_image

    d = tmp_path_factory.mktemp("e2e")
    write_image(d / "small.png", skimage.data.astronaut()[100:164, 150:214].astype(np.float32) / 255)
    write_image(d / "huge.png", np.zeros((1100, 1000), np.float32))
    return d


def _shot(page, name):
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=True)


def _fast(page):
    page.get_by_text("Advanced solver options").click()
    options = page.locator("#options textarea")
    playwright.expect(options).to_be_visible()
    # the preset PMRF, at its card's denoising steps. On a loaded machine (a clean-clone CI run, 2026-12-06) a fill
    # right after the accordion opened was lost (the box read empty for 5 s; nothing in the app writes it), so fill
    # again until the value holds. Leave the box (Tab) so that the app's state has the options before Run is clicked
    # (a loaded machine once ran without them)
    for _ in range(3):
        options.fill('{"flow_steps": 2}')
        options.press("Tab")
        try:
            playwright.expect(options).to_have_value('{"flow_steps": 2}', timeout=3_000)
            break
        except AssertionError:
            continue
    playwright.expect(options).to_have_value('{"flow_steps": 2}')


def test_upload_denoise_see_samples_and_std(page, sample):
    expect = playwright.expect
    page.locator("#inp input[type=file]").set_input_files(str(sample / "small.png"))
    expect(page.locator("#inp img").first).to_be_visible()
    page.get_by_label("Posterior samples").first.fill("4")
    _fast(page)
    page.locator("#run").click()
    expect(page.locator("#gallery img").first).to_be_visible(timeout=120_000)
    expect(page.locator("#std img").first).to_be_visible()
    # the 64 px estimate fills its panel (sharp pixels), not a thumbnail beside a large std map (Gradio's scale-down)
    fit = page.locator("#mean img").first.evaluate(
        "e => [getComputedStyle(e).objectFit, getComputedStyle(e).imageRendering]")
    assert fit == ["contain", "pixelated"]
    expect(page.locator("#info")).to_contain_text("pmrf", timeout=10_000)
    assert page.locator("#gallery img").count() >= 4
    expect(page.locator("#metrics")).to_contain_text(re.compile(r"pmrf"))
    # the uncertainty line: flow_steps given, so not the calibrated settings: said in bold, never silently
    expect(page.locator("#info")).to_contain_text("NOT calibrated", timeout=30_000)  # the info line can trail the images under load
    shown = page.locator("#mean img").first.get_attribute("src")
    page.locator("#risk input").check()  # the at-risk overlay replaces the estimate, and back
    expect(page.locator("#mean img").first).not_to_have_attribute("src", shown, timeout=10_000)
    _shot(page, "restore")


def test_draw_mask_and_inpaint(page, sample):
    expect = playwright.expect
    page.locator("#inp input[type=file]").set_input_files(str(sample / "small.png"))
    expect(page.locator("#inp img").first).to_be_visible()
    page.get_by_label("Task", exact=True).click()
    page.get_by_role("option", name="inpaint").click()
    page.locator("#mode").get_by_text("draw").click()
    canvas = page.locator("#editor canvas").last
    expect(canvas).to_be_visible(timeout=20_000)
    page.wait_for_timeout(2500)  # the editor's canvas initialises asynchronously
    box = canvas.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - 40, cy)
    page.mouse.down()
    for i in range(24):
        page.mouse.move(cx - 40 + 80 * (i + 1) / 24, cy + 10 * np.sin(i / 3), steps=3)
        page.wait_for_timeout(20)
    page.mouse.up()
    # picking inpainting preset the recommended solver for it (restore.api.RECOMMENDED), RED-Diff, at its defaults
    expect(page.locator("#solver input[value=reddiff]")).to_be_checked()
    page.get_by_label("Posterior samples").first.fill("2")
    # run at once: the time estimate is still loading (quantising) RED-Diff's prior, which once broke the run beside it
    page.locator("#run").click()
    toast = page.get_by_test_id("toast-body")
    expect(page.locator("#info").filter(has_text="inpaint:mask").or_(toast).first).to_be_visible(timeout=120_000)
    assert not toast.count(), f"an error toast: {' | '.join(toast.all_inner_texts())}"
    expect(page.locator("#metrics")).to_contain_text("reddiff")
    expect(page.locator("#mean img").first).to_be_visible()
    _shot(page, "inpaint")


def test_sr_factor_presets_the_recommended_solver(page, sample):
    """The solver follows the task and the SR factor (restore.api.recommended_solver): RED-Diff at x4, PMRF at x2."""
    expect = playwright.expect
    page.locator("#inp input[type=file]").set_input_files(str(sample / "small.png"))
    expect(page.locator("#inp img").first).to_be_visible()
    page.locator("#task input").click()
    page.get_by_role("option", name="super-resolution").click()
    expect(page.locator("#solver input[value=reddiff]")).to_be_checked()
    page.locator("#factor").get_by_text("2", exact=True).click()
    expect(page.locator("#solver input[value=pmrf]")).to_be_checked()
    expect(page.locator("#solver_note")).to_contain_text("best at x2")  # and why
    expect(page.locator("#prior input")).to_have_value("flow-natural")  # the prior list followed the solver
    page.locator("#factor").get_by_text("4", exact=True).click()
    expect(page.locator("#solver input[value=reddiff]")).to_be_checked()
    expect(page.locator("#eta")).to_contain_text("reddiff", timeout=30_000)  # the estimate follows the preset


def test_compare_two_solvers(page, sample):
    """The Compare tab has the Restore tab's task controls (no spec syntax): a task picked there is the one run."""
    expect = playwright.expect
    page.get_by_role("tab", name="Compare solvers").click()
    page.locator("#c_inp input[type=file]").set_input_files(str(sample / "small.png"))
    expect(page.locator("#c_inp img").first).to_be_visible()
    expect(page.locator("#c_fit_note")).to_contain_text("64x64 (restored as is)")
    expect(page.locator("#c_factor")).to_be_hidden()
    page.locator("#c_task input").click()
    page.get_by_role("option", name="super-resolution").click()
    expect(page.locator("#c_factor")).to_be_visible()  # the shared controls' toggles work in this tab too
    page.locator("#c_factor").get_by_text("2", exact=True).click()
    # the two fastest solvers at their defaults (about 5 s on a 64 px input, against 32 s for the preselected pair)
    for name in ("langevin", "reddiff", "vble", "pmrf"):
        page.locator("#c_solvers").get_by_text(name, exact=True).click()
    page.locator("#c_run").click()
    expect(page.locator("#c_info")).to_contain_text("one colour scale", timeout=300_000)
    expect(page.locator("#c_info")).to_contain_text("sr:bicubic:factor=2")
    assert page.locator("#c_means img").count() == 2 and page.locator("#c_stds img").count() == 2
    expect(page.locator("#c_metrics")).to_contain_text("pmrf")
    expect(page.locator("#c_metrics")).to_contain_text("vble")
    _shot(page, "compare")


def test_large_upload_offers_a_choice_and_bad_regions_are_named(page, sample):
    """Above the app's limit: the size to be restored is shown, and a region past the edge is an error naming it."""
    expect = playwright.expect
    page.locator("#inp input[type=file]").set_input_files(str(sample / "huge.png"))
    expect(page.locator("#inp img").first).to_be_visible(timeout=20_000)
    expect(page.locator("#fit_note")).to_contain_text("1000x1100 -> 976x1073 (downscaled)", timeout=20_000)
    expect(page.locator("#fit_note")).to_contain_text("command line")
    page.locator("#fit").get_by_text("region", exact=True).click()
    expect(page.locator("#region_x")).to_be_visible()
    expect(page.locator("#fit_note")).to_contain_text("1000x1100 -> 976x1073 (region at x=12, y=13)")
    page.locator("#region_x input").fill("100")
    page.locator("#region_x input").press("Enter")
    expect(page.locator("#fit_note")).to_contain_text("reaches past the image's right edge", timeout=10_000)
    page.locator("#run").click()
    toast = page.get_by_test_id("toast-body")  # the run's error, beside the size line that says it already
    expect(toast.filter(has_text="reaches past the image's right edge").first).to_be_visible(timeout=30_000)
    _shot(page, "error")
