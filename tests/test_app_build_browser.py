"""The app's front page, "Build a small model", clicked through in a real headless Chromium.

Debian's chromium with the flags PRODUCT.md names, as tests/test_app_browser.py does; screenshots go to
test-artifacts/.
"""
import re
import shutil
from pathlib import Path

import pytest

from tests.helpers import ARTIFACTS

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-dev-shm-usage", "--disable-background-networking"]
pytestmark = [pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed"),
              pytest.mark.slow]


def fill(pg, elem_id: str, value) -> None:
    box = pg.locator(f"#{elem_id} input")
    box.fill(str(value))
    box.press("Tab")  # Gradio takes a number box's value when it loses focus


def test_build_a_small_model_by_clicking(app_server, tmp_path):
    expect = sync_api.expect
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        page.set_default_timeout(30_000)
        try:
            page.goto(app_server["url"])
            # The front page: the build form, with the evidence's defaults and no method called "recommended".
            expect(page.get_by_role("tab", name="Build a small model")).to_have_attribute("aria-selected", "true",
                                                                                         timeout=60_000)
            expect(page.locator("#build-student input")).to_have_value("resnet18-small")
            expect(page.locator("#build-methods").get_by_label("stl", exact=True)).to_be_checked()
            assert "recommended" not in page.locator("#build-methods").inner_text().lower()

            page.locator("#build-teachers").get_by_label("efficientnet-lite0").check()
            page.locator("#build-methods").get_by_label("kd", exact=True).uncheck()
            fill(page, "build-top-k", 1)
            fill(page, "build-budget", 0)
            fill(page, "build-parallel", 2)
            page.get_by_text("Smaller and faster").click()
            fill(page, "build-steps", 4)
            fill(page, "build-limit-train", 100)
            fill(page, "build-limit-test", 64)
            page.get_by_role("button", name="Build", exact=True).click()
            expect(page.locator("#build-status")).to_contain_text("Building", timeout=60_000)
            expect(page.locator("#build-progress progress")).to_be_visible()
            expect(page.locator("#build-progress")).to_contain_text(re.compile(r"\d+%"), timeout=120_000)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "build-1-progress.png"), full_page=True)

            expect(page.locator("#build-status")).to_contain_text("Built", timeout=900_000)
            card = page.locator("#build-card")
            expect(card).to_contain_text("Report card: digits -> resnet18-small")
            expect(card).to_contain_text("Candidates on the hold-out")
            expect(card).to_contain_text("int8 decision")
            expect(page.locator("#build-serve")).to_contain_text("aftzoo serve")
            page.screenshot(path=str(ARTIFACTS / "build-2-card.png"), full_page=True)

            with page.expect_download() as download:
                page.locator("#build-zip a").first.click()
            saved = tmp_path / download.value.suggested_filename
            download.value.save_as(saved)
            import zipfile

            names = zipfile.ZipFile(saved).namelist()
            assert any(n.endswith("manifest.json") for n in names) and any(n.endswith("model.onnx") for n in names)
        except BaseException:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "build-failed.png"), full_page=True)
            raise
        finally:
            browser.close()
