"""Targets: the offline EfficientNet-Lite0, timm models, call_neuron and masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import maia
from maia_core import plugins
from maia_core.errors import UserError
from maia_core.torch_runtime.target import Preprocess, TorchTarget, mask_image, upsample
from maia_core.units import Unit


def make(spec: str, **options):
    entry, arg = plugins.registry("targets").resolve(spec)
    return entry.factory(arg, device="cpu", **options)


@pytest.fixture(scope="module")
def lite0():
    return make("efficientnet_lite0")


def top_class(target, img) -> int:
    x = target.preprocess.to_tensor([target.preprocess.view(img)])
    with torch.inference_mode():
        return int(target.model(x).argmax())


def test_efficientnet_lite0_recognises_real_photos(lite0, photos):
    # 281 tabby, 282 tiger cat, 285 Egyptian cat; 967 espresso
    assert top_class(lite0, photos["chelsea"]) in (281, 282, 285)
    assert top_class(lite0, photos["coffee"]) == 967


def test_efficientnet_lite0_layers(lite0):
    layers = {i.name: i for i in lite0.layers()}
    assert layers["blocks.6"].units == 320 and layers["blocks.6"].spatial == (7, 7)
    assert layers["conv_stem"].spatial == (112, 112)
    assert layers["classifier"].kind == "vector" and layers["classifier"].units == 1000
    names = [i.name for i in lite0.layers()]
    assert names.index("blocks") < names.index("blocks.0")  # definition order, parents first
    assert lite0.layer("blocks.6.0.conv_pw") is not None  # unlisted modules still resolve
    assert len(lite0.layers(all=True)) > len(lite0.layers())


def test_call_neuron_matches_a_direct_forward_hook(lite0, photos):
    imgs = [photos["chelsea"], photos["rocket"], photos["coffee"]]
    system = lite0.system(Unit("blocks.5", 17))
    acts, masked = system.call_neuron(imgs)

    captured = {}
    handle = lite0.model.blocks[5].register_forward_hook(
        lambda m, i, o: captured.setdefault("out", o)
    )
    x = lite0.preprocess.to_tensor([lite0.preprocess.view(i) for i in imgs])
    with torch.inference_mode():
        lite0.model(x)
    handle.remove()
    expected = captured["out"][:, 17].flatten(1).amax(1)
    np.testing.assert_allclose(acts, expected.numpy(), rtol=1e-5, atol=1e-5)
    assert [m.size for m in masked] == [(224, 224)] * 3
    # deterministic and batch-size independent
    lite0.batch_size = 1
    try:
        np.testing.assert_allclose(system.call_neuron(imgs)[0], acts, rtol=1e-5, atol=1e-5)
    finally:
        lite0.batch_size = 32


def test_vector_units_have_no_mask(lite0, photos):
    system = lite0.system(Unit("classifier", 967))
    acts, masked = system.call_neuron(photos["coffee"])  # one image is accepted
    assert len(acts) == 1 and acts[0] > 5
    assert np.array_equal(
        np.asarray(masked[0]), np.asarray(lite0.preprocess.view(photos["coffee"]))
    )


def test_mask_geometry_follows_the_map():
    view = __import__("PIL.Image", fromlist=["Image"]).new("RGB", (8, 8), (200, 200, 200))
    unit_map = torch.zeros(2, 2)
    unit_map[0, 1] = 5.0  # top-right cell active
    out = np.asarray(mask_image(view, unit_map, threshold=1.0, quantile=0.9))
    assert tuple(out[1, 6]) == (200, 200, 200)  # inside the top-right quadrant: kept
    assert tuple(out[6, 1]) == (50, 50, 50)  # bottom-left: dimmed to 25%
    up = upsample(unit_map, (8, 8))
    assert np.array_equal(out[..., 0] == 200, (up > 1.0).numpy())
    # without a dataset threshold, the per-image quantile keeps the top of the map
    q = np.asarray(mask_image(view, unit_map, threshold=None, quantile=0.75))
    assert (q[..., 0] == 200).mean() == pytest.approx(0.25, abs=0.05)


def test_an_inactive_unit_highlights_nothing():
    view = __import__("PIL.Image", fromlist=["Image"]).new("RGB", (8, 8), (200, 200, 200))
    out = np.asarray(mask_image(view, torch.zeros(2, 2), threshold=None, quantile=0.9))
    assert (out == 50).all()


def test_preprocess_view_resizes_and_center_crops():
    from PIL import Image

    pre = Preprocess(size=224, crop_pct=0.875)
    wide = Image.new("RGB", (512, 256))
    assert pre.view(wide).size == (224, 224)
    x = pre.to_tensor([pre.view(wide)])
    assert x.shape == (1, 3, 224, 224)
    assert torch.allclose(
        x[0, :, 0, 0], torch.tensor([-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225])
    )


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "lanczos", "nearest"])
def test_the_view_is_resizing_then_cropping_to_the_bit(interpolation):
    """``view`` resizes only the pixels the crop keeps where that gives the same pixels: it
    must equal resizing the whole image and cropping, whatever the sizes."""
    import math

    from PIL import Image

    from maia_core.torch_runtime.target import _crop_box

    rng = np.random.default_rng(7)
    resample = getattr(Image, interpolation.upper())
    sizes = [(224, 224), (300, 300), (512, 512), (448, 448), (640, 480), (480, 640)]
    sizes += [(500, 375), (224, 300), (64, 64), (299, 299), (320, 320), (1024, 768)]
    preprocessings = [
        Preprocess(interpolation=interpolation),
        Preprocess(size=384, crop_pct=1.0, interpolation=interpolation),
        Preprocess(size=224, crop_pct=0.9, interpolation=interpolation),
        Preprocess(size=(224, 320), crop_pct=1.0, interpolation=interpolation),
    ]
    for w, h in sizes:
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for pre in preprocessings:
            ph, pw = pre.size
            scale = math.floor(max(ph, pw) / pre.crop_pct + 1e-6) / min(w, h)
            nw, nh = max(pw, round(w * scale)), max(ph, round(h * scale))
            left, top = (nw - pw) // 2, (nh - ph) // 2
            whole = image.resize((nw, nh), resample).crop((left, top, left + pw, top + ph))
            assert pre.view(image).tobytes() == whole.tobytes(), (w, h, pre)
    # a 224 px render for a 224 px model (resized to 256, cropped) takes the short way; a
    # nearest-neighbour resize never does (PIL places its pixels otherwise)
    box = _crop_box((224, 224), (256, 256), (16, 16), (224, 224), resample)
    assert (box is None) == (interpolation == "nearest")


def test_a_map_that_is_zero_everywhere_has_an_empty_mask_without_upsampling():
    from maia_core.torch_runtime.target import unit_masks

    torch.manual_seed(0)
    maps = torch.rand(4, 7, 7)
    maps[1] = 0.0
    maps[3] = 0.0
    maps[2, :, :4] = -1.0  # negative values: compared with the threshold as usual
    for threshold in (0.0, 0.5, -0.5):
        got = unit_masks(maps, (56, 56), threshold, 0.9)
        want = upsample(maps, (56, 56)) > threshold
        assert torch.equal(got, want), threshold
    assert not unit_masks(maps, (56, 56), 0.0, 0.9)[[1, 3]].any()
    assert unit_masks(maps, (56, 56), -0.5, 0.9)[[1, 3]].all()  # under a negative threshold
    silent = torch.zeros(3, 7, 7)
    assert not unit_masks(silent, (56, 56), 0.0, 0.9).any()


@pytest.mark.parametrize(
    "mean,std",
    [
        ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ImageNet
        ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # EfficientNet-Lite, the detectors
        ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),  # CLIP
        ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
        ((0.1, 0.7, 0.33), (0.017, 3.0, 0.29)),
    ],
)
def test_normalizing_a_channels_last_batch_gives_the_broadcast_arithmetics_bits(mean, std):
    """A channels-last batch is normalized along repeated rows of the mean and std: every
    value of every channel, at every place in a batch (vectorized body and tail), gets the
    float32 that ``(x / 255 - mean) / std`` with [1, 3, 1, 1] broadcasting gives, bit for bit."""
    from PIL import Image

    pre = Preprocess(size=(17, 23), mean=mean, std=std)
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (5, 17, 23, 3), dtype=np.uint8)
    pixels[0].reshape(-1, 3)[:256] = np.arange(256, dtype=np.uint8)[:, None]  # every value
    uint8 = torch.from_numpy(pixels).permute(0, 3, 1, 2)  # channels-last, as views stack
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    exact = ((uint8.contiguous().float() / 255.0) - m) / s  # planar: the broadcast path
    views = [Image.fromarray(p) for p in pixels]
    for x in (pre.to_tensor(views), pre.normalize(uint8), pre.normalize(uint8.contiguous())):
        assert x.dtype == torch.float32 and x.shape == (5, 3, 17, 23)
        assert torch.equal(x.contiguous().view(torch.int32), exact.view(torch.int32))
    assert pre.to_tensor(views).is_contiguous(memory_format=torch.channels_last)
    assert pre.normalize(uint8[:0]).shape == (0, 3, 17, 23)


def test_forward_stops_after_the_requested_layer():
    calls = []
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 3))
    model[2].register_forward_hook(lambda *a: calls.append("late"))
    target = TorchTarget("seq", model, Preprocess(size=16, crop_pct=1.0), device="cpu")
    target.layers()  # probing runs the whole model once
    calls.clear()
    out = target.forward_layers(torch.zeros(1, 3, 16, 16), ["0"])
    assert out["0"].shape == (1, 4, 14, 14) and calls == []


def test_timm_random_weights_and_errors():
    t = make("timm:resnet18", pretrained="false")
    assert t.layer("layer4").units == 512 and t.layer("layer4").spatial == (7, 7)
    assert "random weights" in t.describe()
    with pytest.raises(UserError, match="timm has no model 'resnet_nope'"):
        make("timm:resnet_nope")
    with pytest.raises(UserError, match="has no option 'colour'"):
        make("timm:resnet18", colour="red")
    with pytest.raises(UserError, match="must be true or false"):
        make("timm:resnet18", pretrained="maybe")


def test_timm_checkpoint_option(tmp_path):
    import timm

    model = timm.create_model("resnet10t", pretrained=False)
    torch.save(model.state_dict(), tmp_path / "w.pth")
    t = make("timm:resnet10t", checkpoint=str(tmp_path / "w.pth"))
    assert torch.equal(t.model.conv1[0].weight, model.conv1[0].weight)
    assert "weights from" in t.describe()
    with pytest.raises(UserError, match="does not exist"):
        make("timm:resnet10t", checkpoint=str(tmp_path / "missing.pth"))


def test_pretrained_weights_offline_error_names_cache_and_command():
    out = maia("layers", "timm:resnet18", env={"HF_HUB_OFFLINE": "1"})
    assert out.returncode == 2
    line = out.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "Hugging Face cache" in line and "timm.create_model('resnet18', pretrained=True)" in line
    assert "pretrained=false" in line


def test_unknown_layer_and_unit_errors(lite0):
    with pytest.raises(UserError, match="Unknown layer 'blocks.9'.*Valid layers: conv_stem"):
        lite0.system(Unit("blocks.9", 0))
    with pytest.raises(UserError, match="out of range.*320 units"):
        lite0.system(Unit("blocks.6", 320))
