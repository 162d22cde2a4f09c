"""The Claude, OpenAI and OpenAI-compatible backbones: the real SDK clients against local
servers that speak the providers' protocols (tests/fake_providers.py)."""

from __future__ import annotations

import base64
import io
import json

import pytest
from fake_providers import FakeProvider, Step, error, reply
from PIL import Image

from maia_core.errors import BackboneError, UserError
from maia_core.loop.run import make_backbone
from maia_core.providers.pricing import PriceTable
from maia_core.transcript import ImagePart, Message, TextPart

ANTHROPIC_KEY = "sk-ant-test-key"
OPENAI_KEY = "sk-openai-test-key"


@pytest.fixture(autouse=True)
def keys(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def backbone(spec: str, fp: FakeProvider, **options: str):
    return make_backbone(spec, {"base_url": fp.base_url, "retry_base_delay": "0.01", **options})


def jpeg(size: tuple[int, int], colour: str = "red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG")
    return buf.getvalue()


def png_rgba(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", size, (0, 0, 255, 128)).save(buf, "PNG")
    return buf.getvalue()


def transcript() -> list[Message]:
    """System, task, two rounds; a large photo, a transparent PNG, a mislabelled JPEG, an
    empty output, and two user messages in a row."""
    return [
        Message.of("system", "SYS"),
        Message.of("user", "TASK", kind="task"),
        Message.of("assistant", "A1"),
        Message(
            "user",
            [
                TextPart("out1", "stdout"),
                ImagePart(jpeg((800, 600)), "image/jpeg"),
                TextPart("act 1.0", "display"),
            ],
        ),
        Message.of("user", "extra note"),
        Message.of("assistant", "A2"),
        Message(
            "user",
            [
                ImagePart(png_rgba((64, 64)), "image/png"),
                ImagePart(jpeg((32, 32)), "image/png"),
                TextPart("", "stdout"),
            ],
        ),
    ]


def describe_image(data_b64: str) -> str:
    """``<media-type WxH>`` for sent image data, checking its bytes are what they claim."""
    data = base64.b64decode(data_b64)
    img = Image.open(io.BytesIO(data))
    return f"<{img.format.lower()} {img.size[0]}x{img.size[1]}>"


def anthropic_images(body):
    for m in body["messages"]:
        for block in m["content"]:
            if block["type"] == "image":
                src = block["source"]
                assert src["type"] == "base64"
                shown = describe_image(src["data"])
                assert src["media_type"] == "image/" + shown[1:].split()[0]
                src["data"] = shown
    return body


def openai_images(body):
    for m in body["messages"]:
        if isinstance(m["content"], list):
            for block in m["content"]:
                if block["type"] == "image_url":
                    head, data = block["image_url"]["url"].split(",", 1)
                    shown = describe_image(data)
                    assert head == f"data:image/{shown[1:].split()[0]};base64"
                    block["image_url"]["url"] = shown
    return body


# -- request payloads -------------------------------------------------------------------------


def test_claude_request_payload_usage_and_cost():
    with FakeProvider(
        "anthropic",
        [reply("Hello", input_tokens=100, output_tokens=20, cache_read=1000, cache_write=50)],
    ) as fp:
        b = backbone("claude", fp)
        r = b.complete(transcript())
    [req] = fp.requests
    assert req.path == "/v1/messages"
    # the SDK sends the key as x-api-key or, in recent versions, as a bearer token
    sent_key = req.headers.get("x-api-key") or req.headers.get("authorization", "").removeprefix(
        "Bearer "
    )
    assert sent_key == ANTHROPIC_KEY and "anthropic-version" in req.headers
    cache = {"cache_control": {"type": "ephemeral"}}
    assert anthropic_images(req.body) == {
        "model": "claude-sonnet-5-5",
        "max_tokens": 8192,
        "system": [{"type": "text", "text": "SYS", **cache}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "TASK"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A1"}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "out1"},
                    {
                        "type": "image",
                        "source": {
                            "type": "base64",
                            "media_type": "image/jpeg",
                            "data": "<jpeg 512x384>",
                        },
                    },
                    {"type": "text", "text": "act 1.0"},
                    {"type": "text", "text": "extra note"},
                ],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "A2"}]},
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {
                            "type": "base64",
                            "media_type": "image/png",
                            "data": "<png 64x64>",
                        },
                    },
                    {
                        "type": "image",
                        "source": {
                            "type": "base64",
                            "media_type": "image/jpeg",
                            "data": "<jpeg 32x32>",
                        },
                        **cache,
                    },
                ],
            },
        ],
    }
    assert r.text == "Hello" and r.model == "claude-sonnet-5-5"
    u = r.usage
    assert (u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens) == (
        1150,
        20,
        1000,
        50,
    )
    # $2 / $10 per million, cache reads $0.20, cache writes $2.50
    assert u.cost_usd == pytest.approx((100 * 2 + 20 * 10 + 1000 * 0.2 + 50 * 2.5) / 1e6)


def test_claude_model_id_is_sent_as_given():
    with FakeProvider("anthropic", [reply("a"), reply("b")]) as fp:
        backbone("claude:claude-opus-5-5", fp).complete(transcript()[:2])
        backbone("claude-haiku-4-5-20251001", fp, prompt_cache="false").complete(transcript()[:2])
    assert [b["model"] for b in fp.bodies()] == ["claude-opus-5-5", "claude-haiku-4-5-20251001"]
    assert "cache_control" not in json.dumps(fp.bodies()[1])


def test_openai_request_payload_usage_and_cost():
    with FakeProvider(
        "openai", [reply("Hi", input_tokens=300, output_tokens=40, cache_read=200)]
    ) as fp:
        r = backbone("gpt-4o", fp).complete(transcript())
    [req] = fp.requests
    assert (
        req.path == "/v1/chat/completions"
        and req.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    )
    assert openai_images(req.body) == {
        "model": "gpt-4o",
        "max_completion_tokens": 4096,
        "messages": [
            {"role": "system", "content": "SYS"},
            {"role": "user", "content": "TASK"},
            {"role": "assistant", "content": "A1"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "out1"},
                    {"type": "image_url", "image_url": {"url": "<jpeg 512x384>"}},
                    {"type": "text", "text": "act 1.0"},
                    {"type": "text", "text": "extra note"},
                ],
            },
            {"role": "assistant", "content": "A2"},
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": "<png 64x64>"}},
                    {"type": "image_url", "image_url": {"url": "<jpeg 32x32>"}},
                ],
            },
        ],
    }
    assert r.text == "Hi"
    assert (r.usage.input_tokens, r.usage.output_tokens, r.usage.cache_read_tokens) == (
        500,
        40,
        200,
    )
    # $2.50 / $10 per million, cached input $1.25
    assert r.usage.cost_usd == pytest.approx((300 * 2.5 + 40 * 10 + 200 * 1.25) / 1e6)


def test_local_server_merges_system_and_sends_the_model_id_unchanged():
    with FakeProvider("openai", [reply("ok")]) as fp:
        b = backbone("local-google/gemma-3-27b-it", fp, merge_system="true", image_size="256")
        r = b.complete(transcript())
    body = openai_images(fp.requests[0].body)
    assert body["model"] == "google/gemma-3-27b-it" and body["max_tokens"] == 4096
    assert "max_completion_tokens" not in body
    assert [m["role"] for m in body["messages"]] == [
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    assert body["messages"][0] == {"role": "user", "content": "SYS\nTASK"}
    assert body["messages"][2]["content"][1] == {
        "type": "image_url",
        "image_url": {"url": "<jpeg 256x192>"},
    }
    # no price for a local model: tokens are counted, the cost is unknown
    assert r.usage.input_tokens == 100 and r.usage.cost_usd is None and not b.price_known()


def test_openai_compatible_spec_and_default_base_url():
    b = make_backbone("openai-compatible:qwen3-vl")
    assert b.model == "qwen3-vl" and b.options.base_url == "http://localhost:11434/v1"
    assert str(b.client.base_url).rstrip("/") == "http://localhost:11434/v1"
    b.close()


# -- reliability ------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol, spec", [("anthropic", "claude"), ("openai", "gpt-4o")])
def test_429_with_retry_after_is_honoured_then_succeeds(protocol, spec):
    with FakeProvider(
        protocol, [error(429, "slow down", "rate_limit_error", retry_after="1"), reply("done")]
    ) as fp:
        r = backbone(spec, fp).complete(transcript()[:2])
    assert r.text == "done" and len(fp.requests) == 2
    waited = fp.requests[1].at - fp.requests[0].at
    assert 0.95 <= waited < 5  # Retry-After, not the 0.01 s backoff


@pytest.mark.parametrize(
    "protocol, spec", [("anthropic", "claude"), ("openai", "gpt-4o"), ("openai", "local-m")]
)
@pytest.mark.parametrize(
    "failure",
    [
        error(500, "boom"),
        error(503, "unavailable"),
        error(529, "overloaded", "overloaded_error"),
        Step(raw=b"<html>bad gateway</html>"),
        Step(raw=b'{"unexpected": true}'),
        Step(text="too late", delay=1.5),
    ],
    ids=["500", "503", "529", "not-json", "wrong-shape", "timeout"],
)
def test_transient_failures_are_retried(protocol, spec, failure):
    with FakeProvider(
        protocol, [failure, reply("recovered", input_tokens=7, output_tokens=3)]
    ) as fp:
        r = backbone(spec, fp, timeout="0.5").complete(transcript()[:2])
    assert r.text == "recovered" and (r.usage.input_tokens, r.usage.output_tokens) == (7, 3)
    assert len(fp.requests) == 2
    assert fp.requests[0].body == fp.requests[1].body


def test_giving_up_after_the_configured_attempts_is_a_backbone_error():
    with (
        FakeProvider("anthropic", [error(500, "still broken")] * 3) as fp,
        pytest.raises(
            BackboneError, match=r"failed after 3 attempt\(s\); last error: .*500.*still broken"
        ),
    ):
        backbone("claude", fp, max_attempts="3").complete(transcript()[:2])
    assert len(fp.requests) == 3


@pytest.mark.parametrize("protocol, spec", [("anthropic", "claude"), ("openai", "gpt-4o")])
def test_400_is_not_retried_and_fails_the_unit_with_the_reason(protocol, spec):
    with (
        FakeProvider(protocol, [error(400, "image too large", "invalid_request_error")]) as fp,
        pytest.raises(
            BackboneError,
            match="answered 400: invalid_request_error: image too large .*not retried",
        ),
    ):
        backbone(spec, fp).complete(transcript()[:2])
    assert len(fp.requests) == 1


@pytest.mark.parametrize(
    "protocol, spec, variable",
    [("anthropic", "claude", "ANTHROPIC_API_KEY"), ("openai", "gpt-4o", "OPENAI_API_KEY")],
)
def test_401_is_a_user_error_naming_the_key_variable(protocol, spec, variable):
    with (
        FakeProvider(protocol, [error(401, "invalid x-api-key", "authentication_error")]) as fp,
        pytest.raises(
            UserError,
            match=f"rejected the API key .*invalid x-api-key.*Check the key in {variable}",
        ),
    ):
        backbone(spec, fp).complete(transcript()[:2])
    assert len(fp.requests) == 1


def test_403_and_404_are_user_errors():
    with FakeProvider("openai", [error(403, "no access"), error(404, "model not found")]) as fp:
        with pytest.raises(UserError, match="refused access to model gpt-4o"):
            backbone("gpt-4o", fp).complete(transcript()[:2])
        with pytest.raises(
            UserError, match="does not know model 'gpt-4o'.*Check the model id and --base-url"
        ):
            backbone("gpt-4o", fp).complete(transcript()[:2])
    assert len(fp.requests) == 2


def test_unreachable_local_server_names_the_url_and_how_to_start_one():
    with FakeProvider("openai") as fp:
        url = fp.base_url
    with pytest.raises(BackboneError, match=f"cannot connect to {url}.*maia serve-model"):
        make_backbone(
            "local-m", {"base_url": url, "max_attempts": "2", "retry_base_delay": "0.01"}
        ).complete(transcript()[:2])


def test_missing_key_and_bad_options_are_one_line_user_errors(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    with pytest.raises(
        UserError, match="needs an API key in the environment variable ANTHROPIC_API_KEY"
    ):
        make_backbone("claude")
    with pytest.raises(UserError, match="needs an API key in the environment variable MY_VLLM_KEY"):
        make_backbone("local-m", {"api_key_env": "MY_VLLM_KEY"})
    with pytest.raises(UserError, match="Backbone openai has no option 'colour'"):
        make_backbone("gpt-4o", {"colour": "red"})
    with pytest.raises(UserError, match="max_attempts='many' must be a whole number"):
        make_backbone("gpt-4o", {"max_attempts": "many"})


def test_a_key_for_a_local_server_comes_from_the_named_variable(monkeypatch):
    monkeypatch.setenv("MY_VLLM_KEY", "local-secret")
    with FakeProvider("openai", [reply("ok")]) as fp:
        backbone("local-m", fp, api_key_env="MY_VLLM_KEY").complete(transcript()[:2])
    assert fp.requests[0].headers["authorization"] == "Bearer local-secret"


# -- prices ----------------------------------------------------------------------------------


def test_price_file_overrides_and_extends_the_table(tmp_path):
    path = tmp_path / "prices.json"
    path.write_text(
        json.dumps({"gpt-4o": {"input": 1, "output": 2}, "m": {"input": 0.5, "output": 0.5}})
    )
    table = PriceTable.load(path)
    assert table.cost("gpt-4o-2024-08-06", 1_000_000, 1_000_000) == pytest.approx(3.0)
    assert table.cost("gpt-4o-mini", 1_000_000, 0) == pytest.approx(0.15)  # longest prefix wins
    with FakeProvider("openai", [reply("ok", input_tokens=2_000_000, output_tokens=0)]) as fp:
        b = backbone("local-m", fp)
        b.prices = table
        assert b.price_known() and b.complete(transcript()[:2]).usage.cost_usd == pytest.approx(1.0)
    path.write_text(json.dumps({"gpt-4o": {"input": 1}}))
    with pytest.raises(UserError, match='gpt-4o needs "input" and "output" prices'):
        PriceTable.load(path)
    path.write_text("{not json")
    with pytest.raises(UserError, match="is not valid"):
        PriceTable.load(path)
    toml = tmp_path / "prices.toml"
    toml.write_text('["my-model"]\ninput = 1.5\noutput = 3\n')
    assert PriceTable.load(toml).cost("my-model", 1_000_000, 0) == pytest.approx(1.5)
