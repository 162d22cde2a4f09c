"""The investigation loop, driven by the replay backbone against a real target."""

from __future__ import annotations

import json

import pytest

from conftest import write_replay
from maia_core.loop.investigation import extract_code, parse_final
from maia_core.loop.run import RunConfig, run

CALL = "```python\nacts, masked = system.call_neuron([Image.new('RGB', (64, 64), 'red')])\ntools.display(masked[0], f'act {acts[0]:.2f}')\n```"
FINAL = "[DESCRIPTION]: red things\n[LABEL]: red"


def config(tmp_path, turns, **kw) -> RunConfig:
    kw.setdefault("units", "conv2=0")
    return RunConfig(
        target="toynet",
        backbone=f"replay:{write_replay(tmp_path / 'turns.json', turns)}",
        results=tmp_path / "results",
        sandbox="none",
        reporters=["json"],
        **kw,
    )


def test_extract_code_blocks():
    text = (
        "plan\n```python\na = 1\n```\ntext\n```py\nb = 2\n```\n```bash\nls\n```\n```python\nc = 3"
    )
    assert extract_code(text) == ["a = 1", "b = 2", "c = 3"]
    assert extract_code("no code here") == []


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "[DESCRIPTION]: stripes on animals\n[LABEL]: zebra stripes",
            ("stripes on animals", "zebra stripes"),
        ),
        ("**[DESCRIPTION]:** dogs\n\n**[LABEL]:** dog faces", ("dogs", "dog faces")),
        ("Done.\n[DESCRIPTION] multi\nline text\n[LABEL] x", ("multi\nline text", "x")),
        ("[LABEL]: only a label", None),
    ],
)
def test_parse_final(text, expected):
    assert parse_final(text) == expected


def test_a_full_investigation(with_thirdparty, tmp_path):
    [inv] = run(config(tmp_path, [CALL, FINAL]))
    r = inv.result
    assert (r.status, r.description, r.label, r.rounds) == ("completed", "red things", "red", 2)
    roles = [m.role for m in inv.messages]
    assert roles == ["system", "user", "assistant", "user", "assistant"]
    system_prompt = inv.messages[0].text
    # the API text is generated from the live objects' signatures and docstrings
    assert (
        "system.call_neuron(images: list[Image.Image]) -> tuple[list[float], list[Image.Image]]"
        in system_prompt
    )
    assert "tools.display(*items: Any) -> None" in system_prompt
    assert (
        "tools.caption(text: str) -> str" in system_prompt
        and "Ask the describer backbone" in system_prompt
    )
    result_msg = inv.messages[3]
    assert result_msg.meta["kind"] == "result" and len(result_msg.images) == 1
    assert result_msg.parts[-1].text.startswith("act ")


def test_reply_without_code_or_answer_gets_a_correction(with_thirdparty, tmp_path):
    [inv] = run(config(tmp_path, ["I think it likes red.", CALL, FINAL]))
    assert inv.result.status == "completed" and inv.result.rounds == 3
    correction = inv.messages[3]
    assert (
        correction.meta["kind"] == "correction"
        and "neither a ```python code block nor a final answer" in correction.text
    )


def test_max_rounds_then_final_answer_is_requested(with_thirdparty, tmp_path):
    [inv] = run(config(tmp_path, [CALL, CALL, CALL, FINAL], max_rounds=2))
    # rounds 1-2 experiment; the result of round 2 carries the request; reply 3 has code, not
    # an answer, so maia asks again and reply 4 answers
    assert inv.result.status == "completed" and inv.result.rounds == 4
    assert "You have used all 2 rounds" in inv.messages[5].text
    assert inv.messages[7].meta["kind"] == "final_request"


def test_no_final_answer_leaves_the_unit_incomplete(with_thirdparty, tmp_path):
    [inv] = run(config(tmp_path, [CALL, CALL, CALL], max_rounds=1))
    assert inv.result.status == "incomplete" and inv.result.description is None


def test_exhausted_replay_marks_the_unit_failed_and_others_go_on(with_thirdparty, tmp_path):
    invs = run(config(tmp_path, [CALL], units="conv2=0,1"))
    assert [i.result.status for i in invs] == ["failed", "failed"]
    assert "has no assistant turn 2" in invs[0].result.error
    saved = json.loads((tmp_path / "results/replay-turns/toynet/conv2/1/result.json").read_text())
    assert saved["status"] == "failed" and "no assistant turn" in saved["error"]


def test_errors_in_a_cell_go_back_to_the_agent(with_thirdparty, tmp_path):
    bad = "```python\nundefined_name\n```\n```python\nprint('never')\n```"
    [inv] = run(config(tmp_path, [bad, FINAL]))
    result = inv.messages[3]
    assert "NameError: name 'undefined_name' is not defined" in result.text
    assert "remaining 1 code block(s) of your reply were not run" in result.text
    assert "never" not in result.text
