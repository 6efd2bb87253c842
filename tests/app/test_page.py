"""The chat page in headless Chromium: ask and watch the stream, sources, upload, escaping."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.app.conftest import API_KEY

pytestmark = pytest.mark.slow

SCRIPT_TEXT = "The Pellow beacon code is 3308. <script>window.__injected = true;</script> <b>bold</b>"


@pytest.fixture(scope="module")
def page(live_server):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update"],
        )
        context = browser.new_context()
        page = context.new_page()
        page.set_default_timeout(300_000)
        page.goto(live_server + "/")
        page.fill("#api-key", API_KEY)
        page.dispatch_event("#api-key", "change")
        yield page
        context.close()
        browser.close()


def test_question_streams_with_sources_and_stats(page, fact_documents):
    page.evaluate("""() => {
        window.__tokenUpdates = 0;
        new MutationObserver(() => window.__tokenUpdates++).observe(
            document.getElementById('conversation'), {subtree: true, characterData: true, childList: true});
    }""")
    page.select_option("#method", "full")
    page.fill("#question", "What is the vault code at the Oriel bank?")
    page.click("#ask")
    turn = page.locator(".turn").last
    expect(turn.locator(".stats")).to_contain_text("method full", timeout=300_000)
    expect(turn.locator(".answer")).to_contain_text("4471")
    assert page.evaluate("window.__tokenUpdates") > 3  # the answer grew piece by piece
    expect(turn.locator("details.source").first).to_contain_text("oriel-bank")
    turn.locator("details.source summary").first.click()
    expect(turn.locator("details.source pre").first).to_contain_text("4471")
    expect(turn.locator(".stats")).to_contain_text("time to first token")
    page.reload()  # the conversation survives in sessionStorage
    expect(page.locator(".turn .answer").last).to_contain_text("4471")


def test_upload_shows_progress_and_script_stays_text(page, client, tmp_path):
    path = tmp_path / "beacon.txt"
    path.write_text(SCRIPT_TEXT)
    page.set_input_files("#files", str(path))
    page.click("#upload")
    job = page.locator("#jobs li").first
    expect(job).to_have_attribute("data-status", "done", timeout=300_000)
    expect(page.locator("#documents")).to_contain_text("beacon.txt")

    page.select_option("#method", "naive")
    page.fill("#question", "What is the Pellow beacon code?")
    page.click("#ask")
    turn = page.locator(".turn").last
    expect(turn.locator(".stats")).to_contain_text("method naive", timeout=300_000)
    source = turn.locator("details.source pre").first
    expect(source).to_contain_text("<script>window.__injected = true;</script>")
    assert page.evaluate("window.__injected") is None
    assert turn.locator("details.source b").count() == 0
