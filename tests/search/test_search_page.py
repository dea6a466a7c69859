"""The search page in a real headless Chromium (Debian's, driven by playwright) against a real
`serve` process on loopback: type a query, see result cards, filter, query by image, screenshot.

Every request that is not to 127.0.0.1 is aborted, so links to PMC are checked as hrefs, never followed.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_search_support import dataset, hybrid_index, image_bytes, serve, stop, text_index

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = os.environ.get("BIOMEDICA_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = os.environ.get("BIOMEDICA_SCREENSHOTS")  # optional folder to keep the screenshots in


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    idx = hybrid_index(tmp_path_factory)
    proc, base = serve(idx, tmp_path_factory.mktemp("serve") / "serve.log")
    yield base
    stop(proc)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        if os.environ.get("BIOMEDICA_REQUIRE_BROWSER"):
            pytest.fail(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        b.close()


def _page(browser, base: str):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    outside: list[str] = []

    def route(r):
        if r.request.url.startswith(base):
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()
    page.route("**/*", route)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    return page, outside, errors


def _shot(page, path: Path) -> Path:
    page.screenshot(path=str(path), full_page=False)
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(SHOTS) / path.name)
    assert path.stat().st_size > 10_000
    return path


def test_type_query_see_cards_filter_and_screenshot(browser, server, tmp_path):
    page, outside, errors = _page(browser, server)
    page.goto(server + "/")
    page.wait_for_function("document.getElementById('about').textContent.includes('22 figures')")
    assert page.locator("input.subset").count() == 3
    page.fill("#q", "coronavirus pneumonia family cluster")
    page.press("#q", "Enter")
    page.wait_for_selector("article.card")
    cards = page.locator("article.card")
    assert cards.count() >= 5
    assert "results" in page.inner_text("#status")
    first = cards.first
    assert first.get_attribute("data-key").startswith("PMC7159286_")
    assert "coronavirus" in first.locator(".title").inner_text().lower()
    assert len(first.locator(".caption").inner_text()) > 40
    href = first.locator("a.pmc").get_attribute("href")
    assert href == "https://pmc.ncbi.nlm.nih.gov/articles/PMC7159286/"
    page.wait_for_function("[...document.querySelectorAll('article.card img')].slice(0, 4)"
                           ".every(i => i.complete && i.naturalWidth > 0)")
    shot = _shot(page, tmp_path / "search_results.png")
    # the layout: cards side by side in a grid, thumbnails inside their cards, nothing wider than the page
    boxes = [cards.nth(i).bounding_box() for i in range(min(4, cards.count()))]
    assert len({round(b["y"]) for b in boxes[:3]}) == 1
    assert boxes[1]["x"] > boxes[0]["x"] + boxes[0]["width"] - 1
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    # filter: only the commercial subset
    page.check("input.subset[value=commercial]")
    page.wait_for_function("[...document.querySelectorAll('article.card')].length > 0 && "
                           "[...document.querySelectorAll('article.card .chip.commercial')].length === "
                           "document.querySelectorAll('article.card').length")
    assert all("commercial" in c for c in page.locator("article.card .chips").all_inner_texts())
    assert outside == [] and errors == [], (outside, errors)
    assert shot.exists()


def test_image_query_and_error_message(browser, server, tmp_path, tmp_path_factory):
    ds = dataset(tmp_path_factory)
    row = pq.read_table(ds / "figures.parquet").to_pylist()[3]
    query = tmp_path / f"query.{row['image_ext']}"
    query.write_bytes(image_bytes(ds, row))
    page, outside, errors = _page(browser, server)
    page.goto(server + "/")
    page.wait_for_function("document.getElementById('about').textContent.includes('figures')")
    page.set_input_files("#file", str(query))
    page.wait_for_selector("article.card")
    assert page.locator("article.card").first.get_attribute("data-key") == row["key"]
    assert page.locator("#drop img").count() == 1  # preview of the query image
    assert "image" in page.inner_text("#status")
    _shot(page, tmp_path / "search_by_image.png")
    # a non-image upload: the API's 415 message is shown, no cards
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    page.set_input_files("#file", str(bad))
    page.wait_for_selector("#error", state="visible")
    assert "not a JPEG" in page.inner_text("#error")
    assert page.locator("article.card").count() == 0
    assert outside == [] and errors == [], (outside, errors)


def test_multi_panel_figure_is_one_card(browser, server):
    page, outside, errors = _page(browser, server)
    page.goto(server + "/?q=" + "onset of illness family members")
    page.wait_for_selector("article.card")
    page.wait_for_function("document.getElementById('status').textContent.includes('results')")
    keys = page.eval_on_selector_all("article.card", "cs => cs.map(c => c.dataset.key)")
    fig3 = [k for k in keys if k.startswith("PMC7159286_gr3")]
    assert len(fig3) == 1, keys
    card = page.locator(f"article.card[data-key='{fig3[0]}']")
    assert card.locator(".chip.panels").inner_text() == "2 panels"
    assert outside == [] and errors == [], (outside, errors)


def test_text_only_index_offers_no_image_search(browser, tmp_path_factory, tmp_path, server):
    """An index without an image encoder: the page hides the image drop zone; the hybrid one shows it."""
    page, outside, errors = _page(browser, server)
    page.goto(server + "/")
    page.wait_for_function("document.getElementById('about').textContent.includes('figures')")
    assert page.locator("#drop").is_visible()
    assert "drop an image" in page.inner_text("#status")
    proc, base = serve(text_index(tmp_path_factory), tmp_path / "serve_text.log")
    try:
        page, outside, errors = _page(browser, base)
        page.goto(base + "/")
        page.wait_for_function("document.getElementById('about').textContent.includes('22 figures')")
        assert not page.locator("#drop").is_visible()
        assert page.inner_text("#status") == "Type a query."
        page.fill("#q", "coronavirus pneumonia")
        page.press("#q", "Enter")
        page.wait_for_selector("article.card")
        first = page.locator("article.card").first
        assert "coronavirus" in (first.locator(".title").inner_text() + first.locator(".caption").inner_text()).lower()
        assert outside == [] and errors == [], (outside, errors)
    finally:
        stop(proc)
