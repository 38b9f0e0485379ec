"""gpunet-serve's page in a real browser: Debian's headless Chromium, driven by Playwright for
Python (no browser download: the system's /usr/bin/chromium).

The tests skip when Playwright or Chromium is missing, unless ``GPUNET_REQUIRE_BROWSER=1``
(set by ``.ci/run`` once it has installed Chromium), where they fail instead. Each test leaves
a screenshot in its tmp folder; ``GPUNET_SAVE_SCREENSHOT=docs/serve.png`` also writes the
astronaut's to that path (the one in docs/GUIDE.md), shrunk to a 256-colour PNG.
"""

import os
from pathlib import Path

import pytest


CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
# the page has shown an answer: faces (or none) found, or an error (locators: the page's CSP
# forbids the eval that a string predicate of wait_for_function needs)
ANSWERED = "#status:text-matches('found'), #error:visible"


def _missing():
    for module in ("starlette", "uvicorn", "python_multipart", "httpx", "skimage"):  # the server's, in [dev]
        try:
            __import__(module)
        except ImportError as e:
            return f"{module} does not import ({e}); pip install -e '.[dev]'"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as e:
        return f"Playwright for Python does not import ({e}); pip install playwright"
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is missing; apt-get install chromium"
    return None


_why = _missing()
if _why is not None:
    if os.environ.get("GPUNET_REQUIRE_BROWSER") == "1":
        raise RuntimeError(f"GPUNET_REQUIRE_BROWSER=1 but {_why}")
    pytest.skip(_why, allow_module_level=True)


@pytest.fixture(scope="module")
def playwright():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright):
    b = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, timeout=60_000)
    yield b
    b.close()


@pytest.fixture
def page(browser, live):
    """The page, loaded; every request it makes and every console error are recorded."""
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    pg.requests, pg.errors = [], []
    pg.on("request", lambda r: pg.requests.append(r.url))
    pg.on("console", lambda m: pg.errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.goto(live.url + "/")
    pg.locator("#about:text-matches('Model:')").wait_for()  # /api/health answered
    yield pg
    context.close()


def photo_file(tmp_path, photos, name):
    path = tmp_path / name
    path.write_bytes(photos[name])
    return str(path)


def upload(page, path):
    page.set_input_files("#file", path)
    page.locator(ANSWERED).first.wait_for()


def test_the_page_loads_everything_from_gpunet(page, live):
    assert page.title() == "gpunet: emotions in a photo"
    assert page.locator("#drop").is_visible()
    assert "fer2013.npz" in page.locator("#about").inner_text()
    assert "10 MB" in page.locator("#limit").inner_text()
    assert page.locator("#result").is_hidden() and page.locator("#error").is_hidden()
    for url in page.requests:
        assert url.startswith(live.url) or url.startswith("data:"), url  # no CDN, nothing external
    assert {live.url + "/static/app.js", live.url + "/static/style.css", live.url + "/api/health"} <= set(
        page.requests
    )
    assert page.errors == []


def test_the_astronaut_gets_one_box_and_seven_bars(page, photos, tmp_path):
    upload(page, photo_file(tmp_path, photos, "astronaut.png"))
    assert page.locator("#error").is_hidden(), page.locator("#error").inner_text()
    assert page.locator("#status").inner_text().startswith("1 face found")
    assert page.locator("#frame .box").count() == 1
    assert page.locator("#faces .face").count() == 1
    bars = page.locator("#faces .face .bar")
    assert bars.count() == 7
    assert [bars.nth(i).get_attribute("aria-label") for i in range(7)] == [
        "angry", "disgust", "fear", "happy", "sad", "surprise", "neutral",
    ]  # fmt: skip
    assert page.locator(".bar.top").get_attribute("aria-label") == "happy"
    label = page.locator("#frame .box .box-label").inner_text()
    assert label.startswith("1 happy"), label
    # the box sits where the API put it: box [x, y, w, h] of 512 x 512, drawn over the shown photo
    photo = page.locator("#photo").bounding_box()
    box = page.locator("#frame .box").bounding_box()
    fx, fy = (box["x"] - photo["x"]) / photo["width"] * 512, (box["y"] - photo["y"]) / photo["height"] * 512
    assert 150 < fx < 210 and 40 < fy < 100, (fx, fy)  # the face: about [177, 64, 98, 98]
    shot = tmp_path / "astronaut-page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    target = os.environ.get("GPUNET_SAVE_SCREENSHOT")
    if target:
        from PIL import Image

        Image.open(shot).convert("RGB").quantize(256).save(Path(target), optimize=True)
    assert page.errors == []


def test_a_photo_without_a_face_says_so(page, photos, tmp_path):
    upload(page, photo_file(tmp_path, photos, "coffee.png"))
    assert page.locator("#status").inner_text() == "No face found in this photo."
    assert page.locator("#frame .box").count() == 0 and page.locator("#faces .face").count() == 0
    assert page.locator("#photo").is_visible() and page.locator("#error").is_hidden()
    page.screenshot(path=str(tmp_path / "coffee-page.png"))


def test_a_text_file_is_an_error_in_words(page, photos, tmp_path):
    upload(page, photo_file(tmp_path, photos, "astronaut.jpg"))  # an earlier answer, then the error
    upload(page, photo_file(tmp_path, photos, "notes.txt"))
    error = page.locator("#error")
    assert error.is_visible()
    assert error.inner_text() == "notes.txt: not a readable image (not JPEG or PNG)"
    assert page.locator("#result").is_hidden()
    page.screenshot(path=str(tmp_path / "text-page.png"))
    # and the page still works after it
    upload(page, photo_file(tmp_path, photos, "astronaut.jpg"))
    assert page.locator("#error").is_hidden() and page.locator("#frame .box").count() == 1


def test_the_webcam_snapshot_goes_through_the_same_path(playwright, live, tmp_path):
    """Chromium's fake camera (a moving test pattern, no face) stands in for a webcam."""
    fake = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
    b = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS + fake, timeout=60_000)
    try:
        pg = b.new_page()
        pg.set_default_timeout(30_000)
        pg.goto(live.url + "/")
        pg.click("#webcam-start")
        pg.locator("#snap:enabled, #error:visible").first.wait_for()  # the video plays, or an error
        assert pg.locator("#error").is_hidden(), pg.locator("#error").inner_text()
        assert pg.locator("#webcam-start").is_hidden() and pg.locator("#video").is_visible()
        pg.click("#snap")
        pg.locator(ANSWERED).first.wait_for()
        assert pg.locator("#error").is_hidden(), pg.locator("#error").inner_text()
        assert pg.locator("#status").inner_text() == "No face found in this photo."
        assert pg.locator("#photo").is_visible()
        pg.screenshot(path=str(tmp_path / "webcam-page.png"))
        pg.click("#webcam-stop")
        assert pg.locator("#webcam").is_hidden() and pg.locator("#webcam-start").is_visible()
    finally:
        b.close()


def test_without_a_camera_the_webcam_error_is_shown_in_words(page):
    page.click("#webcam-start")  # Chromium without a (fake) camera device
    page.locator("#error").wait_for(state="visible")
    assert page.locator("#error").inner_text().startswith("The webcam cannot be used:")


def test_where_the_browser_forbids_the_webcam_the_page_says_so(playwright, start_server):
    """http:// on a name other than localhost is not a secure context: no getUserMedia. The name is
    one the server was told to answer (gpunet-serve --allowed-host faces.test)."""
    from gpunet.serve.app import LOOPBACK_HOSTS

    port = start_server(allowed_hosts=[*LOOPBACK_HOSTS, "faces.test"]).url.rsplit(":", 1)[1]
    b = playwright.chromium.launch(
        executable_path=CHROMIUM,
        args=ARGS + ["--host-resolver-rules=MAP faces.test 127.0.0.1"],
        timeout=60_000,
    )
    try:
        pg = b.new_page()
        pg.set_default_timeout(30_000)
        pg.goto(f"http://faces.test:{port}/")
        pg.locator("#about:text-matches('Model:')").wait_for()
        assert pg.locator("#webcam-start").is_hidden()
        assert pg.locator("#webcam-note").inner_text().startswith("Webcam: not available here")
        assert pg.locator("#drop").is_visible()  # photos still work
    finally:
        b.close()


def test_a_page_reached_under_a_foreign_name_gets_nothing(playwright, live):
    """DNS rebinding: rebind.test resolves to 127.0.0.1 (as an attacker's name would, after its first
    answer); the browser sends Host: rebind.test, and the server answers one line of JSON, not the
    page, nor its script or API."""
    port = live.url.rsplit(":", 1)[1]
    b = playwright.chromium.launch(
        executable_path=CHROMIUM,
        args=ARGS + ["--host-resolver-rules=MAP rebind.test 127.0.0.1"],
        timeout=60_000,
    )
    try:
        pg = b.new_page()
        pg.set_default_timeout(30_000)
        for path in ("/", "/static/app.js", "/api/health"):
            r = pg.goto(f"http://rebind.test:{port}{path}")
            assert r.status == 400 and r.headers["content-type"] == "application/json", (path, r.status)
            assert r.json()["error"].startswith(
                f"Host 'rebind.test:{port}': not a name this server answers to"
            )
        assert pg.locator("#drop").count() == 0  # no page was served
    finally:
        b.close()
