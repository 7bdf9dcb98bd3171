"""The web demo: what the page shows (`mf2.cli.demo_results`, no browser) and the real page driven by headless Chromium.

The browser test starts `python -m mf2.cli.demo` on a free loopback port, uploads the astronaut photo, waits for the
result, checks "happiness" and the 12 AU bars, saves a screenshot (`test-artifacts/demo.png`, or
`$MF2_TEST_ARTIFACTS`), then uploads a text file renamed `.jpg` and checks the error message, and that the server
still serves and removed its upload folder on exit. It needs Debian's `chromium` and `chromium-driver` (`.ci/run`
installs them) and skips, saying so, only where they are absent.
"""

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from distributed_launch import free_port
from PIL import Image

from mf2.cli.demo_results import (
    DemoInputError,
    analyze_image,
    analyze_video,
    au_bars_html,
    check_upload,
    emotion_scores,
    thresholds,
    write_record,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
ASTRONAUT = REPO_ROOT / "examples" / "images" / "astronaut.png"
TWO_FACES = REPO_ROOT / "examples" / "images" / "two_faces.png"


@pytest.fixture(scope="module")
def pipe():
    from transformers import pipeline

    import mf2  # noqa: F401

    return pipeline("facial-state")


@pytest.fixture
def not_an_image(tmp_path) -> Path:
    path = tmp_path / "notes.jpg"
    path.write_text("These are my notes, not a photo.\n" * 20)
    return path


# --------------------------------------------------------------------------------------------------- no browser


def test_a_photo_gives_the_annotated_image_bars_and_a_record(pipe, tmp_path):
    result = analyze_image(pipe, str(ASTRONAUT), name=ASTRONAUT.name)
    assert "happiness" in result.message and len(result.faces) == 1
    face = result.faces[0]
    assert face["emotion"]["label"] == "happiness" and "features" not in face
    assert len(emotion_scores(face)) == len(pipe.model.config.id2label)  # every emotion gets a bar
    bars = au_bars_html(face, thresholds(pipe))
    assert bars.count('class="mf2-au-bar"') == 12 and bars.count("mf2-au-active") == len(face["active_action_units"])
    assert "AU12" in face["active_action_units"] and face["explanation"]
    assert result.annotated.size == Image.open(ASTRONAUT).size  # small photos are shown at their size
    record = write_record(result.record, tmp_path, "faces")
    assert record.parent == tmp_path and record.read_text().count('"box"') == 1
    assert result.record["model"] == "mf2-base" and result.record["model_trained"] is True


def test_several_faces_give_one_entry_each(pipe):
    result = analyze_image(pipe, str(TWO_FACES))
    assert len(result.faces) == 2 and result.message.startswith("Found 2 faces")


def test_bad_inputs_give_clear_messages(pipe, tmp_path, not_an_image):
    with pytest.raises(DemoInputError, match="Cannot read 'notes.jpg' as an image"):
        analyze_image(pipe, str(not_an_image))
    blank = tmp_path / "wall.png"
    Image.new("RGB", (200, 200), (128, 128, 128)).save(blank)
    with pytest.raises(DemoInputError, match="No face was found"):
        analyze_image(pipe, str(blank))
    with pytest.raises(DemoInputError, match=r"200 × 200 pixels\) has 0 megapixels.*up to 0 megapixels"):
        check_upload(blank, max_megapixels=0.01)  # a huge photo, refused from its header before decoding
    with pytest.raises(DemoInputError, match="up to 0 MB"):
        check_upload(blank, max_mb=1e-4)
    with pytest.raises(DemoInputError, match="up to 0 MB"):  # `--max-upload-mb` reaches the photo's own check
        analyze_image(pipe, str(blank), max_mb=1e-4)
    wide = tmp_path / "wide.png"  # a photo larger than the search copy: the message says what it cannot see
    Image.new("RGB", (4096, 1000), (128, 128, 128)).save(wide)
    with pytest.raises(DemoInputError, match=r"In a photo this large \(4096 px\), faces under about 80 px across"):
        analyze_image(pipe, str(wide))
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(ASTRONAUT.read_bytes()[:4000])  # a valid header, corrupt data: the pipeline says so
    with pytest.raises(DemoInputError, match="Cannot analyse this image"):
        analyze_image(pipe, str(truncated))


def test_a_video_streams_rows_curves_and_progress(pipe, tmp_path):
    from mf2.video import write_video

    not_a_video = tmp_path / "notes.mp4"
    not_a_video.write_text("not a video")
    face = np.asarray(Image.open(ASTRONAUT).convert("RGB").resize((256, 256)))
    clip = tmp_path / "clip.mp4"
    write_video(clip, [face] * 4 + [np.zeros_like(face)] * 2, fps=10)
    seen = []
    updates = list(analyze_video(pipe, clip, fps=10, progress=lambda n, total: seen.append((n, total)), every=2))
    final = updates[-1]
    assert len(updates) == 4 and len(final.rows) == 6 and seen[-1] == (6, 6)  # streamed: 2, 4, 6 rows, then all
    assert [row["emotion"] for row in final.rows] == ["happiness"] * 4 + [""] * 2
    assert len(final.curves) == 4 * 12 and "4 with a face" in final.message
    # The face is followed as one person: its track in the table, one row in the people table, one timeline.
    assert [row["track"] for row in final.rows] == [1] * 4 + [None] * 2 and "1 person (tracks)" in final.message
    assert [person["track"] for person in final.people] == [1] and final.people[0]["frames"] == 4
    assert [caption for _, caption in final.timelines] == ["track 1"] and final.timelines[0][0].width == 1200
    with pytest.raises(DemoInputError, match="Cannot read this file as a video") as refused:
        list(analyze_video(pipe, not_a_video))
    assert str(tmp_path) not in str(refused.value) and "notes.mp4" in str(refused.value)  # no server-side folder
    with pytest.raises(DemoInputError, match="larger than 0.0001 MB"):  # `--max-upload-mb` reaches the video's check
        list(analyze_video(pipe, clip, max_mb=1e-4))


def test_cli_says_how_to_install_gradio_when_it_is_missing(monkeypatch, capsys):
    import importlib.util

    from mf2.cli import demo

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    assert demo.main(["--port", "1"]) == 1
    assert "pip install 'mf2[demo]'" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------- the browser


def _browser() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("no headless browser here: install Debian's chromium and chromium-driver (.ci/run does)")
    pytest.importorskip("selenium", reason="selenium is part of mf2[test]")
    pytest.importorskip("gradio", reason="gradio is part of mf2[demo] and mf2[test]")
    return chromium, driver


def _wait_until_serving(url: str, server: subprocess.Popen, log: Path, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mf2 demo exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"mf2 demo did not serve {url} within {seconds} s")


def _chrome(chromium: str, driver: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1900",
        "--disable-extensions",
        "--no-first-run",
        # a synthetic camera (a test pattern, no face) for the webcam snapshot
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
    ):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(driver), options=options)


def _upload(browser, url: str, path: Path, expected: str, timeout: float = 60) -> str:
    """Load the page, give the photo to the upload field, wait until the status line says `expected`."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    wait = WebDriverWait(browser, timeout)
    field = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#mf2-upload input[type=file]")))
    field.send_keys(str(path))
    wait.until(ec.text_to_be_present_in_element((By.ID, "mf2-status"), expected))
    return browser.find_element(By.ID, "mf2-status").text


def _snapshot(browser, expected: str, timeout: float = 30) -> None:
    """Open the webcam field, take a snapshot, wait until the status line says `expected`."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, timeout)
    wait.until(ec.element_to_be_clickable((By.XPATH, "//*[@id='mf2-webcam']//*[contains(text(), 'Webcam')]"))).click()
    capture = (By.CSS_SELECTOR, "#mf2-webcam button[aria-label='capture photo']")
    wait.until(ec.element_to_be_clickable(capture)).click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "mf2-status"), expected))


@pytest.fixture
def server(tmp_path):
    """`python -m mf2.cli.demo` on a free loopback port, its temporary folders under `tmp_path/temp`, its output in a
    file."""
    temp = tmp_path / "temp"
    temp.mkdir()
    port = free_port()
    env = {**os.environ, "GRADIO_TEMP_DIR": str(temp), "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    log = open(tmp_path / "server.log", "w")  # a file, not a pipe: a full pipe would block the server
    process = subprocess.Popen(
        [sys.executable, "-m", "mf2.cli.demo", "--port", str(port)],
        env=env,
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    yield process, f"http://127.0.0.1:{port}/", temp, Path(log.name)
    if process.poll() is None:
        process.terminate()
        process.wait(timeout=30)
    log.close()


def test_the_page_in_a_real_browser(server, not_an_image):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    chromium, driver = _browser()
    process, url, temp, log = server
    browser = _chrome(chromium, driver)  # starts while the server loads its model
    try:
        _wait_until_serving(url, process, log)
        status = _upload(browser, url, ASTRONAUT, "Found 1 face")
        assert "happiness" in status
        # the face's tab renders after the status: wait for its 12 AU bars and the emotion bars
        WebDriverWait(browser, 30).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".mf2-au-bar")) == 12)
        page = browser.find_element(By.TAG_NAME, "body").text
        assert "happiness" in page and "Emotion probabilities" in page and "AU12" in page and "active" in page
        assert browser.find_elements(By.CSS_SELECTOR, "#mf2-annotated img")
        artifacts = Path(os.environ.get("MF2_TEST_ARTIFACTS", REPO_ROOT / "test-artifacts"))
        artifacts.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(artifacts / "demo.png"))

        status = _upload(browser, url, not_an_image, "Cannot read")
        assert "notes.jpg" in status and "not an image file" in status
        WebDriverWait(browser, 10).until(lambda b: not b.find_elements(By.CSS_SELECTOR, ".mf2-au-bar"))  # no stale bars
        assert "Found 1 face" in _upload(browser, url, ASTRONAUT, "Found 1 face")  # and it keeps serving
        _snapshot(browser, "No face was found")  # the webcam path
    finally:
        browser.quit()
    process.terminate()
    assert process.wait(timeout=30) == 0
    assert list(temp.iterdir()) == [], "the upload folder is removed when the server stops"


def test_a_webcam_snapshot_has_the_uploads_size_limit():
    """A snapshot (a PIL image, never a file) over the megapixel limit is refused as an upload is, before any
    analysis."""
    from mf2.cli.demo_results import MAX_MEGAPIXELS

    calls = []
    snapshot = Image.new("1", (8000, 7000))  # 56 MP in 7 MB
    assert 8000 * 7000 > MAX_MEGAPIXELS * 1e6
    with pytest.raises(DemoInputError, match=r"This snapshot \(8000 × 7000 pixels\) has 56 megapixels"):
        analyze_image(lambda *args, **kwargs: calls.append(args), snapshot)
    assert calls == []
