import json

import numpy as np
import pytest
from PIL import Image

from maia_core.images import dim_outside, encode_image, sniff_media_type, to_pil
from maia_core.transcript import (
    ImagePart,
    Message,
    TextPart,
    transcript_from_json,
    transcript_to_json,
)


def test_messages_round_trip_through_json():
    img = Image.new("RGB", (16, 8), "red")
    messages = [
        Message.of("system", "be precise"),
        Message.of("user", "look", img, "done", kind="result", round=1),
        Message.of("assistant", "```python\nprint(1)\n```"),
    ]
    obj = json.loads(json.dumps(transcript_to_json(messages, unit=3)))
    assert obj["format"] == "maia-transcript/1" and obj["unit"] == 3
    back = transcript_from_json(obj)
    assert [m.role for m in back] == ["system", "user", "assistant"]
    assert back[1].meta == {"kind": "result", "round": 1}
    assert isinstance(back[1].parts[1], ImagePart)
    assert back[1].parts[1].to_pil().size == (16, 8)
    assert back[1].text == "look\ndone"


def test_images_are_encoded_compactly_and_sniffed():
    rgb = Image.new("RGB", (64, 64), "blue")
    data, media = encode_image(rgb)
    assert media == "image/jpeg" and sniff_media_type(data) == "image/jpeg"
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    data, media = encode_image(rgba)
    assert media == "image/png" and sniff_media_type(data) == "image/png"


def test_to_pil_accepts_what_agents_pass():
    arr = np.zeros((4, 5, 3), dtype=np.float32)
    arr[0, 0] = 1.0
    img = to_pil(arr)
    assert img.size == (5, 4) and img.getpixel((0, 0)) == (255, 255, 255)
    import base64
    import io

    buf = io.BytesIO()
    Image.new("RGB", (3, 3), "green").save(buf, format="PNG")
    assert to_pil(base64.b64encode(buf.getvalue()).decode()).getpixel((1, 1)) == (0, 128, 0)


def test_dim_outside_keeps_the_mask_and_dims_the_rest():
    img = Image.new("RGB", (4, 2), (200, 100, 40))
    mask = np.array([[True, False, False, True], [False, False, False, False]])
    out = np.asarray(dim_outside(img, mask))
    assert tuple(out[0, 0]) == (200, 100, 40)
    assert tuple(out[0, 1]) == (50, 25, 10)


def test_dim_outside_is_the_float32_arithmetic_to_the_pixel():
    """Every channel value outside the mask becomes round(v * factor) in float32, whatever the
    factor, mode or mask type."""
    rng = np.random.default_rng(5)
    img = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))
    mask = rng.random((37, 53)) > 0.4
    arr = np.asarray(img, dtype=np.float32)
    for factor in (0.25, 0.1, 0.3, 0.77, 1.0, 0.0):
        # a mask that keeps some, nothing (a silent unit), or everything
        for m in (mask, np.zeros_like(mask), np.ones_like(mask)):
            want = (arr * np.where(m, np.float32(1), np.float32(factor))[..., None]).round()
            out = dim_outside(img, m, factor)
            assert out.mode == "RGB" and out is not img
            assert np.array_equal(np.asarray(out), want.astype(np.uint8))
    grey = img.convert("L")
    out = dim_outside(grey, mask.astype(np.float32))  # any mode in, RGB out; a 0/1 float mask
    weight = np.where(mask, np.float32(1), np.float32(0.25))[..., None]
    want = (np.asarray(grey.convert("RGB"), dtype=np.float32) * weight).round()
    assert out.mode == "RGB" and np.array_equal(np.asarray(out), want.astype(np.uint8))
    with pytest.raises(ValueError, match="does not match"):
        dim_outside(img, mask[:, :10])


def test_text_part_sources_survive():
    m = Message("user", [TextPart("oops", "error")])
    assert Message.from_json(m.to_json()).parts[0].source == "error"
