"""The evaluation plots and eval.html: written, valid, escaped, offline (headless Chromium)."""

from __future__ import annotations

import base64
import io
import shutil

import pytest
from PIL import Image

from maia_plugins.evaluation.metrics import predictive_scores
from maia_plugins.evaluation.plots import MAIA_REFERENCE, REFERENCE_LABEL, panel_data, write_plots
from maia_plugins.evaluation.report import render_eval_html, report_link

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
PNG = b"\x89PNG\r\n\x1a\n"
SYN, RN, TOY = "synthetic:offline", "timm:resnet152", "toynet"
EVIL = "<script>alert(1)</script>"


def jpeg_b64(color: str, size: int = 96) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="JPEG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def record(backbone, target, index, *, label="zebra", pos=(1.0, 0.9), neg=(0.1, 0.0), **extra):
    pos, neg = list(pos), list(neg)
    out = {
        "backbone": backbone, "target": target, "layer": "mono", "unit": index, "label": label,
        "description": f"fires on {label} & <b>stripes</b>", "status": "completed", "rounds": 3 + index,
        "cost_usd": None, "tools_used": {"text2image": 2, "edit_images": index % 2},
        "predictive": {"prompts": "template", "text2image": "scenes", "seed": 7, "n": len(pos),
                       "positive_prompts": [f"a {label}"] * len(pos), "negative_prompts": ["a chair"] * len(neg),
                       "positive": pos, "negative": neg, **predictive_scores(pos, neg)},
        "ground_truth": None,
    }  # fmt: skip
    out.update(extra)
    return out


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A results root with two backbones' reports, records pointing at them, and the plots."""
    pytest.importorskip("matplotlib")
    root = tmp_path_factory.mktemp("eval")
    outside = tmp_path_factory.mktemp("elsewhere") / "report.html"
    outside.write_text("<p>not under the root</p>")
    for rel in ("claude/syn/mono/0/report.html", "baseline/syn/mono/0/report.html"):
        (root / rel).parent.mkdir(parents=True)
        (root / rel).write_text("<p>report</p>")
    truth = {"mode": "or", "concepts": ["zebra", "tiger"], "matched": ["zebra"], "exact": False, "similarity": 0.74,
             "detection": {"f1": 0.8, "iou": 0.67, "auprc": 0.9, "pearson": 0.7, "n": 30, "n_present": 12}}  # fmt: skip
    thumbs = {"positive": jpeg_b64("red"), "negative": jpeg_b64("blue")}
    records = [
        record("claude", SYN, 0, label=EVIL, ground_truth=truth, thumbnails=thumbs, report="claude/syn/mono/0/report.html"),
        record("baseline", SYN, 0, ground_truth=truth, thumbnails=thumbs, report=str(root / "baseline/syn/mono/0/report.html")),
        record("claude", RN, 1, report=str(outside), thumbnails={"positive": "not base64 ''\"><script>", "negative": None}),
        record("baseline", RN, 1, report="javascript:alert(1)"),
        record("claude", TOY, 2, report="missing/report.html"),
        {"backbone": "baseline", "target": TOY, "layer": "mono", "unit": 2, "status": "failed", "label": None,
         "rounds": None, "predictive": None, "ground_truth": None},
    ]  # fmt: skip
    drawn: dict = {}
    plots = write_plots(records, root / "plots", drawn=drawn)
    page = render_eval_html(records, root / "eval.html", plots=plots)
    return {"root": root, "records": records, "plots": plots, "drawn": drawn, "page": page}


# -- plots -----------------------------------------------------------------------------------


def test_plots_are_valid_pngs(site):
    names = [p.name for p in site["plots"]]
    assert names == ["summary_panel.png", "activation_means.png", "tool_usage.png", "rounds.png"]
    for path in site["plots"]:
        data = path.read_bytes()
        assert data.startswith(PNG) and len(data) > 5_000
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            w, h = img.size
        assert 400 <= w <= 3000 and 300 <= h <= 1500
    with Image.open(site["plots"][0]) as panel, Image.open(site["plots"][1]) as alone:
        assert panel.size[0] > 2 * alone.size[0]  # 1 x 3


def test_reference_points_only_for_matching_targets(site):
    for stem in ("summary_panel", "activation_means"):
        gids = site["drawn"][stem]["gids"]
        refs = sorted(g for g in gids if g.startswith("pos:reference:"))
        assert refs == [f"pos:reference:{SYN}", f"pos:reference:{RN}"]  # none for toynet
        assert f"pos:claude:{TOY}" in gids and f"neg:baseline:{RN}" in gids
        assert REFERENCE_LABEL in site["drawn"][stem]["legend"]
    data = panel_data(site["records"])
    assert data["reference"] == {
        RN: ("ResNet-152", *MAIA_REFERENCE["ResNet-152"]),
        SYN: ("Synthetic", 0.563, 0.228),
    }
    assert data["targets"] == [RN, SYN, TOY]  # MAIA's order, then the rest


def test_no_reference_without_a_matching_target(tmp_path):
    pytest.importorskip("matplotlib")
    drawn: dict = {}
    write_plots([record("claude", "hf:google/vit-base", 0)], tmp_path, drawn=drawn)
    assert not [g for g in drawn["activation_means"]["gids"] if "reference" in g]
    assert REFERENCE_LABEL not in drawn["activation_means"]["legend"]
    assert "pos:claude:hf:google/vit-base" in drawn["activation_means"]["gids"]


def test_tool_usage_and_rounds(site):
    data = panel_data(site["records"])
    # claude: 3 investigations all called text2image; edit_images in unit 1 only.
    assert data["tool_usage"]["claude"] == {
        "text2image": 100.0,
        "edit_images": pytest.approx(100 / 3),
    }
    # The failed unit has no tool count, so it is no investigation here.
    assert data["investigations"] == {"baseline": 2, "claude": 3}
    assert data["tools"] == ["text2image", "edit_images"]
    assert {b: sorted(v) for b, v in data["rounds"].items()} == {
        "baseline": [3.0, 4.0],
        "claude": [3.0, 4.0, 5.0],
    }
    gids = site["drawn"]["tool_usage"]["gids"]
    assert "tool:claude:edit_images" in gids and "tool:baseline:text2image" in gids
    assert sorted(g for g in site["drawn"]["rounds"]["gids"]) == [
        "rounds:baseline",
        "rounds:claude",
    ]


def test_plots_with_missing_values(tmp_path):
    pytest.importorskip("matplotlib")
    lonely = {"backbone": "b", "target": "t", "status": "failed", "predictive": None}
    for records in ([], [lonely]):
        drawn: dict = {}
        paths = write_plots(records, tmp_path / str(len(records)), drawn=drawn)
        assert len(paths) == 4 and all(p.read_bytes().startswith(PNG) for p in paths)
        assert drawn["activation_means"]["gids"] == []


def test_plots_without_matplotlib_warn_and_write_nothing(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import now fails
    with pytest.warns(UserWarning, match="matplotlib is not installed"):
        assert write_plots([record("claude", SYN, 0)], tmp_path) == []
    assert list(tmp_path.iterdir()) == []


# -- eval.html -------------------------------------------------------------------------------


def test_eval_html_escapes_and_embeds(site):
    html = site["page"].read_text()
    assert "<script" not in html and "javascript:" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&amp; &lt;b&gt;stripes&lt;/b&gt;" in html  # the description, as text
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    assert html.count('src="data:image/png;base64,') == 3  # the three panels; not the combined one
    assert html.count('src="data:image/jpeg;base64,') == 4  # two units' positive and negative
    assert html.count("<details><summary>Description") == 5
    assert "Ground truth:</b> or: zebra, tiger" in html
    assert "MAIA paper (GPT-4V)" in html
    assert [p.name for p in site["page"].parent.iterdir() if p.name.startswith(".eval")] == []


def test_report_links_only_under_the_root(site):
    root = site["root"]
    assert report_link("claude/syn/mono/0/report.html", root) == "claude/syn/mono/0/report.html"
    assert (
        report_link(str(root / "baseline/syn/mono/0/report.html"), root)
        == "baseline/syn/mono/0/report.html"
    )
    assert report_link("../elsewhere/report.html", root) is None
    assert report_link("missing/report.html", root) is None
    assert report_link("javascript:alert(1)", root) is None
    assert report_link(None, root) is None
    html = site["page"].read_text()
    assert html.count('">report</a>') == 2


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium: apt-get install chromium")
def test_eval_html_opens_offline_without_errors(site):
    from playwright.sync_api import sync_playwright

    page_path = site["page"]
    requests, errors = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page()
        page.on("request", lambda r: requests.append(r.url))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("dialog", lambda d: errors.append("dialog: " + d.message))
        page.goto(page_path.as_uri())
        page.wait_for_load_state("networkidle")
        info = page.evaluate(
            "() => ({images: [...document.images].map(i => i.naturalWidth),"
            " links: [...document.links].map(a => a.getAttribute('href')),"
            " text: document.body.innerText})"
        )
        browser.close()
    assert requests == [page_path.as_uri()], "eval.html asked the network for something"
    assert errors == []
    assert len(info["images"]) == 7 and all(w > 0 for w in info["images"])  # every image decoded
    assert EVIL in info["text"]  # shown as text, not run
    assert info["links"] == ["baseline/syn/mono/0/report.html", "claude/syn/mono/0/report.html"]
    assert all((site["root"] / link).is_file() for link in info["links"])
