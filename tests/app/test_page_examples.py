"""The README's example questions, asked through the page with samkv, answered correctly.

Unlike the other app tests, which share the small SmolLM2 test engine (fast, but it does not
answer these), this module loads the served default model, qwen2.5-coder-0.5b-instruct, and
serves the bundled sample collection with it: it is the slowest test here (the model decodes a
few tokens a second on a CPU), so it asks only the README's three questions.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from tests.app.conftest import API_KEY, REDIS_URL, chat_page, serving

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[2] / "README.md"
# Each README example question, with what a correct answer must say (its sample document
# states it plainly in one sentence).
EXPECTED = {
    "What is the vault code at the Oriel bank?": "4471",
    "Who is the harbour master of Velmora?": "Ilse Brandt",
    "When does the night train leave Ambleford?": "23:40",
}
SAMPLE_DOCUMENTS = 6


@pytest.fixture(scope="module")
def served_default_server(tmp_path_factory, redis_prefix):
    """A server over the sample collection, answering with the served default model."""
    from app.settings import Settings
    from samkv import Engine

    default_model = Settings.model_fields["model"].default
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("examples-data"),
        model=default_model,
        redis_url=REDIS_URL,
        redis_prefix=redis_prefix + "examples:",
        api_keys=API_KEY,
        sample_collection=True,
        max_new_tokens=24,
    )
    with serving(settings, Engine.load(default_model)) as url:
        deadline = time.monotonic() + 600
        headers = {"Authorization": f"Bearer {API_KEY}"}
        while len(httpx.get(url + "/v1/documents", headers=headers).json()["documents"]) < SAMPLE_DOCUMENTS:
            if time.monotonic() > deadline:
                pytest.fail("the sample collection was not indexed")
            time.sleep(0.5)
        yield url


def test_readme_examples_are_the_pages_examples():
    listed = re.findall(r"^- (.+\?)$", README.read_text(encoding="utf-8"), flags=re.MULTILINE)
    assert set(listed) == set(EXPECTED)
    script = (Path(__file__).resolve().parents[2] / "app" / "static" / "app.js").read_text()
    assert all(f'question: "{question}"' in script for question in EXPECTED)


def test_readme_examples_are_answered_correctly_with_samkv(served_default_server):
    with chat_page(served_default_server) as page:
        page.select_option("#method", "samkv")
        buttons = page.locator("#examples .example")
        expect(buttons).to_have_count(len(EXPECTED))
        for question, expected in EXPECTED.items():
            buttons.filter(has_text=question).click()
            turn = page.locator(".turn").last
            expect(turn.locator(".question")).to_have_text(question)
            expect(turn.locator(".stats")).to_contain_text("method samkv", timeout=300_000)
            expect(turn.locator(".answer")).to_contain_text(expected)
