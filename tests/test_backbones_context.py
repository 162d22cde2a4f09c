"""Context fitting, the providers' image-token rules, and the retry policy."""

from __future__ import annotations

import email.utils
import io
import random
import time

import pytest
from fake_providers import FakeProvider, reply
from PIL import Image

from maia_core.loop.run import make_backbone
from maia_core.providers.context import (
    IMAGE_PLACEHOLDER,
    ContextFitter,
    anthropic_image_tokens,
    openai_image_rule,
    openai_patch_tokens,
    openai_tile_tokens,
)
from maia_core.providers.retry import RetryPolicy, parse_retry_after
from maia_core.transcript import ImagePart, Message, TextPart


def test_published_image_token_rules():
    # Anthropic: width*height/750, after shrinking to 1568 px / ~1600 tokens
    assert anthropic_image_tokens(1000, 1000) == 1334
    assert anthropic_image_tokens(200, 200) == 54
    assert anthropic_image_tokens(4000, 3000) == 1600
    # OpenAI tiles: OpenAI's own worked examples
    assert openai_tile_tokens(1024, 1024) == 765
    assert openai_tile_tokens(2048, 4096) == 1105
    assert openai_tile_tokens(4096, 8192, "low") == 85
    assert openai_tile_tokens(224, 224) == 255
    # OpenAI patches (gpt-4.1-mini and friends), before the model's multiplier
    assert openai_patch_tokens(1024, 1024) == 1024
    assert openai_patch_tokens(1800, 2400) == 1452
    assert openai_image_rule("gpt-4.1-mini")(1024, 1024) == 1659  # x1.62
    assert openai_image_rule("gpt-4o")(1024, 1024) == 765


def image(size=(512, 512), colour="gray") -> ImagePart:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG")
    return ImagePart(buf.getvalue(), "image/jpeg")


def investigation(rounds: int = 4) -> list[Message]:
    msgs = [Message.of("system", "S" * 300), Message.of("user", "T" * 300, kind="task")]
    for r in range(rounds):
        msgs.append(Message.of("assistant", f"code {r} " + "c" * 300))
        msgs.append(Message("user", [TextPart(f"result {r}", "stdout"), image(), image()]))
    return msgs


def roles(msgs):
    return [m.role for m in msgs]


def test_fitting_drops_the_oldest_images_first_and_says_so():
    msgs = investigation()
    fitter = ContextFitter(10_000, anthropic_image_tokens)
    same, report = fitter.fit(msgs)
    assert not report.dropped and [m.parts for m in same] == [m.parts for m in msgs]

    # 8 images of 350 tokens; a budget 2 images short, plus room for the note
    full = fitter.estimate(msgs)
    fitter = ContextFitter(full - 700, anthropic_image_tokens)
    fitted, report = fitter.fit(msgs)
    assert (report.dropped_images, report.dropped_messages) == (3, 0)
    assert report.estimated_tokens <= full - 700
    assert roles(fitted) == roles(msgs)
    placeholders = [
        [isinstance(p, TextPart) and p.text == IMAGE_PLACEHOLDER for p in m.parts] for m in fitted
    ]
    assert placeholders[3] == [False, True, True] and placeholders[5] == [False, True, False]
    assert "the 3 oldest image(s)" in fitted[-1].parts[0].text
    assert fitted[0].text == msgs[0].text and fitted[1].text == msgs[1].text
    # the transcript itself is untouched
    assert all(isinstance(p, ImagePart) for p in msgs[3].parts[1:])


def test_fitting_then_drops_the_oldest_exchanges_keeping_system_task_and_newest():
    msgs = investigation(rounds=6)
    fitter = ContextFitter(1400, anthropic_image_tokens)
    fitted, report = fitter.fit(msgs)
    # every earlier image, then exchanges; the newest turn keeps its two images
    assert report.dropped_images == 10 and report.dropped_messages >= 2
    assert report.dropped_messages % 2 == 0 and len(fitted) == len(msgs) - report.dropped_messages
    assert report.estimated_tokens <= 1400
    assert fitted[0].text == msgs[0].text and fitted[1].meta["kind"] == "task"
    assert fitted[-1].parts[1:] == msgs[-1].parts and len(fitted[-1].images) == 2
    assert roles(fitted[1:]) == ["user"] + ["assistant", "user"] * ((len(fitted) - 2) // 2)
    assert (
        f"the {report.dropped_messages} oldest message(s) after the task"
        in fitted[-1].parts[0].text
    )


def test_calibration_follows_the_providers_count():
    msgs = investigation()
    fitter = ContextFitter(100_000, anthropic_image_tokens)
    estimate = fitter.estimate(msgs)
    fitter.calibrate(estimate, 2 * estimate)
    assert fitter.estimate(msgs) == pytest.approx(2 * estimate, rel=0.01)
    fitter.calibrate(fitter.estimate(msgs), 50 * estimate)
    assert fitter.scale == 3.0  # clamped


def test_backbone_sends_the_fitted_transcript_and_reports_what_it_dropped(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    msgs = investigation()
    with FakeProvider("anthropic", [reply("ok")]) as fp:
        b = make_backbone(
            "claude",
            {"base_url": fp.base_url, "context_tokens": "3000", "max_output_tokens": "500"},
        )
        r = b.complete(msgs)
    sent = fp.requests[0].body
    images = sum(block["type"] == "image" for m in sent["messages"] for block in m["content"])
    assert images < 8
    assert r.meta["context"]["dropped_images"] == 8 - images and r.meta["context"]["budget"] == 2500
    last = sent["messages"][-1]["content"]
    assert last[0]["text"].startswith("[Note: to fit the model's context window")


def test_context_budget_must_leave_room_for_the_answer(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    from maia_core.errors import UserError

    with pytest.raises(UserError, match="leaves no room for max_output_tokens=4096"):
        make_backbone("gpt-4o", {"context_tokens": "4000"})


def test_retry_after_forms():
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert 28 <= parse_retry_after({"retry-after": date}, now=now) <= 31
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_backoff_is_exponential_with_jitter_and_capped():
    policy = RetryPolicy(attempts=10, base_delay=1.0, max_delay=8.0, max_retry_after=60)
    rng = random.Random(0)
    for retry, step in [(1, 1), (2, 2), (3, 4), (4, 8), (7, 8)]:
        delays = {policy.delay(retry, None, rng) for _ in range(50)}
        assert min(delays) >= step / 2 and max(delays) <= step and len(delays) > 1
    assert policy.delay(1, 5.0, rng) == 5.0
    assert policy.delay(1, 3600.0, rng) == 60
