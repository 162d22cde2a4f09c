"""Tasks as plugins: reliance, compare and a third party's, their answers, reports and index,
self-reflection, the baseline on each, and the same loop with Claude and OpenAI backbones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fake_providers import FakeProvider, reply

from conftest import FIXTURES, maia, write_replay
from maia_core.loop.run import RunConfig, run

GRASSNET = '''
import math
import torch


class GrassReliance(torch.nn.Module):
    """Class 0 ("zebra") scores 0.9 when the image's corners are grass (green and textured),
    and 0.9 x 0.1 otherwise: a planted reliance on the background."""

    def forward(self, x):
        c = 10
        corners = torch.cat(
            [x[:, :, :c, :c], x[:, :, :c, -c:], x[:, :, -c:, :c], x[:, :, -c:, -c:]], dim=2
        ).flatten(2)
        r, g, b = corners[:, 0], corners[:, 1], corners[:, 2]
        grass = ((g.mean(1) - torch.maximum(r.mean(1), b.mean(1))) > 0.05) & (g.std(1) > 0.04)
        high = torch.tensor([math.log(0.9), math.log(0.1)])
        low = torch.tensor([math.log(0.09), math.log(0.91)])
        return torch.where(grass[:, None], high, low)


def make():
    return {
        "model": GrassReliance(),
        "preprocess": {"size": 64, "crop_pct": 1.0, "mean": (0, 0, 0), "std": (1, 1, 1)},
        "class_names": ["zebra", "teapot"],
    }
'''


@pytest.fixture(scope="module")
def grassnet(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("models") / "grassnet.py"
    path.write_text(GRASSNET)
    return f"python:{path}:make"


# -- reliance, replayed, with reflection, through the real command -------------------------------


@pytest.fixture(scope="module")
def reliance_run(tmp_path_factory):
    """reliance:offline's zebra-on-grass class, replayed: a malformed answer, a wrong one that
    reflection's first check fails, more experiments, the right one."""
    out_dir = tmp_path_factory.mktemp("reliance")
    out = maia(
        "run", "--target", "reliance:offline", "--units", "output=8", "--task", "reliance",
        "--backbone", f"replay:{FIXTURES / 'replay_reliance.json'}", "--reflect", "2",
        "--prompts", "template", "--reflect-k", "6", "--results", str(out_dir), "--device", "cpu",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    unit = out_dir / "replay-replay_reliance/reliance-offline/reliance/output/8"
    return out_dir, unit


def test_a_reliance_answer_is_parsed_into_claims_and_written(reliance_run):
    _, unit = reliance_run
    result = json.loads((unit / "result.json").read_text())
    assert result["task"] == "reliance" and result["units"] == [{"layer": "output", "unit": 8}]
    assert result["status"] == "completed" and result["label"] == "zebra on grass"
    [claim] = result["answer"]["claims"]
    assert (claim["category"], claim["high"], claim["low"]) == ("background", "grass", "gravel")
    assert claim["scores"] == [1.0, 0.1] and result["answer"]["combine"] == "single"
    # the planted truth, read after the answer
    assert result["ground_truth"]["category"] == "background"
    assert result["ground_truth"]["value"] == "grass"


def test_a_malformed_reliance_answer_is_sent_back_with_what_is_missing(reliance_run):
    _, unit = reliance_run
    messages = json.loads((unit / "history.json").read_text())["messages"]
    [back] = [m for m in messages if m["meta"].get("kind") == "incomplete_answer"]
    text = back["parts"][0]["text"]
    assert "the color claim has no 'low' and no 'scores'" in text
    assert "[RELIANCE]" in text and "category: <category>" in text  # the form, again
    # the task's own prompt, and system's SAIA-shaped call_classifier
    assert "auditing one class of an image classifier" in messages[0]["parts"][0]["text"]
    assert (
        "system.call_classifier(images: list[Any]) -> tuple[list[float], list[Any]]"
        in (messages[0]["parts"][0]["text"])
    )
    assert "('zebra'" in messages[1]["parts"][0]["text"]


def test_reflection_checks_the_wrong_answer_and_keeps_the_predictive_one(reliance_run):
    _, unit = reliance_run
    result = json.loads((unit / "result.json").read_text())
    reflection = result["reflection"]
    assert (reflection["rounds"], reflection["k"], reflection["prompts"]) == (2, 6, "template")
    first, second = reflection["cycles"]
    # the wrong answer's check: red zebras predicted high, other colours low; all score 0.1
    assert first["label"] == "red zebras" and first["high_prompts"][0] == "a red zebra"
    assert first["high_scores"] == [pytest.approx(0.1)] * 6 and first["passed"] is False
    assert first["predictiveness"] < 0.9
    assert second["label"] == "zebra on grass" and second["passed"] is True
    assert second["high_prompts"] == ["a zebra on grass"] * 6
    assert min(second["high_scores"]) == 1.0 and max(second["low_scores"]) == pytest.approx(0.1)
    assert second["predictiveness"] == 1.0 and reflection["kept"] == 2
    assert len(second["thumbnails"]) == 12
    # the agent got the check: prompts, images, each score and side, the means
    messages = json.loads((unit / "history.json").read_text())["messages"]
    [check] = [m for m in messages if m["meta"].get("kind") == "reflection"]
    text = "\n".join(p.get("text", "") for p in check["parts"])
    assert "Self-check 1" in text and "mean score 0.1" in text
    assert "predicted HIGH: 'a red zebra': score 0.1" in text
    assert sum(p["type"] == "image" for p in check["parts"]) == 12
    # and never the truth
    transcript = json.dumps(messages)
    assert "relying on" not in transcript and "planted" not in transcript


def test_the_report_and_index_show_claims_and_reflection(reliance_run):
    out_dir, unit = reliance_run
    report = (unit / "report.html").read_text()
    assert '<table class="claims">' in report and "<td>background</td><td>grass</td>" in report
    assert '<div class="reflection">' in report and "Predictiveness" in report
    assert report.count('src="data:image/jpeg;base64,') >= 24  # both checks' images
    index = (out_dir / "index.html").read_text()
    assert "<h2>" not in index or "Task: reliance" in index
    assert "<th>Reliance</th>" in index and "background: grass &gt; gravel" in index


@pytest.mark.browser
@pytest.mark.skipif(
    not (shutil.which("chromium") or shutil.which("chromium-browser")), reason="needs Chromium"
)
def test_the_reliance_report_opens_offline_without_errors(reliance_run):
    from test_report_browser import open_in_chromium

    out_dir, unit = reliance_run
    for page in (unit / "report.html", out_dir / "index.html"):
        requests, errors, info = open_in_chromium(page)
        assert requests == [page.as_uri()] and errors == []
        assert all(w > 0 for w in info["images"])


# -- compare and the third party's task, in this process ----------------------------------------


def test_compare_measures_both_units_and_parses_its_answer(with_thirdparty, tmp_path):
    config = RunConfig(
        target="toynet",
        units="conv2=0,1",
        task="compare",
        backbone=f"replay:{FIXTURES / 'replay_compare.json'}",
        results=tmp_path / "r",
        sandbox="none",
        reporters=["json", "html"],
    )
    [inv] = run(config)
    assert inv.result.status == "completed" and inv.name == "conv2=0+1"
    out = tmp_path / "r/replay-replay_compare/toynet/compare/conv2/0+1"
    result = json.loads((out / "result.json").read_text())
    assert result["units"] == [{"layer": "conv2", "unit": 0}, {"layer": "conv2", "unit": 1}]
    assert result["answer"]["labels"] == ["red", "blue"]
    assert result["answer"]["difference"].startswith("Unit 1 fires more for red")
    messages = inv.messages
    first = messages[3].text
    assert "red: unit 1" in first and "unit 2" in first and len(messages[3].images) == 2
    # a describe answer to the compare task is sent back
    assert messages[5].meta["kind"] == "incomplete_answer"
    assert "[DIFFERENCE], [LABEL 1] and [LABEL 2], not [DESCRIPTION]" in messages[5].text
    assert "unit 1 (unit 0 of layer conv2) and unit 2 (unit 1 of layer conv2)" in messages[1].text


def test_a_third_party_task_runs_end_to_end(thirdparty_env, tmp_path):
    turns = write_replay(
        tmp_path / "t.json",
        [
            "```python\nacts, _ = system.call_neuron([Image.new('RGB', (64, 64), c) for c in ('white', 'black')])\nprint(acts)\n```",
            "[POLARITY]: sideways\n[LABEL]: odd",
            "[POLARITY]: bright\n[LABEL]: bright images",
            "[POLARITY]: dark\n[LABEL]: dark images",
        ],
    )
    out = maia(
        "run", "-t", "toynet", "-u", "conv2=0", "--task", "polarity", "-b", f"replay:{turns}",
        "--results", str(tmp_path / "r"), "--reflect", "1", "--reflect-k", "2",
        env=thirdparty_env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    listed = maia("plugins", env=thirdparty_env).stdout
    assert "polarity" in listed
    unit = tmp_path / "r/replay-t/toynet/polarity/conv2/0"
    result = json.loads((unit / "result.json").read_text())
    history = json.loads((unit / "history.json").read_text())["messages"]
    white, black = json.loads(history[3]["parts"][0]["text"])
    # reflection keeps the answer the unit's measured preference bears out
    expected = "bright" if white > black else "dark"
    assert result["task"] == "polarity" and result["answer"] == {"polarity": expected}
    cycles = result["reflection"]["cycles"]
    assert cycles[0]["high_prompts"] == ["a plain white background"] * 2
    assert len(cycles) == (1 if expected == "bright" else 2)
    assert "[POLARITY] is bright or dark, not 'sideways'." in json.dumps(history)
    index = (tmp_path / "r/index.html").read_text()
    assert "<th>Polarity</th>" in index and f"<td>{expected}</td>" in index


# -- the baseline does every task -----------------------------------------------------------------


def test_the_baseline_finds_a_planted_background(grassnet, tmp_path):
    [inv] = run(
        RunConfig(
            target=grassnet,
            units="output=0",
            task="reliance",
            backbone="baseline",
            results=tmp_path / "r",
            sandbox="none",
            reporters=["json"],
        )
    )
    assert inv.result.status == "completed", inv.result.error
    # The planted attribute first. (This model reads grass by its green texture, so a
    # greyscale lawn fails too: the baseline may add "and in colour", which is true of it.)
    claim = inv.result.answer["claims"][0]
    assert (claim["category"], claim["high"]) == ("background", "grass")
    assert claim["scores"][0] == pytest.approx(0.9) and claim["scores"][1] < 0.1
    text = "\n".join(m.text for m in inv.messages if m.role == "assistant")
    assert "tools.edit_images" in text  # confirmed on the same images
    assert "change the background to" in text


# -- call_classifier on any target with class outputs ---------------------------------------------


def test_call_classifier_scores_the_class_on_any_classifier(grassnet, photos):
    from maia_core.execution.host import ModelHost
    from maia_core.execution.specs import WorldSpec
    from maia_core.task import Subject
    from maia_core.units import Unit

    images = [photos["chelsea"], photos["coffee"]]
    for target, unit in ((grassnet, 0), ("efficientnet_lite0", 281)):
        host = ModelHost(WorldSpec(target=target, device="cpu", task="reliance", tools=[]))
        try:
            session = host.open(Subject.of(Unit("output", unit)), None)
            scores, seen = session.system.call_classifier(images)
            own = host.target.system(Unit("output", unit))
            probs, tops = own.call_classifier(images)
            assert scores == pytest.approx(probs) and len(seen) == 2
            assert session.system.top_classes(images) == tops
            assert session.setup().attrs["class_name"] == own.class_name
        finally:
            host.close()
    # chelsea is a cat: the class's score is high among lite0's top classes for it
    assert own.class_name == "tabby" and "tabby" in [name for name, _ in tops[0][:3]]


def test_call_classifier_on_open_clip_zero_shot_heads_and_transformers_heads(tmp_path, photos):
    import torch
    import transformers as tf

    from maia_core.execution.host import ModelHost
    from maia_core.execution.specs import WorldSpec
    from maia_core.task import Subject
    from maia_core.units import Unit

    torch.manual_seed(0)
    folder = tmp_path / "convnext"
    config = tf.ConvNextConfig(
        hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=3,
        id2label={0: "zebra", 1: "horse", 2: "camel"},
    )  # fmt: skip
    tf.ConvNextForImageClassification(config).save_pretrained(folder)
    tf.ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=1.0).save_pretrained(folder)
    images = [photos["chelsea"], photos["coffee"], photos["rocket"]]
    targets = [
        (f"hf:{folder}", {}),
        ("open_clip:RN50", {"pretrained": "false", "labels": "zebra,horse,camel"}),
    ]
    for target, options in targets:
        spec = WorldSpec(target=target, target_options=options, device="cpu", task="reliance")
        host = ModelHost(spec)
        try:
            per_class = []
            for unit in range(3):
                session = host.open(Subject.of(Unit("output", unit)), None)
                scores, seen = session.system.call_classifier(images)
                assert len(seen) == 3 and all(0 <= s <= 1 for s in scores)
                per_class.append(scores)
            assert session.setup().attrs["class_name"] == "camel"
            # each image's scores over the classes are its softmax probabilities
            for i in range(3):
                assert sum(c[i] for c in per_class) == pytest.approx(1.0, abs=1e-4)
            assert "layer4" in host.layer_infos() or target.startswith("hf:")
        finally:
            host.close()


def test_reliance_on_a_unit_that_is_not_a_class_is_one_line(grassnet, tmp_path, with_thirdparty):
    from maia_core.errors import UserError

    bad = [
        (grassnet, "output=5", "Unit 5 is out of range for layer 'output' of"),
        ("toynet", "conv2=0", "--task reliance studies a classifier's classes, and layer 'conv2'"),
    ]
    for target, units, message in bad:
        config = RunConfig(
            target=target,
            units=units,
            task="reliance",
            backbone="baseline",
            results=tmp_path,
            sandbox="none",
        )
        with pytest.raises(UserError, match=message) as caught:
            run(config)
        assert "\n" not in caught.value.message


# -- bad input, before anything loads -------------------------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [
        ({"task": "reliance", "task_options": {"x": "1"}}, "Task reliance has no option 'x'"),
        ({"reflect": -1}, "--reflect must be at least 0"),
        ({"reflect": 21}, "--reflect must be at most 20"),
        ({"reflect": 1, "reflect_threshold": 0.0}, "--reflect-threshold must be a share"),
        ({"reflect": 1, "reflect_threshold": float("nan")}, "--reflect-threshold must be a share"),
        ({"reflect": 1, "reflect_k": 0}, "--reflect-k must be at least 1"),
        ({"reflect": 1, "prompts": "gpt"}, "--prompts must be template"),
        ({"evaluator": "claude"}, "add --reflect N"),
        ({"reflect": 1, "prompts": "llm"}, "--prompts llm needs an evaluator that writes"),
        ({"pairs": "PAIRS", "units": None}, "--pairs gives pairs of units, and --task describe"),
        ({"pairs": "PAIRS", "task": "compare"}, "--pairs FILE names the units to study"),
    ],
)
def test_bad_task_options_are_one_line_errors_before_anything_loads(
    options, message, tmp_path, with_thirdparty
):
    from maia_core.errors import UserError

    pairs = tmp_path / "pairs.json"
    pairs.write_text('[["conv2=0", "conv2=1"]]')
    options = {k: str(pairs) if v == "PAIRS" else v for k, v in options.items()}
    config = {"units": "conv2=0", **options}
    with pytest.raises(UserError, match=message.replace("(", r"\(")) as caught:
        run(RunConfig(target="toynet", backbone="baseline", results=tmp_path / "r", **config))
    assert "\n" not in caught.value.message


def test_an_unknown_task_is_one_line_and_exit_2(tmp_path):
    out = maia("run", "-t", "toynet", "-u", "conv2=0", "-b", "baseline", "--task", "nope")
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "Unknown task 'nope' for --task. Known: compare, describe, reliance" in out.stderr


def test_pairs_files_and_odd_selections_are_one_line_errors(with_thirdparty, tmp_path):
    from maia_core.errors import UserError

    cases = [
        ("[[1, 2]]", "item 0 is not a pair of units"),
        ('[["conv2=0", "conv2"]]', "'conv2' is not a unit LAYER=INDEX"),
        ('[["conv2=0", "conv2=0"]]', "pairs conv2=0 with itself"),
        ("{}", "must be a non-empty JSON list"),
        ('[["conv2=0", "conv2=9"]]', "Unit 9 is out of range for layer 'conv2'"),
    ]
    path = tmp_path / "p.json"
    for text, message in cases:
        path.write_text(text)
        config = RunConfig(
            target="toynet",
            pairs=str(path),
            task="compare",
            backbone="baseline",
            results=tmp_path / "r",
            sandbox="none",
        )
        with pytest.raises(UserError, match=message):
            run(config)
    with pytest.raises(UserError, match="select a multiple of 2"):
        run(
            RunConfig(
                target="toynet",
                units="conv2=0-2",
                task="compare",
                backbone="baseline",
                results=tmp_path / "r",
                sandbox="none",
            )
        )


# -- the same loop with Claude- and OpenAI-style backbones ----------------------------------------


def _user_text(body) -> str:
    content = body["messages"][-1]["content"]
    if isinstance(content, str):
        return content
    return "\n".join(b.get("text", "") for b in content if b.get("type") == "text")


RELIANCE_CODE = (
    "```python\nimages = tools.text2image(['a zebra on grass', 'a zebra on gravel'])\n"
    "scores, seen = system.call_classifier(images)\nprint([round(s, 2) for s in scores])\n```"
)
RELIANCE_FINAL = (
    "[BIAS DESCRIPTION]: Zebras on grass score 0.9, on gravel 0.09.\n[BIAS LABEL]: grass\n"
    "[RELIANCE]:\ncategory: background; high: grass; low: gravel; scores: 0.9 vs 0.09"
)


def test_reliance_with_claude_and_llm_reflection(grassnet, tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")

    def answer(body):
        text = _user_text(body)
        if "To test the answer, write 3 prompts" in text:
            assert "[RELIANCE]:\ncategory: background; high: grass; low: gravel" in text
            return reply(
                "[HIGH]\na zebra on grass\na small zebra on grass\n- a zebra on grass\n"
                "[LOW]\na zebra on sand\na zebra in space\na zebra on a plain gray background",
                input_tokens=200,
                output_tokens=30,
            )
        n = sum(m["role"] == "assistant" for m in body["messages"])
        return reply([RELIANCE_CODE, RELIANCE_FINAL][min(n, 1)])

    with FakeProvider("anthropic", answer) as fp:
        [inv] = run(
            RunConfig(
                target=grassnet,
                units="output=0",
                task="reliance",
                backbone="claude",
                base_url=fp.base_url,
                reflect=1,
                reflect_k=3,
                results=tmp_path / "r",
                sandbox="none",
                reporters=["json"],
            )
        )
    r = inv.result
    assert r.status == "completed" and r.answer["claims"][0]["high"] == "grass"
    [cycle] = r.reflection["cycles"]
    assert r.reflection["prompts"] == "llm" and r.reflection["evaluator"] == "claude"
    assert cycle["prompts"] == "llm" and cycle["high_prompts"][2] == "a zebra on grass"
    assert cycle["high_scores"] == [pytest.approx(0.9)] * 3 and cycle["predictiveness"] == 1.0
    assert cycle["evaluator_usage"]["input_tokens"] == 200
    assert r.usage.input_tokens == 2 * 100 + 200  # two agent turns, one evaluator request
    system = fp.bodies()[0]["system"][0]["text"]
    assert "[BIAS DESCRIPTION]" in system and "system.call_classifier" in system


def test_compare_with_an_openai_backbone(with_thirdparty, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-test")
    turns = json.loads((FIXTURES / "replay_compare.json").read_text())

    def answer(body):
        n = sum(m["role"] == "assistant" for m in body["messages"])
        return reply(turns[min(n, len(turns) - 1)])

    pairs = tmp_path / "pairs.json"
    pairs.write_text('[["conv2=1", "conv2=3"]]')
    with FakeProvider("openai", answer) as fp:
        [inv] = run(
            RunConfig(
                target="toynet",
                pairs=str(pairs),
                task="compare",
                backbone="gpt-4o",
                base_url=fp.base_url,
                results=tmp_path / "r",
                sandbox="none",
                reporters=["json", "html"],
            )
        )
    assert inv.result.status == "completed" and inv.result.answer["labels"] == ["red", "blue"]
    assert inv.out_dir == tmp_path / "r/gpt-4o/toynet/compare/conv2/1+3"
    assert "call_neurons" in fp.bodies()[0]["messages"][0]["content"]
    assert (
        "<td>unit 2</td><td>conv2=3</td><td>blue</td>" in (inv.out_dir / "report.html").read_text()
    )


def test_a_completed_compare_unit_is_skipped_on_the_next_run(with_thirdparty, tmp_path, capsys):
    """Resuming reads the task's own answer back from the history."""
    config = RunConfig(
        target="toynet",
        units="conv2=0,1",
        task="compare",
        backbone=f"replay:{FIXTURES / 'replay_compare.json'}",
        results=tmp_path / "r",
        sandbox="none",
        reporters=["json", "html"],
    )
    run(config)
    (tmp_path / "r/replay-replay_compare/toynet/compare/conv2/0+1/report.html").unlink()
    [inv] = run(config)
    assert inv.skip_reason == "completed" and "studying it again" not in capsys.readouterr().err
    report = tmp_path / "r/replay-replay_compare/toynet/compare/conv2/0+1/report.html"
    assert "<td>unit 1</td><td>conv2=0</td><td>red</td>" in report.read_text()  # rebuilt


# -- maia eval scores the new tasks ---------------------------------------------------------------


def test_eval_scores_reliance_claims_against_the_planted_truth(reliance_run, tmp_path):
    import csv

    from maia_plugins.evaluation.commands import run_eval

    out_dir, unit = reliance_run
    records = run_eval([out_dir], out=tmp_path / "e", n=4, device="cpu", quiet=True)
    [record] = records
    truth = record["ground_truth"]
    assert (record["task"], record["reflect"]) == ("reliance", 2)
    assert truth["category_right"] and truth["value_right"] and truth["exact"]
    assert (truth["category"], truth["value"], truth["alpha"]) == ("background", "grass", 0.9)
    # held-out renders from the claim, and from the truth (the ceiling): zebras on grass
    # against zebras elsewhere, scored by the class
    predictive = record["predictive"]
    assert predictive["positive_prompts"] == ["a zebra on grass"] * 4
    assert predictive["negative_prompts"][0] == "a zebra on gravel"
    assert predictive["predictiveness"] == 1.0 and truth["ceiling"] == 1.0
    [row] = list(csv.DictReader((tmp_path / "e/eval.csv").open()))
    assert (row["task"], row["reflect"], row["category_pct"], row["value_pct"]) == (
        "reliance",
        "2",
        "100.0",
        "100.0",
    )
    page = (tmp_path / "e/eval.html").read_text()
    assert "<th>Category</th>" in page and "<th>Ceiling (truth)</th>" in page
    assert page.count("+reflect 2") >= 2  # the table's backbone and the unit's card
    assert (tmp_path / "e/plots/task_scores.png").is_file()


def test_eval_of_compare_asks_whether_the_difference_names_what_differs(tmp_path):
    from maia_plugins.evaluation.commands import run_eval

    pairs = tmp_path / "pairs.json"
    # zebra vs zebra AND grass (differ: grass); duck vs duck AND blue (differ: blue)
    pairs.write_text('[["mono=0", "and=0"], ["mono=2", "and=2"]]')
    turns = write_replay(
        tmp_path / "t.json",
        ["[DIFFERENCE]: Unit 2 needs grass as well; unit 1 does not.\n[LABEL 1]: zebra\n"
         "[LABEL 2]: zebra and grass"],
    )  # fmt: skip
    run(
        RunConfig(
            target="synthetic:offline",
            pairs=str(pairs),
            task="compare",
            backbone=f"replay:{turns}",
            results=tmp_path / "r",
            sandbox="none",
            reporters=["json"],
            device="cpu",
        )
    )
    records = run_eval([tmp_path / "r"], out=tmp_path / "e", n=3, device="cpu", quiet=True)
    by_pair = {tuple(u["unit"] for u in r["units"]): r["ground_truth"] for r in records}
    assert by_pair[(0, 0)]["differ"] == ["grass"] and by_pair[(0, 0)]["names_difference"]
    assert by_pair[(0, 0)]["exact"] is True  # both labels name their unit's concepts
    assert by_pair[(2, 2)]["differ"] == ["blue"] and not by_pair[(2, 2)]["names_difference"]
    assert "50.0" in (tmp_path / "e/eval.csv").read_text()


def test_bench_runs_each_task_s_set_once_per_reflect(tmp_path):
    """maia bench --task: the task's default set, and each --reflect a run of its own."""
    from maia_core.errors import UserError
    from maia_plugins.evaluation.commands import check_bench

    def configs(**kw):
        return check_bench(
            ["baseline"], evaluator=None, n=3, results=tmp_path / "b", max_rounds=5, **kw
        )

    reliance = configs(task="reliance", reflect=[0, 2])
    assert [(c.target, c.units, c.task, c.reflect) for c in reliance] == [
        ("reliance:offline", "output", "reliance", 0),
        ("reliance:offline", "output", "reliance", 2),
    ]
    assert [c.results for c in reliance] == [tmp_path / "b/reflect-0", tmp_path / "b/reflect-2"]
    [describe] = configs()
    assert (describe.target, describe.units, describe.results) == (
        "synthetic:offline",
        "mono:or:and",
        tmp_path / "b",
    )
    [compare] = configs(task="compare")
    pairs = json.loads(Path(compare.pairs).read_text())
    # every OR and AND neuron beside the single-concept neuron of one of its concepts
    assert ["mono=0", "and=0"] in pairs and [
        "mono=0",
        "or=0",
    ] in pairs  # zebra | zebra_grass, zebra_tiger
    assert all(a.startswith("mono=") and b.split("=")[0] in ("and", "or") for a, b in pairs)
    with pytest.raises(UserError, match="Unknown task 'nope'"):
        configs(task="nope")
    with pytest.raises(UserError, match="--reflect must be at most 20"):
        configs(task="reliance", reflect=[0, 99])
    with pytest.raises(UserError, match="pairs a synthetic set's neurons"):
        configs(task="compare", target="reliance:offline")


def test_the_reliance_baseline_runs_a_failed_experiment_again_once():
    """A model host that had to restart fails the cell in flight: the baseline runs the same
    experiment again, once, then answers with what it has."""
    from maia_core.transcript import Message
    from maia_plugins.backbones.baseline_reliance import RelianceBaseline

    baseline = RelianceBaseline(["ball", "drum", "kite"])
    messages = [Message.of("system", "api"), Message.of("user", "Audit class 0", kind="task")]
    sweep = baseline.reply(messages)
    assert "RSWEEP" in sweep and "a {obj} and a ball and a drum" in sweep
    failed = Message.of("user", "HostError: the model host could not answer", kind="result")
    messages += [Message.of("assistant", sweep), failed]
    assert baseline.reply(messages) == sweep
    messages += [Message.of("assistant", sweep), failed]
    answer = baseline.reply(messages)
    assert "[RELIANCE]:\ncategory: none" in answer


CONSTANT_ANSWER = (
    "[BIAS DESCRIPTION]: The class scores higher on grass than on gravel, whatever the class.\n"
    "[BIAS LABEL]: on grass\n[RELIANCE]:\n"
    "category: background; high: grass; low: gravel; scores: 0.9 vs 0.1"
)


def test_the_baseline_gets_planted_categories_and_beats_a_constant_answer(tmp_path):
    """A small subset of reliance:offline (alpha 0.9, five categories: colour, background,
    count, orientation, quality) through ``maia bench --task reliance``: the baseline names
    the planted category on at least 80% of them, and a replayed constant answer ("background:
    grass" for every class, the set's commonest value) does worse. The full set runs in
    benchmarks/bench_tasks.py."""
    import csv

    constant = tmp_path / "constant.json"
    constant.write_text(json.dumps([CONSTANT_ANSWER]))
    out = maia(
        "bench", "--task", "reliance", "-b", "baseline", "-b", f"replay:{constant}",
        "--units", "output=2,10,36,56,70", "--n", "2", "-j", "2",
        "--results", str(tmp_path / "b"), "--device", "cpu", timeout=1200,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = {r["backbone"]: r for r in csv.DictReader((tmp_path / "b/eval.csv").open())}
    baseline, replayed = rows["baseline"], rows[f"replay:{constant}"]
    assert (baseline["task"], baseline["scored"], replayed["scored"]) == ("reliance", "5", "5")
    assert float(baseline["category_pct"]) >= 80
    assert float(replayed["category_pct"]) < float(baseline["category_pct"])
    # the constant is right once (camel on sand is a background model, but not grass)
    truths = [
        json.loads(p.read_text())["ground_truth"]
        for p in (tmp_path / "b/replay-constant").rglob("eval.json")
    ]
    assert sorted(t["category_right"] for t in truths) == [False] * 4 + [True]
    assert not any(t["value_right"] for t in truths)
