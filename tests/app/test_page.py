"""The chat page in headless Chromium: ask and watch the stream, sources, what was kept, compare,
upload, escaping, keyboard use."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.app.conftest import chat_page

pytestmark = pytest.mark.slow

QUESTION = "What is the vault code at the Oriel bank?"
SCRIPT_TEXT = "The Pellow beacon code is 3308. <script>window.__injected = true;</script> <b>bold</b>"


@pytest.fixture(scope="module")
def page(live_server):
    with chat_page(live_server) as page:
        yield page


def _ask(page, question: str, method: str, keep_ratio: str = "0.15", top_k: str = "2"):
    page.select_option("#method", method)
    page.fill("#keep-ratio", keep_ratio)
    page.fill("#top-k", top_k)
    page.fill("#question", question)
    page.press("#question", "Enter")  # Enter asks
    turn = page.locator(".turn").last
    expect(turn.locator(".stats")).to_contain_text("method " + method, timeout=300_000)
    return turn


def test_question_streams_with_sources_and_stats(page, fact_documents):
    page.evaluate("""() => {
        window.__tokenUpdates = 0;
        new MutationObserver(() => window.__tokenUpdates++).observe(
            document.getElementById('conversation'), {subtree: true, characterData: true, childList: true});
    }""")
    turn = _ask(page, QUESTION, "full")
    expect(turn.locator(".answer")).to_contain_text("4471")
    assert page.evaluate("window.__tokenUpdates") > 3  # the answer grew piece by piece
    turn.locator("details.source summary").first.click()
    expect(turn.locator("details.source pre").first).to_contain_text("4471")
    expect(turn.locator(".stats")).to_contain_text("time to first token")
    expect(turn.locator(".stats")).to_contain_text("KV cache")
    page.reload()  # the conversation survives in sessionStorage
    expect(page.locator(".turn .answer").last).to_contain_text("4471")


def test_kept_token_view_highlights_the_api_spans(page, client, fact_documents):
    turn = _ask(page, QUESTION, "samkv", keep_ratio="0.3")
    source = turn.locator("details.source").first
    source.locator("summary").click()
    toggle = source.locator("button.show-kept")
    toggle.click()
    expect(toggle).to_have_attribute("aria-pressed", "true")
    marks = source.locator("pre mark.kept").evaluate_all(
        "marks => marks.map(m => [Number(m.dataset.start), Number(m.dataset.end), m.textContent])")

    body = {"question": QUESTION, "method": "samkv", "keep_ratio": 0.3, "top_k": 2,
            "include_selection": True}
    answer = client.post("/v1/query", json=body).json()
    text = answer["sources"][0]["text"]
    selection = answer["selection"][0]
    # Other tests may store the same text under other ids: the page and the API agree on which.
    expect(source.locator("summary")).to_contain_text(answer["sources"][0]["document_id"] + " #")
    assert "4471" in text
    assert marks, "no kept span is highlighted"
    assert [(start, end) for start, end, _ in marks] == [(s["start"], s["end"]) for s in selection["kept"]]
    for start, end, shown in marks:
        assert shown == text[start:end]
    assert source.locator("pre").text_content() == text  # highlighting adds no text
    recomputed = source.locator("pre mark.recomputed").all_text_contents()
    assert "".join(recomputed) == "".join(text[s["start"] : s["end"]] for s in selection["recomputed"])
    bar = source.locator(".kept-bar")
    expect(bar).to_have_attribute(
        "aria-label", re.compile(rf"^kept {selection['kept_tokens']} of {selection['tokens']} tokens"))
    assert 0 < selection["kept_share"] < 1
    toggle.click()
    assert source.locator("pre mark").count() == 0


def test_compare_shows_both_answers_with_their_figures(page, fact_documents):
    page.select_option("#method", "samkv")
    page.fill("#keep-ratio", "0.15")
    expect(page.locator("#compare")).to_have_text("Compare samkv with full")
    page.fill("#question", QUESTION)
    page.click("#compare")
    turn = page.locator(".turn.comparison").last
    figures = {}
    for method in ("full", "samkv"):
        run = turn.locator(f'.run[data-method="{method}"]')
        expect(run.locator(".figure-ttft")).to_have_text(re.compile(r"^\d+ ms$"), timeout=300_000)
        expect(run.locator(".figure-kv")).to_have_text(re.compile(r"^[\d.]+ (B|KiB|MiB)$"))
        expect(run.locator(".answer")).not_to_be_empty()
        kept, total = (int(n) for n in run.locator(".figure-kept").text_content().split(" / "))
        figures[method] = kept, total
    assert figures["full"][0] == figures["full"][1]
    assert figures["samkv"][0] < figures["samkv"][1]
    expect(turn.locator("details.source .kept-share").first).to_contain_text("kept by samkv")


def test_upload_shows_progress_and_script_stays_text(page, tmp_path):
    path = tmp_path / "beacon.txt"
    path.write_text(SCRIPT_TEXT)
    page.set_input_files("#files", str(path))
    page.click("#upload")
    job = page.locator("#jobs li").first
    expect(job).to_have_attribute("data-status", "done", timeout=300_000)
    expect(job).to_contain_text("done")
    expect(page.locator("#documents")).to_contain_text("beacon.txt")

    turn = _ask(page, "What is the Pellow beacon code?", "naive", top_k="1")
    source = turn.locator("details.source pre").first
    expect(source).to_contain_text("<script>window.__injected = true;</script>")
    assert page.evaluate("window.__injected") is None
    assert turn.locator("details.source b").count() == 0


def test_bad_uploads_show_their_errors(page, tmp_path, app_settings):
    program = tmp_path / "tool.exe"
    program.write_bytes(b"MZ\x90\x00")
    blank = tmp_path / "blank.txt"
    blank.write_text("  \n\t\n")
    huge = tmp_path / "huge.txt"
    huge.write_bytes(b"word " * (app_settings.max_request_bytes // 5 + 1))
    page.set_input_files("#files", [str(program), str(blank), str(huge)])
    page.click("#upload")
    rows = page.locator("#jobs li")
    for name, message in (("tool.exe", "accepted file types"), ("blank.txt", "holds no text"),
                          ("huge.txt", f"at most {app_settings.max_request_bytes} bytes")):
        row = rows.filter(has_text=name)
        expect(row).to_have_attribute("data-status", "failed")
        expect(row.locator(".job-status")).to_contain_text(message)


def test_controls_are_labelled_and_focus_is_visible(page, fact_documents):
    page.click("#refresh-documents")
    expect(page.locator("#examples .example")).to_have_text([QUESTION])  # its document is stored
    for label in ("Question", "API key", "Method", "Keep ratio", "Top k", "Files to upload"):
        expect(page.get_by_label(label, exact=False).first).to_be_visible()
    page.locator("#question").focus()
    page.keyboard.press("Tab")
    focused = page.evaluate("""() => {
        const style = getComputedStyle(document.activeElement);
        return [document.activeElement.tagName, style.outlineStyle, style.outlineWidth];
    }""")
    assert focused[1] == "solid" and focused[2] != "0px", focused


def test_refresh_keeps_the_example_buttons_under_the_pointer(page, fact_documents):
    # A button replaced between the press and the release of a click loses the click, so a
    # refresh that offers the same examples must leave the same button nodes in place.
    page.click("#refresh-documents")
    button = page.locator("#examples .example").filter(has_text=QUESTION)
    expect(button).to_have_count(1)
    button.evaluate("(node) => { node.dataset.marker = 'before-refresh'; }")
    # The documents list is always rebuilt, in the same step as the examples: once its marked
    # item is gone, the refresh has run.
    documents = page.locator("#documents li")
    documents.first.evaluate("(node) => { node.dataset.marker = 'before-refresh'; }")
    page.click("#refresh-documents")
    expect(page.locator("#documents li[data-marker]")).to_have_count(0)
    expect(button).to_have_attribute("data-marker", "before-refresh")
