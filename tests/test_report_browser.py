"""The HTML reports open in headless Chromium with no network request and no script error."""

from __future__ import annotations

import shutil

import pytest

from conftest import write_replay
from maia_core.loop.run import RunConfig, run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium: apt-get install chromium"),
]
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def results(tmp_path_factory, thirdparty):
    import os
    import sys

    from maia_core import plugins

    sys.path.insert(0, str(thirdparty))
    plugins.reset_plugins()
    tmp = tmp_path_factory.mktemp("browser")
    turns = write_replay(
        tmp / "t.json",
        [
            "Look at colours <script>alert(1)</script>\n```python\nimgs = [Image.new('RGB', (64, 64), c) for c in ('red', 'blue')]\n"
            "acts, masked = system.call_neuron(imgs)\nfor a, m in zip(acts, masked):\n    tools.display(m, f'act {a:.2f}')\n"
            "print('<a href=\"https://example.com/x.png\">link</a>')\n```",
            "[DESCRIPTION]: colour\n[LABEL]: colour",
        ],
    )
    try:
        run(
            RunConfig(
                target="toynet",
                units="conv2=0,1",
                backbone=f"replay:{turns}",
                results=tmp / "r",
                sandbox="none",
                reporters=["json", "html"],
            )
        )
    finally:
        sys.path.remove(str(thirdparty))
        plugins.reset_plugins()
    assert os.path.isfile(tmp / "r" / "index.html")
    return tmp / "r"


def open_in_chromium(path):
    from playwright.sync_api import sync_playwright

    requests, errors = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page()
        page.on("request", lambda r: requests.append(r.url))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("dialog", lambda d: errors.append("dialog: " + d.message))
        page.goto(path.as_uri())
        page.wait_for_load_state("networkidle")
        info = page.evaluate(
            "() => ({images: [...document.images].map(i => i.naturalWidth), links: [...document.links].map(a => a.getAttribute('href')), text: document.body.innerText})"
        )
        browser.close()
    return requests, errors, info


def test_report_opens_offline_without_errors(results):
    report = results / "replay-t/toynet/conv2/0/report.html"
    requests, errors, info = open_in_chromium(report)
    assert requests == [report.as_uri()], "the report asked the network for something"
    assert errors == []
    # the inline images decoded
    assert len(info["images"]) == 2 and all(w == 64 for w in info["images"])
    assert "<script>alert(1)</script>" in info["text"]  # shown as text, not run
    assert "https://example.com" in info["text"] and info["links"] == []


def test_index_opens_offline_and_links_to_reports(results):
    index = results / "index.html"
    requests, errors, info = open_in_chromium(index)
    assert requests == [index.as_uri()] and errors == []
    assert info["links"] == [
        "replay-t/toynet/conv2/0/report.html",
        "replay-t/toynet/conv2/1/report.html",
    ]
    assert all((results / link).is_file() for link in info["links"])
    assert len(info["images"]) == 2 and all(w > 0 for w in info["images"])  # thumbnails
