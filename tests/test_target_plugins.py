"""Every target form: torchvision, timm, open_clip, hf, python, MAIA's aliases; token maps,
classifier outputs, SAE bases and loading errors. All offline, on random or shipped weights."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FIXTURES, maia
from maia_core import plugins
from maia_core.errors import UserError
from maia_core.torch_runtime.target import Preprocess, TorchTarget, as_map, token_grid
from maia_core.units import Unit

ANY_UNIT = FIXTURES / "replay_any_unit.json"


def make(spec: str, **options):
    entry, arg = plugins.registry("targets").resolve(spec)
    return entry.factory(arg, device="cpu", **options)


# -- MAIA's three targets --------------------------------------------------------------------


@pytest.mark.parametrize(
    "target, layers",
    [
        ("resnet152", ["conv1", "layer1", "layer2", "layer3", "layer4", "output"]),
        ("clip-RN50", ["layer1", "layer2", "layer3", "layer4"]),
        ("dino_vits8", [f"blocks.{i}.mlp.fc1" for i in range(12)]),
    ],
)
def test_maia_targets_list_maias_layers_offline(target, layers):
    out = maia("layers", target, "--target-option", "pretrained=false", "--json")
    assert out.returncode == 0, out.stderr
    listed = json.loads(out.stdout)
    assert [row["layer"] for row in listed] == layers
    if target == "dino_vits8":
        assert all(
            row["units"] == 1536 and row["spatial"] == [28, 28] and row["kind"] == "tokens"
            for row in listed
        )
    if target == "resnet152":
        assert listed[4] == {"layer": "layer4", "units": 2048, "spatial": [7, 7], "kind": "conv"}


@pytest.mark.parametrize(
    "target, units",
    [
        (
            "resnet152",
            [
                "--unit-file",
                str(FIXTURES / "neuron_indices/resnet152.json"),
                "--random",
                "1",
                "--seed",
                "4",
            ],
        ),
        ("clip-RN50", ["--units", "layer4=7"]),
        ("dino_vits8", ["--units", "blocks.11.mlp.fc1=45"]),
    ],
)
def test_replay_completes_on_maias_targets(tmp_path, target, units):
    out = maia(
        "run",
        "--target",
        target,
        "--target-option",
        "pretrained=false",
        *units,
        "--backbone",
        f"replay:{ANY_UNIT}",
        "--results",
        str(tmp_path),
        "--reporter",
        "json,html",
    )
    assert out.returncode == 0, out.stderr
    [result] = list(tmp_path.rglob("result.json"))
    assert json.loads(result.read_text())["status"] == "completed"
    history = json.loads((result.parent / "history.json").read_text())
    images = [p for m in history["messages"] for p in m["parts"] if p["type"] == "image"]
    assert len(images) == 3
    assert (result.parent / "report.html").is_file()


def test_maias_unit_file_is_read_unchanged():
    from maia_core.units import read_unit_file

    sel = read_unit_file(FIXTURES / "neuron_indices/resnet152.json")
    assert sel == {
        "conv1": [54, 61, 17],
        "layer1": [90, 86],
        "layer2": [62, 354],
        "layer3": [30, 672],
        "layer4": [0, 967, 1251],
    }


# -- transformer tokens ----------------------------------------------------------------------


def test_token_grid_inference():
    assert token_grid(197, (224, 224), None) == (1, (14, 14))
    assert token_grid(261, (224, 224), None) == (5, (16, 16))  # class + 4 registers
    assert token_grid(285, (224, 320), None) == (5, (14, 20))  # non-square
    assert token_grid(196, (224, 224), 0) == (0, (14, 14))  # SigLIP: no class token
    assert token_grid(10, (224, 224), 0) is None  # no grid with the given prefix


def white_patch(size_hw, patch, row, col):
    h, w = size_hw
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[row * patch : (row + 1) * patch, col * patch : (col + 1) * patch] = 255
    return Image.fromarray(img)


def changed_cells(target, layer, size_hw, patch, row, col):
    """Cells of the layer's map that change when one patch of the image turns white."""
    pre = target.preprocess
    x = pre.to_tensor([white_patch(size_hw, patch, row, col), Image.new("RGB", size_hw[::-1])])
    maps = target.forward_layers(x, [layer])[layer]
    diff = (maps[0] - maps[1]).abs().amax(0)
    return {tuple(int(v) for v in idx) for idx in (diff > 1e-5).nonzero()}


def test_vit_tokens_land_in_the_right_cell_non_square_with_registers():
    import timm

    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, reg_tokens=4, img_size=(224, 320)
    )
    target = TorchTarget(
        "vit",
        model,
        Preprocess(size=(224, 320), crop_pct=1.0),
        device="cpu",
        prefix_tokens=model.num_prefix_tokens,
    )
    info = target.layer("pos_drop")  # patch embeddings + position, before any mixing
    assert info.kind == "tokens" and info.spatial == (14, 20) and info.units == 192
    for row, col in [(0, 0), (3, 17), (13, 19)]:
        assert changed_cells(target, "pos_drop", (224, 320), 16, row, col) == {(row, col)}
    # inferring the 5 leading tokens gives the same layout
    inferred = TorchTarget("vit", model, Preprocess(size=(224, 320), crop_pct=1.0), device="cpu")
    assert changed_cells(inferred, "pos_drop", (224, 320), 16, 3, 17) == {(3, 17)}


def test_sequence_first_tokens_and_tuple_outputs():
    class SeqFirst(torch.nn.Module):
        """Patchify, prepend a class token, emit [N, B, C] and a (tokens, extra) tuple."""

        def __init__(self):
            super().__init__()
            self.patch = torch.nn.Conv2d(3, 6, 8, stride=8)
            self.tok = torch.nn.Identity()
            self.pair = torch.nn.Identity()

        def forward(self, x):
            p = self.patch(x).flatten(2).transpose(1, 2)  # [B, 16, 6]
            t = torch.cat([torch.zeros_like(p[:, :1]), p], 1)
            seq = self.tok(t.transpose(0, 1))  # [17, B, 6]
            return self.pair((seq.transpose(0, 1), "extra"))[0].mean(1)

    torch.manual_seed(0)
    target = TorchTarget("seq", SeqFirst(), Preprocess(size=32, crop_pct=1.0), device="cpu")
    assert target.layer("tok").spatial == (4, 4) and target.layer("pair").spatial == (4, 4)
    assert changed_cells(target, "tok", (32, 32), 8, 1, 2) == {(1, 2)}
    assert changed_cells(target, "pair", (32, 32), 8, 2, 3) == {(2, 3)}
    assert as_map(("x", {"a": torch.ones(1)})).shape == (1,)


# -- Hugging Face ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    """Small random transformers models saved to folders, loaded through hf:<folder>."""
    import transformers as tf

    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    specs = {
        "vit": (
            tf.ViTConfig(image_size=32, patch_size=8, **small),
            tf.ViTModel,
            tf.ViTImageProcessor(size={"height": 32, "width": 32}),
        ),
        "dinov2reg": (
            tf.Dinov2WithRegistersConfig(
                image_size=32, patch_size=8, num_register_tokens=4, **small
            ),
            tf.Dinov2WithRegistersModel,
            tf.BitImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}),
        ),
        "clip": (
            tf.CLIPConfig(
                vision_config=dict(image_size=32, patch_size=8, **small),
                text_config=dict(vocab_size=100, **small),
                projection_dim=16,
            ),
            tf.CLIPModel,
            tf.CLIPImageProcessor(
                size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
            ),
        ),
        "siglip": (
            tf.SiglipConfig(
                vision_config=dict(image_size=32, patch_size=8, **small),
                text_config=dict(vocab_size=100, **small),
            ),
            tf.SiglipModel,
            tf.SiglipImageProcessor(size={"height": 32, "width": 32}),
        ),
        "convnext": (
            tf.ConvNextConfig(
                hidden_sizes=[8, 16],
                depths=[1, 1],
                num_stages=2,
                num_labels=5,
                id2label={i: f"class{i}" for i in range(5)},
            ),
            tf.ConvNextForImageClassification,
            tf.ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=1.0),
        ),
    }
    folders = {}
    for name, (config, cls, processor) in specs.items():
        torch.manual_seed(0)
        folder = tmp_path_factory.mktemp(name)
        cls(config).save_pretrained(folder)
        processor.save_pretrained(folder)
        folders[name] = folder
    return folders


def test_hf_vit_token_mapping(hf_models):
    t = make(f"hf:{hf_models['vit']}")
    info = t.layer("embeddings")
    assert info.kind == "tokens" and info.spatial == (4, 4) and info.units == 32
    assert changed_cells(t, "embeddings", (32, 32), 8, 2, 1) == {(2, 1)}
    assert t.layer("layers.1").spatial == (4, 4)


def test_hf_dinov2_registers_clip_and_siglip(hf_models):
    dino = make(f"hf:{hf_models['dinov2reg']}")
    assert dino.prefix_tokens == 5 and dino.layer("embeddings").spatial == (4, 4)
    assert changed_cells(dino, "embeddings", (32, 32), 8, 3, 0) == {(3, 0)}
    assert dino.preprocess.size == (32, 32) and dino.preprocess.crop_pct == pytest.approx(32 / 36)
    clip = make(f"hf:{hf_models['clip']}")
    assert type(clip.model).__name__.startswith("CLIPVision")  # the vision tower only
    assert clip.layer("encoder.layers.0").spatial == (4, 4)
    siglip = make(f"hf:{hf_models['siglip']}")
    assert siglip.prefix_tokens == 0 and siglip.layer("embeddings").spatial == (4, 4)
    assert changed_cells(siglip, "embeddings", (32, 32), 8, 0, 3) == {(0, 3)}


def test_hf_classifier_head_names_output_units(hf_models, photos):
    t = make(f"hf:{hf_models['convnext']}")
    out = t.layer("output")
    assert out.kind == "classifier" and out.units == 5
    assert t.class_names == [f"class{i}" for i in range(5)]
    system = t.system(Unit("output", 3))
    probs, tops = system.call_classifier([photos["coffee"]])
    assert len(tops[0]) == 5 and {name for name, _ in tops[0]} == set(t.class_names)
    assert sum(p for _, p in tops[0]) == pytest.approx(1.0, abs=1e-3)


def test_hf_missing_model_offline_names_the_cache(tmp_path):
    out = maia(
        "layers",
        "hf:someone/not-cached-model",
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)},
    )
    assert out.returncode == 2
    line = out.stderr.strip()
    assert (
        "\n" not in line
        and str(tmp_path / "hub") in line
        and "hf download someone/not-cached-model" in line
    )


# -- classifier outputs ----------------------------------------------------------------------


def test_classifier_output_matches_softmax(photos):
    t = make("efficientnet_lite0")
    assert t.layer("output").kind == "classifier"
    system = t.system(Unit("output", 285))  # Egyptian cat
    assert "call_classifier" in dir(system)
    images = [photos["chelsea"], photos["coffee"]]
    probs, tops = system.call_classifier(images)
    x = t.preprocess.to_tensor([t.preprocess.view(i) for i in images])
    with torch.inference_mode():
        expected = t.model(x).softmax(-1)
    np.testing.assert_allclose(probs, expected[:, 285].numpy(), rtol=1e-5, atol=1e-6)
    assert tops[0][0][0] in ("tabby", "tiger cat", "Egyptian cat") and tops[1][0][0] == "espresso"
    assert tops[1][0][1] == pytest.approx(float(expected[1].max()), abs=1e-4)
    acts, seen = system.call_neuron(images)  # the class's probability, images unmasked
    np.testing.assert_allclose(acts, probs, rtol=1e-5)
    assert "no spatial map" in system.threshold_source


# -- SAE bases -------------------------------------------------------------------------------


def write_basis(path, C, K, seed=0, b_dec=True):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    tensors = {"W_enc": torch.randn(C, K, generator=g), "b_enc": torch.randn(K, generator=g) * 0.1}
    if b_dec:
        tensors["b_dec"] = torch.randn(C, generator=g) * 0.1
    save_file(tensors, str(path))
    return tensors


def test_sae_latents_match_a_hand_computation(tmp_path, photos):
    from maia_core.torch_runtime.basis import Basis

    t = make("efficientnet_lite0")
    tensors = write_basis(tmp_path / "sae.safetensors", 320, 12)
    info = t.add_basis(Basis.load("blocks.6", tmp_path / "sae.safetensors"))
    assert info.name == "blocks.6@sae" and info.units == 12 and info.spatial == (7, 7)
    imgs = [photos["chelsea"], photos["rocket"]]
    acts, masked = t.system(Unit("blocks.6@sae", 5)).call_neuron(imgs)
    x = t.preprocess.to_tensor([t.preprocess.view(i) for i in imgs])
    raw = t.forward_layers(x, ["blocks.6"])["blocks.6"]  # [B, 320, 7, 7]
    by_hand = torch.relu(
        torch.einsum(
            "bchw,c->bhw", raw - tensors["b_dec"][None, :, None, None], tensors["W_enc"][:, 5]
        )
        + tensors["b_enc"][5]
    )
    np.testing.assert_allclose(acts, by_hand.flatten(1).amax(1).numpy(), rtol=1e-4, atol=1e-5)
    full = t.forward_layers(x, ["blocks.6@sae"])["blocks.6@sae"]
    assert full.shape == (2, 12, 7, 7) and torch.allclose(full[:, 5], by_hand, atol=1e-5)


def test_bad_basis_files(tmp_path):
    from maia_core.torch_runtime.basis import Basis

    t = make("efficientnet_lite0")
    write_basis(tmp_path / "wrong.safetensors", 100, 4)
    with pytest.raises(UserError, match="expects 100 channels but layer 'blocks.6' has 320"):
        t.add_basis(Basis.load("blocks.6", tmp_path / "wrong.safetensors"))
    from safetensors.torch import save_file

    save_file({"W": torch.ones(2, 2)}, str(tmp_path / "nokeys.safetensors"))
    with pytest.raises(UserError, match="lacks W_enc, b_enc"):
        Basis.load("blocks.6", tmp_path / "nokeys.safetensors")
    (tmp_path / "junk.safetensors").write_text("junk")
    with pytest.raises(UserError, match="not a readable safetensors file"):
        Basis.load("blocks.6", tmp_path / "junk.safetensors")
    with pytest.raises(UserError, match="does not exist"):
        Basis.load("blocks.6", tmp_path / "missing.safetensors")


def test_train_sae_then_investigate_a_latent(tmp_path, photos):
    folder = tmp_path / "images"
    folder.mkdir()
    for name, img in photos.items():
        img.save(folder / f"{name}.jpg")
    out = maia(
        "basis",
        "train-sae",
        "--target",
        "efficientnet_lite0",
        "--layer",
        "blocks.5",
        "--images",
        str(folder),
        "--latents",
        "8",
        "--steps",
        "60",
        "--out",
        str(tmp_path / "toy.safetensors"),
        "--device",
        "cpu",
    )
    assert out.returncode == 0, out.stderr
    assert "variance explained" in out.stdout and (tmp_path / "toy.safetensors").is_file()
    layers = maia(
        "layers",
        "efficientnet_lite0",
        "--basis",
        f"blocks.5={tmp_path / 'toy.safetensors'}",
        "--json",
    )
    assert {"layer": "blocks.5@toy", "units": 8, "spatial": [7, 7], "kind": "conv"} in json.loads(
        layers.stdout
    )
    run = maia(
        "run",
        "--target",
        "efficientnet_lite0",
        "--basis",
        f"blocks.5={tmp_path / 'toy.safetensors'}",
        "--units",
        "blocks.5@toy=2",
        "--backbone",
        f"replay:{ANY_UNIT}",
        "--results",
        str(tmp_path / "r"),
        "--reporter",
        "json",
    )
    assert run.returncode == 0, run.stderr
    assert (
        json.loads(
            (
                tmp_path / "r/replay-replay_any_unit/efficientnet_lite0/blocks.5@toy/2/result.json"
            ).read_text()
        )["status"]
        == "completed"
    )


# -- torchvision, open_clip, python ----------------------------------------------------------


def test_torchvision_random_weights_and_transforms():
    t = make("torchvision:resnet18", pretrained="false")
    assert t.preprocess == Preprocess(size=224, crop_pct=224 / 256, interpolation="bilinear")
    assert t.layer("layer4").units == 512 and t.layer("output").kind == "classifier"
    assert t.class_names[0] == "tench"
    with pytest.raises(UserError, match="has no weights 'IMAGENET9'"):
        make("torchvision:resnet18", weights="IMAGENET9")
    with pytest.raises(UserError, match="torchvision has no model 'resnet19'"):
        make("torchvision:resnet19")


def test_torch_home_is_respected(tmp_path):
    import torchvision

    model = torchvision.models.resnet18()
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(model.state_dict(), checkpoints / "resnet18-f37072fd.pth")
    code = (
        "import torch, sys\n"
        "from maia_core import plugins\n"
        "e, a = plugins.registry('targets').resolve('torchvision:resnet18')\n"
        "t = e.factory(a, device='cpu')\n"
        f"ref = torch.load({str(checkpoints / 'resnet18-f37072fd.pth')!r})\n"
        "print('SAME', torch.equal(t.model.conv1.weight, ref['conv1.weight']))\n"
    )
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "TORCH_HOME": str(tmp_path)},
    )
    assert "SAME True" in out.stdout, out.stderr[-2000:]


def test_missing_torchvision_weights_name_the_file_and_the_command(tmp_path):
    out = maia("layers", "resnet152", env={"TORCH_HOME": str(tmp_path)})
    assert out.returncode == 2
    line = out.stderr.strip()
    assert "\n" not in line
    assert str(tmp_path / "hub" / "checkpoints" / "resnet152-394f9c45.pth") in line
    assert "torchvision.models.get_model('resnet152', weights='IMAGENET1K_V1')" in line


def test_missing_open_clip_weights_offline(tmp_path):
    out = maia(
        "layers", "open_clip:RN50/openai", env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    )
    assert out.returncode == 2
    line = out.stderr.strip()
    assert "\n" not in line and str(tmp_path / "hub") in line
    assert "open_clip.create_model_and_transforms('RN50', pretrained='openai')" in line


def test_open_clip_vit_tokens_and_preprocessing():
    t = make("open_clip:ViT-B-32")
    assert t.preprocess.size == (224, 224) and t.preprocess.interpolation == "bicubic"
    assert t.preprocess.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    block = t.layer("transformer.resblocks.3")
    assert block.kind == "tokens" and block.spatial == (7, 7) and block.units == 768
    assert t.layer("output").kind == "vector" and t.layer("output").units == 512


def test_python_factory_target(tmp_path, photos):
    (tmp_path / "mynets.py").write_text(
        "import torch\nfrom collections import OrderedDict\nfrom torchvision import transforms as T\n"
        "def make(width='4'):\n"
        "    torch.manual_seed(0)\n"
        "    net = torch.nn.Sequential(OrderedDict(conv=torch.nn.Conv2d(3, int(width), 3, padding=1), pool=torch.nn.AdaptiveAvgPool2d(1), flat=torch.nn.Flatten()))\n"
        "    pre = T.Compose([T.Resize(40), T.CenterCrop(32), T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])\n"
        "    return net, pre\n"
    )
    t = make(f"python:{tmp_path / 'mynets.py'}:make", width="6")
    assert t.layer("conv").units == 6 and t.layer("conv").spatial == (32, 32)
    assert t.preprocess == Preprocess(
        size=32, crop_pct=0.8, interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3
    )
    acts, _ = t.system(Unit("conv", 1)).call_neuron([photos["rocket"]])
    assert len(acts) == 1
    with pytest.raises(UserError, match="has no function 'nope'"):
        make(f"python:{tmp_path / 'mynets.py'}:nope")
    with pytest.raises(UserError, match="Expected python:<module or file.py>:<factory>"):
        make("python:justamodule")
    out = maia(
        "layers", "python:mynets:make", "--json", cwd=tmp_path
    )  # a module in the current folder
    assert out.returncode == 0, out.stderr
    assert {"layer": "conv", "units": 4, "spatial": [32, 32], "kind": "conv"} in json.loads(
        out.stdout
    )


# -- precision and loading -------------------------------------------------------------------


def test_bf16_autocast_stays_close(photos):
    t32 = make("efficientnet_lite0")
    t16 = make("efficientnet_lite0", precision="bf16")
    imgs = [photos["chelsea"], photos["coffee"]]
    a32, _ = t32.system(Unit("blocks.6", 10)).call_neuron(imgs)
    a16, _ = t16.system(Unit("blocks.6", 10)).call_neuron(imgs)
    np.testing.assert_allclose(a16, a32, rtol=0.1, atol=0.1)
    with pytest.raises(UserError, match="Unknown --precision 'fp8'"):
        make("efficientnet_lite0", precision="fp8")


def test_model_loads_once_per_run(tmp_path, thirdparty_env):
    out = maia(
        "run",
        "--target",
        "toynet",
        "--units",
        "conv2=0-2",
        "--backbone",
        f"replay:{ANY_UNIT}",
        "--results",
        str(tmp_path),
        "--reporter",
        "json",
        env=thirdparty_env,
    )
    assert out.returncode == 0, out.stderr
    assert len(list(tmp_path.rglob("result.json"))) == 3
    assert (tmp_path / "logs" / "host.log").read_text().count("toynet loaded") == 1
