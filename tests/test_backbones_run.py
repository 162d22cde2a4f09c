"""Backbones in investigations: the describe/summarize tools through the describer, token and
cost accounting in result.json, --budget-usd, replaying describer calls, and full `maia run`s
against the emulated providers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_providers import FakeProvider, error, reply
from PIL import Image

from conftest import maia, make_photo_folder, write_replay
from maia_core.errors import UserError
from maia_core.loop.describer import Describer
from maia_core.loop.run import RunConfig, make_backbones, run
from maia_core.tools import ToolContext
from maia_core.units import Unit
from maia_plugins.tools.describe import DESCRIBE, SUMMARIZE, SYSTEM, DescribeImages, SummarizeImages

DESCRIPTION = "[HIGHLIGHTED REGIONS]: a red square on grey"
SUMMARY = "All of them show red. [COMMON]: red squares"


def user_text(body) -> str:
    """The text of the newest user turn, in either protocol."""
    content = body["messages"][-1]["content"]
    if isinstance(content, str):
        return content
    return "\n".join(b["text"] for b in content if b["type"] == "text")


def describer_answer(body):
    text = user_text(body)
    if DESCRIBE in text:
        return reply(DESCRIPTION, input_tokens=300, output_tokens=10)
    if SUMMARIZE in text:
        return reply(SUMMARY, input_tokens=500, output_tokens=12)
    return None


def agent_script(turns: list[str], usage: dict | None = None):
    """Describer requests get descriptions; agent requests get the n-th turn."""

    def answer(body):
        described = describer_answer(body)
        if described is not None:
            return described
        n = sum(m["role"] == "assistant" for m in body["messages"])
        return reply(turns[n] if n < len(turns) else turns[-1], **(usage or {}))

    return answer


@pytest.fixture
def keys(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-test")


def test_describe_and_summarize_ask_the_describer_in_maias_format(keys):
    red = Image.new("RGB", (64, 64), "red")
    with FakeProvider("anthropic", lambda body: describer_answer(body)) as fp:
        from maia_core.loop.run import make_backbone

        describer = Describer(make_backbone("claude", {"base_url": fp.base_url}))
        describer.begin(Unit("conv2", 3))
        ctx = ToolContext(target=None, device="cpu", ask_backbone=describer)
        described = DescribeImages(ctx)([red, [red]], ["first", "second"])
        summary = SummarizeImages(ctx)([red, red, red])
        with pytest.raises(ValueError, match="2 image\\(s\\) but 1 title\\(s\\)"):
            DescribeImages(ctx)([red, red], ["only one"])
    assert described == (
        '"first", HIGHLIGHTED REGIONS: a red square on grey\n'
        '"second", HIGHLIGHTED REGIONS: a red square on grey\n'
    )
    assert summary == "[COMMON]: red squares"
    bodies = fp.bodies()
    assert [b["system"][0]["text"] for b in bodies] == [SYSTEM] * 3
    images = [
        sum(block["type"] == "image" for block in b["messages"][0]["content"]) for b in bodies
    ]
    assert images == [1, 1, 3]
    calls = describer.take()
    assert [c.call for c in calls] == [0, 1, 2] and [c.images for c in calls] == [1, 1, 3]
    assert calls[0].reply == DESCRIPTION and calls[2].usage.input_tokens == 500
    assert calls[0].usage.cost_usd == pytest.approx((300 * 2 + 10 * 10) / 1e6)


CODE = (
    "```python\n"
    "import os\n"
    "img = Image.new('RGB', (64, 64), 'red')\n"
    "acts, masked = system.call_neuron([img, img])\n"
    "print('key in worker:', any('API_KEY' in k for k in os.environ))\n"
    "print(tools.describe_images(masked, ['a', 'b']))\n"
    "print(tools.summarize_images(masked))\n"
    "```"
)
FINAL = "[DESCRIPTION]: red squares\n[LABEL]: red"


def toynet_config(tmp_path: Path, **kw) -> RunConfig:
    kw.setdefault("units", "conv2=0")
    kw.setdefault("reporters", ["json"])
    return RunConfig(target="toynet", results=tmp_path / "results", **kw)


def test_describer_usage_is_counted_recorded_and_replayed(with_thirdparty, keys, tmp_path):
    with FakeProvider(
        "anthropic", agent_script([CODE, FINAL], {"input_tokens": 1000, "output_tokens": 50})
    ) as fp:
        [inv] = run(toynet_config(tmp_path, backbone="claude", base_url=fp.base_url))
    r = inv.result
    assert (r.status, r.label, r.rounds) == ("completed", "red", 2)
    # 2 agent calls, 2 descriptions, 1 summary
    assert r.usage.input_tokens == 2 * 1000 + 2 * 300 + 500
    assert r.usage.output_tokens == 2 * 50 + 2 * 10 + 12
    assert r.usage.cost_usd == pytest.approx((3100 * 2 + 132 * 10) / 1e6)
    first = r.rounds_usage[0]
    assert first["describer"]["input_tokens"] == 1100 and first["input_tokens"] == 2100
    saved = json.loads((inv.out_dir / "result.json").read_text())
    assert (
        saved["usage"]["input_tokens"] == 3100
        and saved["usage"]["per_round"][0]["describer"]["output_tokens"] == 32
    )
    result_msg = inv.messages[3]
    assert result_msg.meta["kind"] == "result"
    assert [c["reply"] for c in result_msg.meta["describer"]] == [DESCRIPTION, DESCRIPTION, SUMMARY]
    printed = result_msg.text
    assert (
        "key in worker: False" in printed
        and '"a", HIGHLIGHTED REGIONS: a red square on grey' in printed
    )
    assert "[COMMON]: red squares" in printed

    # Replaying the results folder answers the describer from the record, with no server.
    folder = tmp_path / "results" / "claude" / "toynet"
    [again] = run(toynet_config(tmp_path / "replayed", backbone=f"replay:{folder}", sandbox="none"))
    assert again.result.status == "completed"
    # (in this process, which holds the keys, the first line differs)
    assert again.messages[3].text.splitlines()[1:] == printed.splitlines()[1:]


def test_replay_without_recorded_descriptions_never_answers_with_an_agent_turn(
    with_thirdparty, tmp_path
):
    turns = write_replay(tmp_path / "turns.json", [CODE, FINAL])
    [inv] = run(toynet_config(tmp_path, backbone=f"replay:{turns}", sandbox="none"))
    out = inv.messages[3].text
    assert "BackboneError: the recorded transcript" in out and "has no describer reply 1" in out
    assert "[DESCRIPTION]" not in out and inv.result.status == "completed"


def test_a_backbone_that_fails_for_good_fails_its_unit_and_the_run_goes_on(
    with_thirdparty, keys, tmp_path
):
    # unit 0: two 500s exhaust its attempts; unit 1: answered
    script = [error(500, "overloaded upstream"), error(500, "overloaded upstream"), reply(FINAL)]
    with FakeProvider("anthropic", script) as fp:
        invs = run(
            toynet_config(
                tmp_path,
                units="conv2=0,1",
                backbone="claude",
                base_url=fp.base_url,
                backbone_options={"max_attempts": "2", "retry_base_delay": "0.01"},
                reporters=["json", "html"],
                sandbox="none",
            )
        )
    assert [i.result.status for i in invs] == ["failed", "completed"]
    reason = "claude failed after 2 attempt(s); last error: Anthropic at"
    saved = json.loads((invs[0].out_dir / "result.json").read_text())
    assert (
        saved["status"] == "failed"
        and reason in saved["error"]
        and "500: api_error: overloaded upstream" in saved["error"]
    )
    index = (tmp_path / "results" / "index.html").read_text()
    assert "BackboneError: " + reason in index


def test_budget_stops_starting_new_units(with_thirdparty, keys, tmp_path, capsys):
    # every unit costs $2: one million input tokens at $2 per million
    with FakeProvider(
        "anthropic", lambda body: reply(FINAL, input_tokens=1_000_000, output_tokens=0)
    ) as fp:
        invs = run(
            toynet_config(
                tmp_path,
                units="conv2=0-3",
                backbone="claude",
                base_url=fp.base_url,
                budget_usd=3.0,
                reporters=["json", "console"],
                sandbox="none",
            )
        )
    assert [i.unit.index for i in invs] == [0, 1]
    assert [i.result.usage.cost_usd for i in invs] == [pytest.approx(2.0)] * 2
    done = sorted(int(p.parent.name) for p in (tmp_path / "results").rglob("result.json"))
    assert done == [0, 1]
    out = capsys.readouterr().out
    assert "Budget of $3.00 reached" in out and "2 unit(s) not started" in out


def test_budget_needs_prices_for_agent_and_describer(keys, tmp_path):
    config = RunConfig(
        target="toynet", units="conv2=0", backbone="claude", describer="local-m", budget_usd=1.0
    )
    with pytest.raises(UserError, match="--budget-usd needs a price for m.*--price-file"):
        make_backbones(config)
    prices = tmp_path / "p.json"
    prices.write_text(json.dumps({"m": {"input": 0, "output": 0}}))
    config.price_file = str(prices)
    agent, describer = make_backbones(config)
    assert (
        agent.model == "claude-sonnet-5-5"
        and describer.model == "m"
        and describer.prices.lookup("m")
    )
    agent.close()
    describer.close()


# -- `maia run` as users run it ------------------------------------------------------------------

PHOTOS = (
    "```python\n"
    "for act, img in tools.dataset_exemplars(system, k=3):\n"
    "    tools.display(img, f'exemplar {act:.3f}')\n"
    "rng = np.random.default_rng(0)\n"
    "imgs = [Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)) for _ in range(2)]\n"
    "acts, masked = system.call_neuron(imgs)\n"
    "for a, m in zip(acts, masked):\n"
    "    tools.display(m, f'activation {a:.3f}')\n"
    "print(tools.describe_images(masked, ['chelsea', 'coffee']))\n"
    "print(tools.summarize_images(masked))\n"
    "```"
)
PHOTOS_FINAL = "[DESCRIPTION]: Fur and foam textures.\n[LABEL]: soft textures"


def unit_dir(results: Path, backbone: str, unit: int = 0) -> Path:
    return results / backbone / "efficientnet_lite0" / "blocks.6" / str(unit)


@pytest.fixture(scope="module")
def exemplars(tmp_path_factory, photos):
    """A small exemplar store for blocks.6, so the runs use the exemplar tool too."""
    from maia_plugins.tools.dataset_exemplars import compute_store

    tmp = tmp_path_factory.mktemp("exemplars")
    folder = make_photo_folder(tmp / "photos", photos, n=8, broken=False)
    compute_store(
        target="efficientnet_lite0",
        dataset=f"imagefolder:{folder}",
        layers="blocks.6",
        root=tmp / "store",
        workers=0,
        device="cpu",
        quiet=True,
    )
    return tmp / "store"


@pytest.fixture(scope="module")
def claude_run(tmp_path_factory, exemplars):
    results = tmp_path_factory.mktemp("claude") / "results"
    script = agent_script([PHOTOS, PHOTOS_FINAL], {"input_tokens": 2000, "output_tokens": 100})
    with FakeProvider("anthropic", script) as fp:
        out = maia(
            "run",
            "--target",
            "efficientnet_lite0",
            "--units",
            "blocks.6=0",
            "--backbone",
            "claude",
            "--base-url",
            fp.base_url,
            "--exemplars",
            str(exemplars),
            "--results",
            str(results),
            env={"ANTHROPIC_API_KEY": "sk-ant-test"},
        )
    return results, out, fp


def test_full_run_with_claude_writes_reports_with_tokens_and_cost(claude_run):
    results, out, fp = claude_run
    assert out.returncode == 0, out.stderr
    d = unit_dir(results, "claude")
    for name in ("report.html", "history.json", "result.json", "description.txt", "label.txt"):
        assert (d / name).is_file(), name
    result = json.loads((d / "result.json").read_text())
    assert result["status"] == "completed" and result["label"] == "soft textures"
    usage = result["usage"]
    assert (
        usage["input_tokens"] == 2 * 2000 + 2 * 300 + 500 and usage["output_tokens"] == 2 * 100 + 32
    )
    assert usage["cost_usd"] == pytest.approx((5100 * 2 + 232 * 10) / 1e6)
    assert [r["round"] for r in usage["per_round"]] == [1, 2] and "describer" in usage["per_round"][
        0
    ]
    agent = [b for b in fp.bodies() if describer_answer(b) is None]
    assert len(agent) == 2 and all(b["model"] == "claude-sonnet-5-5" for b in agent)
    assert agent[0]["system"][0]["text"].startswith("You are an interpretability researcher")
    assert (
        "tools.describe_images(images: list, titles: list[str] | None = None) -> str"
        in agent[0]["system"][0]["text"]
    )
    # the displayed masks reached the agent as image blocks
    assert sum(block["type"] == "image" for block in agent[1]["messages"][-1]["content"]) == 3 + 2
    assert result["threshold"].startswith("dataset threshold")
    history = json.loads((d / "history.json").read_text())
    result_text = "".join(p.get("text", "") for p in history["messages"][3]["parts"])
    assert '"chelsea", HIGHLIGHTED REGIONS: a red square on grey' in result_text
    assert "maia run summary" in out.stdout and f"{usage['cost_usd']:.4f}" in out.stdout


def test_replaying_a_claude_run_reproduces_it_offline(claude_run, exemplars, tmp_path):
    results, out, _ = claude_run
    assert out.returncode == 0, out.stderr
    again = maia(
        "run",
        "--target",
        "efficientnet_lite0",
        "--units",
        "blocks.6=0",
        "--backbone",
        f"replay:{results / 'claude' / 'efficientnet_lite0'}",
        "--exemplars",
        str(exemplars),
        "--results",
        str(tmp_path),
        "--reporter",
        "json",
    )
    assert again.returncode == 0, again.stderr
    original = json.loads((unit_dir(results, "claude") / "history.json").read_text())
    # each recording replays into its own folder, named after it
    replayed = json.loads(
        (unit_dir(tmp_path, "replay-claude-efficientnet_lite0") / "history.json").read_text()
    )
    texts = [[p.get("text") for p in m["parts"]] for m in original["messages"][2:]]
    assert texts == [[p.get("text") for p in m["parts"]] for m in replayed["messages"][2:]]


def test_full_run_with_openai_and_a_local_describer_within_a_budget(exemplars, tmp_path):
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"qwen3-vl": {"input": 0, "output": 0}}))
    script = agent_script([PHOTOS, PHOTOS_FINAL], {"input_tokens": 4000, "output_tokens": 200})
    with FakeProvider("openai", script) as agent, FakeProvider("openai", describer_answer) as local:
        out = maia(
            "run",
            "--target",
            "efficientnet_lite0",
            "--units",
            "blocks.6=0,1",
            "--backbone",
            "gpt-4o",
            "--base-url",
            agent.base_url,
            "--describer",
            "local-qwen3-vl",
            "--describer-option",
            f"base_url={local.base_url}",
            "--describer-option",
            "merge_system=true",
            "--budget-usd",
            "0.01",
            "--price-file",
            str(prices),
            "--exemplars",
            str(exemplars),
            "--results",
            str(tmp_path / "r"),
            env={"OPENAI_API_KEY": "sk-openai-test"},
        )
    assert out.returncode == 0, out.stderr
    d = unit_dir(tmp_path / "r", "gpt-4o")
    result = json.loads((d / "result.json").read_text())
    assert result["status"] == "completed" and result["describer"] == "local-qwen3-vl"
    # agent: 2 x (4000 in, 200 out) at $2.50/$10; describer: priced at 0 by the price file
    assert result["usage"]["cost_usd"] == pytest.approx((8000 * 2.5 + 400 * 10) / 1e6)
    assert result["usage"]["input_tokens"] == 8000 + 2 * 300 + 500
    assert not unit_dir(tmp_path / "r", "gpt-4o", 1).exists()
    assert "Budget of $0.01 reached" in out.stdout and "1 unit(s) not started" in out.stdout
    assert len(local.requests) == 3 and all(b["model"] == "qwen3-vl" for b in local.bodies())
    assert all(
        b["messages"][0]["role"] == "user"
        and b["messages"][0]["content"][0]["text"].startswith(SYSTEM)
        for b in local.bodies()
    )
    assert all(
        b["model"] == "gpt-4o" and b["messages"][0]["role"] == "system" for b in agent.bodies()
    )


def test_a_rejected_key_stops_the_run_with_one_line_and_exit_2(tmp_path):
    with FakeProvider("anthropic", [error(401, "invalid x-api-key", "authentication_error")]) as fp:
        out = maia(
            "run",
            "--target",
            "efficientnet_lite0",
            "--units",
            "blocks.6=0",
            "--backbone",
            "claude",
            "--base-url",
            fp.base_url,
            "--results",
            str(tmp_path),
            env={"ANTHROPIC_API_KEY": "sk-wrong"},
        )
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr
    assert (
        "rejected the API key (401: authentication_error: invalid x-api-key). Check the key in ANTHROPIC_API_KEY."
        in lines[0]
    )
