import json

import numpy as np
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


def test_text_part_sources_survive():
    m = Message("user", [TextPart("oops", "error")])
    assert Message.from_json(m.to_json()).parts[0].source == "error"
