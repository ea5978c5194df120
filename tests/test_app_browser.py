"""The web app end to end in a real headless Chromium, clicking as a user would.

Debian's chromium, launched with the flags PRODUCT.md names. A failed test leaves a
screenshot in test-artifacts/; the passing path also saves one per page there, to look at.
"""
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import ARTIFACTS

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-dev-shm-usage", "--disable-background-networking"]
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, app_server, request):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    pg.goto(app_server["url"])
    pg.get_by_role("tab", name="1. Data").click()  # the front page is "Build a small model"
    sync_api.expect(pg.locator("#data-summary")).to_contain_text("train", timeout=60_000)
    yield pg
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        ARTIFACTS.mkdir(exist_ok=True)
        pg.screenshot(path=str(ARTIFACTS / f"{request.node.name}-failed.png"), full_page=True)
    context.close()


def shot(pg, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def fill(pg, elem_id: str, value) -> None:
    box = pg.locator(f"#{elem_id} input")
    box.fill(str(value))
    box.press("Tab")  # Gradio takes a number box's value when it loses focus


def choose(pg, elem_id: str, option: str) -> None:
    pg.locator(f"#{elem_id} input").click()
    pg.get_by_role("option", name=re.compile(re.escape(option))).first.click()


def plot_lines(pg, elem_id: str) -> dict:
    """A Gradio line plot as drawn: the stroke of each line, the legend's labels, and whether the legend
    lies inside the plot's box (a clipped legend shows its title alone)."""
    return pg.evaluate("""id => {
        const box = document.getElementById(id);
        const lines = [...box.querySelectorAll('path')].filter(p =>
            (p.getAttribute('aria-roledescription') || '').includes('line mark'));
        const legend = [...box.querySelectorAll('.role-legend-label text, .role-legend-label')]
            .map(t => t.textContent.trim()).filter(Boolean);
        const outer = box.getBoundingClientRect();
        const inside = [...box.querySelectorAll('.role-legend-label')].every(t => {
            const r = t.getBoundingClientRect(); return r.bottom <= outer.bottom + 1 && r.height > 0; });
        return {strokes: lines.map(p => p.getAttribute('stroke')), legend: [...new Set(legend)], inside};
    }""", elem_id)


def test_rank_transfer_export_and_classify_by_clicking(page, tmp_path):
    expect = sync_api.expect
    expect(page.locator("#data-summary")).to_contain_text("1,437 for training, 360 for testing")
    page.wait_for_timeout(1000)
    counts = plot_lines(page, "class-counts")  # bars: no lines, but a legend that must show whole
    assert {"train", "test"} <= set(counts["legend"]) and counts["inside"], counts
    shot(page, "1-data")

    # Teachers: the two offline EfficientNet-Lite models are ticked for an image data set.
    page.get_by_role("tab", name="2. Teachers").click()
    expect(page.locator("#rank-models").get_by_label("efficientnet-lite0")).to_be_checked()
    expect(page.locator("#rank-models").get_by_label("efficientnet-lite2")).to_be_checked()
    fill(page, "rank-limit", 200)
    page.get_by_role("button", name="Rank teachers").click()
    expect(page.locator("#rank-status")).to_contain_text("Ranked 2 teachers", timeout=180_000)
    best = page.locator("#rank-status strong").nth(1).inner_text()
    other = ({"efficientnet-lite0", "efficientnet-lite2"} - {best}).pop()
    first_row = page.locator("#rank-table tbody tr").first
    expect(first_row).to_contain_text(best)  # the ranking's best, first in its table
    shot(page, "2-teachers")

    # Transfer: the ranking's best is pre-filled, and never the student itself.
    page.get_by_role("tab", name="3. Transfer").click()
    expect(page.locator("#teachers").get_by_label(best)).to_be_checked()
    expect(page.locator("#teachers").get_by_label(other)).not_to_be_checked()
    choose(page, "student", best)  # the best teacher is also a student here: it must not teach itself
    expect(page.locator("#teachers").get_by_label(best)).not_to_be_checked()
    expect(page.locator("#teachers").get_by_label(other)).to_be_checked()
    choose(page, "student", "resnet18-small")
    expect(page.locator("#scratch input")).to_be_checked()
    choose(page, "method", "AFT: adaptive feature transfer")  # one run at a fixed beta, not the default search
    fill(page, "beta", 1)
    fill(page, "steps", 16)
    fill(page, "lr", 0.001)
    fill(page, "limit-train", 200)
    fill(page, "limit-test", 100)
    page.get_by_role("button", name="Start transfer").click()
    expect(page.locator("#launch-status")).to_contain_text("Queued job", timeout=60_000)
    run_id = page.locator("#launch-status code").inner_text()
    jobs = page.locator("#jobs")
    expect(jobs).to_contain_text(run_id)
    done = re.escape(run_id) + r"\s+transfer\s+completed\s+16/16\s+([0-9.]+)"
    expect(jobs).to_contain_text(re.compile(done), timeout=600_000)  # other tests' jobs may share the page
    row = re.search(done, jobs.inner_text())
    assert row is not None, jobs.inner_text()
    assert 0 <= float(row.group(1)) <= 1.0  # 16 steps from random weights: what it learns is not this test's point

    # The live curves of this first job: every line has a colour, the legend names each series and is not clipped.
    page.wait_for_timeout(3000)
    loss, acc = plot_lines(page, "loss-plot"), plot_lines(page, "acc-plot")
    assert len(loss["strokes"]) == 3 and all(s and s != "none" for s in loss["strokes"]), loss
    assert {"total loss", "cross-entropy", "teacher term"} <= set(loss["legend"]) and loss["inside"], loss
    assert len(acc["strokes"]) == 2 and all(s and s != "none" for s in acc["strokes"]), acc
    assert {"train accuracy", "test set accuracy"} <= set(acc["legend"]) and acc["inside"], acc
    shot(page, "3-transfer")

    page.get_by_role("tab", name="4. Runs").click()
    expect(page.locator("#runs")).to_contain_text(run_id)
    shot(page, "4-runs")

    # Export the student: a download, how to call it by its name, an image box only; classify an image.
    page.get_by_role("tab", name="5. Export and try").click()
    choose(page, "export-run", run_id)
    page.get_by_role("button", name="Export student").click()
    expect(page.locator("#export-status")).to_contain_text("(passed)", timeout=180_000)
    expect(page.locator("#download")).to_be_visible()
    expect(page.locator("#snippets")).to_contain_text(f"/v1/models/{run_id}/predict")
    expect(page.locator("#try-text")).to_be_hidden()
    digit = tmp_path / "seven.png"
    Image.fromarray(np.kron(np.tri(8, dtype=np.uint8)[::-1] * 255, np.ones((8, 8), np.uint8))).save(digit)
    page.locator("#try-image input[type=file]").set_input_files(str(digit))
    page.wait_for_timeout(1000)
    page.get_by_role("button", name="Classify").click()
    expect(page.locator("#try-status")).to_contain_text("Top label", timeout=60_000)
    label = page.locator("#try-status strong").inner_text()
    assert label in [str(d) for d in range(10)]
    expect(page.locator("#labels")).to_contain_text(label)
    with page.expect_download() as download:
        page.locator("#download").click()
    assert download.value.suggested_filename == f"{run_id}.zip"
    shot(page, "5-export")


def test_upload_errors_show_in_the_page_and_a_good_table_becomes_a_data_set(page, tmp_path):
    import zipfile

    expect = sync_api.expect
    page.get_by_text("Add your own data").click()
    upload = page.locator("#upload input[type=file]")

    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("cat/ok.png", b"not really")
        zf.writestr("../escape.png", b"x")
    upload.set_input_files(str(evil))
    expect(page.locator("#upload-status")).to_contain_text("Could not read this file")
    expect(page.locator("#upload-status")).to_contain_text("../escape.png")
    assert "Traceback" not in page.locator("#upload-status").inner_text()

    page.locator("#upload button[aria-label='Clear']").first.click()
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("text,label\ncaf\xe9 cr\xe8me,a\nbon,b\n".encode("latin-1"))
    upload.set_input_files(str(latin1))
    expect(page.locator("#upload-status")).to_contain_text("not UTF-8")

    page.locator("#upload button[aria-label='Clear']").first.click()
    reviews = tmp_path / "My Reviews.csv"
    rows = [(f"a fine, moving film, part {i} 🎬", "good") if i % 2 else (f"dull and far too long, part {i}", "bad")
            for i in range(40)]
    reviews.write_text("review,verdict\n" + "\n".join(f'"{t}",{v}' for t, v in rows) + "\n", encoding="utf-8")
    upload.set_input_files(str(reviews))
    expect(page.locator("#upload-status")).to_contain_text("A table of 40 rows")
    expect(page.locator("#new-name").get_by_role("textbox")).to_have_value("my-reviews")
    expect(page.locator("#text-column input")).to_have_value("review")
    expect(page.locator("#label-column input")).to_have_value("verdict")
    page.get_by_role("button", name="Add data set").click()
    expect(page.locator("#upload-status")).to_contain_text("Added my-reviews")
    expect(page.locator("#dataset input")).to_have_value("my-reviews")
    expect(page.locator("#data-summary")).to_contain_text("2 classes of texts: 32 for training, 8 for testing")
    shot(page, "1-data-upload")

    # After a reload (a new page, as in another tab) the picker still offers it.
    page.reload()
    page.get_by_role("tab", name="1. Data").click()  # a reload opens the front page, "Build a small model"
    expect(page.locator("#data-summary")).to_contain_text("train", timeout=60_000)
    choose(page, "dataset", "my-reviews")
    expect(page.locator("#data-summary")).to_contain_text("2 classes of texts: 32 for training, 8 for testing")

    # Switching data sets while the Runs page shows: each page follows, nothing stale, no server error.
    page.get_by_role("tab", name="4. Runs").click()
    expect(page.locator("#runs-note")).to_contain_text("No runs on this data set")
    choose(page, "dataset", "digits")
    expect(page.locator("#runs-note")).not_to_contain_text("No runs", timeout=30_000)
    choose(page, "dataset", "my-reviews")
    page.get_by_role("tab", name="2. Teachers").click()
    expect(page.locator("#rank-status")).to_contain_text("my-reviews has no ranking yet")


def test_no_traceback_in_the_app_log_over_the_whole_run(app_server):
    """Last in this module: the server's log of every page above (and of the API tests, if they ran first)."""
    log = app_server["log"].read_text(errors="replace")
    assert "Traceback" not in log, log[log.index("Traceback") - 200:][:3000]
