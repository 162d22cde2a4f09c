"""The diffusers tools (flux, flux-kontext, sdxl-turbo, instruct-pix2pix) on tiny pipelines.

Each pipeline is built here with random weights and offline tokenizers, saved with
``save_pretrained`` and loaded back through the plugin's factory (``model=<folder>``), so the
plugin's real loading, seeding, batching and generation code runs, on the CPU, in seconds.
Nothing reaches the network (conftest sets HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from PIL import Image  # noqa: E402

from maia_core import hookimpl, plugins  # noqa: E402
from maia_core.errors import ToolError, UserError  # noqa: E402
from maia_core.tools import CallScope, ToolContext, call_scope  # noqa: E402
from maia_core.torch_runtime.target import hf_cache_dir  # noqa: E402
from maia_core.units import Unit  # noqa: E402
from maia_plugins.tools import diffusers_tools  # noqa: E402

WORDS = [
    "a",
    "dog",
    "cat",
    "on",
    "grass",
    "red",
    "blue",
    "green",
    "car",
    "house",
    "tree",
    "beach",
    "snow",
    "brick",
    "wall",
    "sky",
    "the",
    "with",
    "replace",
    "change",
    "color",
    "colour",
    "of",
    "to",
    "background",
    "make",
    "it",
    "night",
    "winter",
]


# -- tiny pipelines ---------------------------------------------------------------------------


def tokenizer():
    """A word-level tokenizer built in memory (no download); it saves as tokenizer.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "</s>", "<s>", *WORDS])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", vocab["</s>"])]
    )
    # Without model_max_length, padding="max_length" pads to int(1e30).
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token="[PAD]",
        unk_token="[UNK]",
        eos_token="</s>",
        model_max_length=77,
    )


def clip_config():
    from transformers import CLIPTextConfig

    # eos_token_id=2 keeps CLIP's pooling on argmax(input_ids), which any vocabulary allows.
    return CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=2,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-5,
        num_attention_heads=4,
        num_hidden_layers=5,
        pad_token_id=1,
        vocab_size=1000,
        hidden_act="gelu",
        projection_dim=32,
    )


def flux_components(guidance_embeds: bool) -> dict:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(0)
    return {
        "transformer": FluxTransformer2DModel(
            patch_size=1,
            in_channels=4,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=32,
            axes_dims_rope=[4, 4, 8],
            guidance_embeds=guidance_embeds,
        ),
        "text_encoder": CLIPTextModel(clip_config()),
        "tokenizer": tokenizer(),
        # d_model is the transformer's joint_attention_dim.
        "text_encoder_2": T5EncoderModel(
            T5Config(vocab_size=1000, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4)
        ),
        "tokenizer_2": tokenizer(),
        "vae": AutoencoderKL(
            sample_size=32,
            in_channels=3,
            out_channels=3,
            block_out_channels=(4,),
            layers_per_block=1,
            latent_channels=1,
            norm_num_groups=1,
            use_quant_conv=False,
            use_post_quant_conv=False,
            shift_factor=0.0609,
            scaling_factor=1.5035,
        ),
        "scheduler": FlowMatchEulerDiscreteScheduler(),
    }


def sdxl_pipeline():
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(2, 4),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 * 8 + 32
        cross_attention_dim=64,  # two 32-wide text encoders
        norm_num_groups=1,
    )
    return StableDiffusionXLPipeline(
        vae=_sd_vae(),
        text_encoder=CLIPTextModel(clip_config()),
        text_encoder_2=CLIPTextModelWithProjection(clip_config()),
        tokenizer=tokenizer(),
        tokenizer_2=tokenizer(),
        unet=unet,
        scheduler=EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            steps_offset=1,
            beta_schedule="scaled_linear",
            timestep_spacing="leading",
        ),
    )


def pix2pix_pipeline():
    from diffusers import (
        PNDMScheduler,
        StableDiffusionInstructPix2PixPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=8,  # the noisy latents and the original's latents
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
    )
    return StableDiffusionInstructPix2PixPipeline(
        vae=_sd_vae(),
        text_encoder=CLIPTextModel(clip_config()),
        tokenizer=tokenizer(),
        unet=unet,
        scheduler=PNDMScheduler(skip_prk_steps=True),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _sd_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        sample_size=128,
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """Folders holding saved tiny pipelines: flux (dev-like), schnell, kontext, sdxl, pix2pix."""
    from diffusers import FluxKontextPipeline, FluxPipeline

    root = tmp_path_factory.mktemp("tiny-pipelines")
    built = {
        "flux": FluxPipeline(**flux_components(guidance_embeds=True)),
        "schnell": FluxPipeline(**flux_components(guidance_embeds=False)),
        "kontext": FluxKontextPipeline(**flux_components(guidance_embeds=True)),
        "sdxl": sdxl_pipeline(),
        "pix2pix": pix2pix_pipeline(),
    }
    folders = {}
    for name, pipe in built.items():
        folders[name] = root / name
        pipe.save_pretrained(folders[name])
    return folders


# -- helpers ----------------------------------------------------------------------------------


def registered(implementation: str):
    """The registry entry of ``implementation``, as plugin discovery found it."""
    capability = diffusers_tools.CAPABILITY[implementation]
    found = [
        e
        for e in plugins.registry("tools").entries.values()
        if e.name == implementation and e.meta["capability"] == capability
    ]
    assert len(found) == 1, f"{capability}={implementation} is registered {len(found)} times"
    return found[0]


def make(implementation: str, ctx: ToolContext | None = None, **options: str):
    """A tool built as maia builds it: the factory registered under ``implementation``."""
    factory = registered(implementation).factory
    return factory(ctx or ToolContext(target=None, device="cpu"), **options)


def call(tool, *args, **kwargs):
    """Call ``tool`` as one investigation's cell does; returns (result, records, displayed)."""
    parts: list = []
    scope = CallScope(unit=Unit("layer", 0), sink=parts.append)
    with call_scope(scope, (tool.settings.capability, tool.name)):
        result = tool(*args, **kwargs)
    return result, scope.records, parts


def pixels(images) -> list[np.ndarray]:
    return [np.asarray(im, dtype=np.int16) for im in images]


def same(a, b) -> bool:
    return a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b))


class Calls:
    """What a denoiser was really called with: a forward pre-hook on the module."""

    def __init__(self, module):
        self.batches: list[int] = []
        self.guidance: list[float] = []
        self.handle = module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, _module, args, kwargs):
        x = kwargs.get("hidden_states", kwargs.get("sample", args[0] if args else None))
        self.batches.append(int(x.shape[0]))
        g = kwargs.get("guidance")
        if g is not None:
            self.guidance.append(float(g.flatten()[0]))

    def remove(self) -> None:
        self.handle.remove()


# -- discovery, availability ------------------------------------------------------------------


def test_module_imports_nothing_heavy():
    code = (
        "import sys, maia_plugins.tools.diffusers_tools as m; "
        "print(sorted(n for n in ('torch', 'diffusers', 'transformers') if n in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_registrations_through_discovery():
    expected = {
        "flux": "text2image",
        "flux-kontext": "edit_images",
        "sdxl-turbo": "text2image",
        "instruct-pix2pix": "edit_images",
    }
    for name, capability in expected.items():
        entry = registered(name)
        assert entry.plugin == "diffusers_tools" and entry.meta["capability"] == capability
        assert not entry.meta.get("default"), "the offline scenes tools are the fallback"
        assert entry.help
    for name in ("flux", "flux-kontext"):
        assert registered(name).meta["priority"] == 20
        assert callable(registered(name).meta["available"])
    for name in ("sdxl-turbo", "instruct-pix2pix"):
        entry = registered(name)
        assert "available" not in entry.meta and not entry.meta.get("priority")
    # Never the choice where no GPU can run FLUX, whatever else is installed.
    for capability in ("text2image", "edit_images"):
        chosen = plugins.select_tools([capability], device="cpu")[capability]
        assert chosen.plugin != "diffusers_tools"


def _fake_cache(root: Path, repo: str, folder: Path, shard: bool = False) -> Path:
    """A Hugging Face cache holding ``folder`` as the snapshot of ``repo``."""
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text("0" * 40)
    snapshot = repo_dir / "snapshots" / ("0" * 40)
    shutil.copytree(folder, snapshot)
    if shard:
        from diffusers import FluxTransformer2DModel

        # Re-save the transformer in shards, as the real FLUX.1-dev is.
        shutil.rmtree(snapshot / "transformer")
        FluxTransformer2DModel.from_pretrained(folder / "transformer").save_pretrained(
            snapshot / "transformer", max_shard_size="20KB"
        )
    return snapshot


class _Fallback:
    """Stands in for the offline scenes tools: the implementations registered as default."""

    @hookimpl
    def register_tools(self, register):
        register("fallback-t2i", lambda ctx: None, capability="text2image", default=True)
        register("fallback-edit", lambda ctx: None, capability="edit_images", default=True)


def is_fallback(entry) -> bool:
    """The implementation registered with default=True: the stand-in, or scenes once it is in."""
    return bool(entry.meta.get("default")) and entry.plugin != "diffusers_tools"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, and a fallback plugin registered for the duration."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    plugins.reset_plugins()
    plugins.register_plugin(_Fallback(), "fallback")
    yield cache
    plugins.reset_plugins()


def test_available_needs_cuda_memory_and_cached_weights(hub_cache, tiny, monkeypatch):
    # This machine may have no GPU: say how much memory "the GPU" has. Everything else (the
    # device string, the cache, plugin selection) is real.
    memory = {"gib": 79.1}
    monkeypatch.setattr(diffusers_tools, "gpu_memory_gib", lambda device: memory["gib"])
    assert not diffusers_tools.flux_available("cpu")
    assert not diffusers_tools.flux_available("cuda")  # the cache is empty
    assert not diffusers_tools.flux_kontext_available("cuda:0")
    chosen = plugins.select_tools(None, device="cuda")
    assert is_fallback(chosen["text2image"]) and is_fallback(chosen["edit_images"])

    snapshot = _fake_cache(hub_cache, diffusers_tools.FLUX_DEV, tiny["flux"], shard=True)
    assert list((snapshot / "transformer").glob("*.index.json")), "the cache must be sharded"
    assert diffusers_tools.flux_available("cuda")
    assert diffusers_tools.flux_available("cuda:1")
    assert not diffusers_tools.flux_available("cpu")
    assert not diffusers_tools.flux_available("cudaX")
    assert not diffusers_tools.flux_kontext_available("cuda")  # Kontext is not cached
    assert plugins.select_tools(None, device="cuda")["text2image"].name == "flux"
    assert is_fallback(plugins.select_tools(None, device="cuda")["edit_images"])
    assert is_fallback(plugins.select_tools(None, device="cpu")["text2image"])
    assert plugins.select_tools(None, device="cpu")["text2image"].name != "flux"
    # FLUX and Kontext load together as defaults: a 48 GB GPU gets the fallback.
    memory["gib"] = 44.4
    assert not diffusers_tools.flux_available("cuda")
    assert is_fallback(plugins.select_tools(None, device="cuda")["text2image"])
    memory["gib"] = 79.1

    # A download cut short (one shard missing) counts as absent, so maia falls back.
    shard = sorted((snapshot / "transformer").glob("*-of-*.safetensors"))[-1]
    shard.unlink()
    assert not diffusers_tools.flux_available("cuda")
    assert is_fallback(plugins.select_tools(None, device="cuda")["text2image"])


def test_gpu_memory_is_none_without_that_gpu():
    if not torch.cuda.is_available():
        assert diffusers_tools.gpu_memory_gib("cuda") is None
    else:
        assert diffusers_tools.gpu_memory_gib("cuda:0") > 0
    assert diffusers_tools.gpu_memory_gib("cuda:99") is None


def test_effective_precision():
    ctx = ToolContext(target=None, device="cpu", precision="fp32")

    def effective(implementation, device_type, **options):
        settings = diffusers_tools.parse_settings(implementation, ctx, options)
        return diffusers_tools.effective_precision(settings, device_type)

    # FLUX's weights are bf16: on a GPU the run's default fp32 becomes bf16...
    assert effective("flux", "cuda") == "bf16"
    assert effective("flux-kontext", "cuda") == "bf16"
    # ...unless the tool's own option asks for fp32; elsewhere the precision is as asked.
    assert effective("flux", "cuda", precision="fp32") == "fp32"
    assert effective("flux", "cpu") == "fp32"
    assert effective("sdxl-turbo", "cuda") == "fp32"
    assert effective("flux", "cuda", precision="fp16") == "fp16"
    ctx.precision = "fp16"
    assert effective("flux", "cuda") == "fp16"


def test_a_repo_id_loads_from_the_cache(hub_cache, tiny):
    """The repo-id path (not a folder) resolves through the offline Hugging Face cache."""
    _fake_cache(hub_cache, diffusers_tools.FLUX_DEV, tiny["flux"])
    tool = make("flux", size="16", steps="1")
    (image,), records, _ = call(tool, "a dog")
    assert image.size == (16, 16)
    assert records[0]["model"] == diffusers_tools.FLUX_DEV


# -- errors -----------------------------------------------------------------------------------


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_unknown_and_bad_options_are_one_line_user_errors():
    with pytest.raises(UserError) as exc:
        make("flux", sampler="euler")
    message = _one_line(exc)
    assert "'sampler'" in message and "max_sequence_length" in message and "steps" in message
    with pytest.raises(UserError) as exc:
        make("sdxl-turbo", image_guidance="1.5")
    assert "'image_guidance'" in _one_line(exc)
    bad = [
        ("flux", {"steps": "many"}, "text2image.steps"),
        ("flux", {"steps": "0"}, "between 1 and 1000"),
        ("flux", {"size": "big"}, "WIDTHxHEIGHT"),
        ("flux", {"size": "4x4"}, "out of range"),
        ("flux", {"batch_size": "0"}, "batch_size"),
        ("flux", {"max_sequence_length": "600"}, "between 1 and 512"),
        ("flux", {"precision": "fp8"}, "fp32, bf16, fp16"),
        ("flux", {"cpu_offload": "maybe"}, "true or false"),
        ("flux-kontext", {"size": "64x32"}, "aspect ratio"),
        ("instruct-pix2pix", {"image_guidance": "x"}, "edit_images.image_guidance"),
    ]
    for implementation, options, expected in bad:
        with pytest.raises(UserError) as exc:
            make(implementation, **options)
        assert expected in _one_line(exc), (implementation, options, str(exc.value))


def test_missing_weights_name_the_cache_and_the_fetch_command(hub_cache):
    with pytest.raises(UserError) as exc:
        make("flux", model="nobody/not-cached-flux")
    message = _one_line(exc)
    assert hf_cache_dir() in message
    assert "hf download nobody/not-cached-flux" in message
    with pytest.raises(UserError) as exc:
        make("flux-kontext")  # FLUX.1-Kontext-dev, not cached here
    message = _one_line(exc)
    assert f"hf download {diffusers_tools.FLUX_KONTEXT}" in message and "gated" in message


def test_bad_model_folders(tmp_path):
    with pytest.raises(UserError) as exc:
        make("flux", model=str(tmp_path))
    assert "model_index.json" in _one_line(exc)
    with pytest.raises(UserError) as exc:
        make("flux", model=str(tmp_path / "no" / "such" / "folder"))
    assert "neither a folder nor a Hugging Face repo id" in _one_line(exc)


def test_wrong_pipeline_kind_and_cpu_offload_on_cpu(tiny):
    with pytest.raises(UserError) as exc:
        make("instruct-pix2pix", model=str(tiny["flux"]))
    assert "StableDiffusionInstructPix2PixPipeline" in _one_line(exc)
    with pytest.raises(UserError) as exc:
        make("flux", model=str(tiny["flux"]), cpu_offload="true")
    assert "needs a CUDA device" in _one_line(exc)


def test_missing_diffusers_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # as if it were not installed
    with pytest.raises(UserError) as exc:
        make("flux")
    assert "pip install 'maia[diffusers]'" in _one_line(exc)


# -- flux -------------------------------------------------------------------------------------


def test_offline_tokenizers_round_trip(tiny):
    """The saved folders hold tokenizer.json, and the loaded pipeline tokenizes as built."""
    import json

    index = json.loads((tiny["flux"] / "model_index.json").read_text())
    assert index["tokenizer"][0] == index["tokenizer_2"][0] == "transformers"
    for folder in ("tokenizer", "tokenizer_2"):
        assert (tiny["flux"] / folder / "tokenizer.json").is_file()
    tool = make("flux", model=str(tiny["flux"]), size="16", steps="1")
    built = tokenizer()
    for loaded in (tool.pipeline.pipe.tokenizer, tool.pipeline.pipe.tokenizer_2):
        assert loaded.model_max_length == 77
        ids = loaded("a red car on grass", padding="max_length", max_length=8)["input_ids"]
        assert ids == built("a red car on grass", padding="max_length", max_length=8)["input_ids"]
        words = ["a", "red", "car", "on", "grass", "</s>"]
        assert ids[:6] == built.convert_tokens_to_ids(words)
        assert ids[6:] == [built.pad_token_id] * 2


def test_flux_images_seeds_and_records(tiny):
    tool = make("flux", model=str(tiny["flux"]), size="24x16", steps="2", batch_size="2")
    prompts = ["a dog on grass", "a dog on grass", "a red car"]
    images, records, parts = call(tool, prompts, seed=7)
    assert len(images) == 3 and all(isinstance(im, Image.Image) for im in images)
    assert all(im.size == (24, 16) and im.mode == "RGB" for im in images)
    assert parts == []  # nothing to note
    assert records == [
        {
            "tool": "text2image",
            "implementation": "flux",
            "prompts": prompts,
            "seed": 7,
            "model": str(tiny["flux"]),
            "steps": 2,
            "guidance": 5.5,
            "size": "24x16",
            "batch_size": 2,
            "precision": "fp32",
            "max_sequence_length": 256,
        }
    ]
    # A repeated prompt (seed + i, even within one batch) and distinct prompts: distinct images.
    assert not same(images[0], images[1]) and not same(images[0], images[2])
    again, _, _ = call(tool, prompts, seed=7)
    assert all(same(a, b) for a, b in zip(images, again))
    other, _, _ = call(tool, prompts, seed=8)
    assert not any(same(a, b) for a, b in zip(images, other))
    # Image i comes from seed + i whatever its batch: the second image, made alone from seed 8
    # (to within rounding: a batched matmul may round differently).
    (alone,), _ = tool.generate(["a dog on grass"], 8)
    assert np.abs(pixels([alone])[0] - pixels([images[1]])[0]).max() <= 1


def test_flux_options_reach_the_pipeline(tiny):
    tool = make(
        "flux", model=str(tiny["flux"]), size="16", steps="3", guidance="2.0", batch_size="2"
    )
    calls = Calls(tool.pipeline.pipe.transformer)
    try:
        images, _, _ = call(tool, ["a dog", "a cat", "a car"], seed=1)
    finally:
        calls.remove()
    # 3 steps for each of two batches, of 2 and 1 images; guidance as asked.
    assert calls.batches == [2, 2, 2, 1, 1, 1]
    assert calls.guidance == [2.0] * 6
    assert [im.size for im in images] == [(16, 16)] * 3
    # Guidance has a real effect on this (guidance-embedding) transformer.
    other = make("flux", model=str(tiny["flux"]), size="16", steps="3", guidance="9.0")
    changed, _, _ = call(other, ["a dog"], seed=1)
    assert not same(changed[0], images[0])


def test_flux_size_not_a_multiple_comes_back_as_asked(tiny):
    tool = make("flux", model=str(tiny["flux"]), size="17x9", steps="1")
    assert tool.make_size == (18, 10)  # the tiny VAE makes multiples of 2
    images, records, _ = call(tool, ["a dog"])
    assert images[0].size == (17, 9) and records[0]["size"] == "17x9"


def test_guidance_distilled_flux_gets_schnell_defaults(tiny):
    tool = make("flux", model=str(tiny["schnell"]), size="16")
    assert (tool.steps, tool.guidance) == (4, 0.0)
    calls = Calls(tool.pipeline.pipe.transformer)
    try:
        _, records, _ = call(tool, ["a dog"])
    finally:
        calls.remove()
    assert calls.batches == [1] * 4 and calls.guidance == []
    assert records[0]["steps"] == 4 and records[0]["guidance"] == 0.0
    with pytest.raises(UserError) as exc:
        make("flux", model=str(tiny["schnell"]), guidance="3.5")
    assert "guidance-distilled" in _one_line(exc)


def test_precision_and_device_reach_the_pipeline(tiny):
    ctx = ToolContext(target=None, device="cpu", precision="bf16")
    tool = make("flux", ctx, model=str(tiny["flux"]), size="16", steps="1")
    pipe = tool.pipeline.pipe
    for part in (pipe.transformer, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        assert part.dtype == torch.bfloat16 and part.device.type == "cpu"
    images, records, _ = call(tool, ["a dog"])
    assert images[0].size == (16, 16) and records[0]["precision"] == "bf16"
    # The tool's own precision option overrides the run's, and "auto" resolves to a device.
    tool = make(
        "flux", ToolContext(target=None, device="auto", precision="bf16"), model=str(tiny["flux"])
    )
    assert tool.pipeline.pipe.transformer.dtype == torch.bfloat16
    tool = make(
        "flux",
        ToolContext(target=None, device="auto", precision="bf16"),
        model=str(tiny["flux"]),
        precision="fp32",
    )
    assert tool.pipeline.pipe.transformer.dtype == torch.float32
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert tool.pipeline.pipe.transformer.device.type == expected


def test_long_prompts_are_noted(tiny):
    tool = make("flux", model=str(tiny["flux"]), size="16", steps="1", max_sequence_length="4")
    _, records, parts = call(tool, ["a dog", "a red car on grass"])
    notes = [p.text for p in parts]
    assert len(notes) == 1
    assert "a red car on grass" in notes[0] and "reads only the first 4" in notes[0]
    assert records[0]["max_sequence_length"] == 4


def test_a_model_loads_once_per_host(tiny):
    from maia_plugins.tools import diffusers_pipelines

    model = str(tiny["flux"])
    ctx = ToolContext(target=None, device="cpu")
    before = diffusers_pipelines.LOADS[model]
    first = make("flux", ctx, model=model, steps="1")
    second = make("flux", ctx, model=model, steps="2", size="16")
    assert diffusers_pipelines.LOADS[model] == before + 1
    assert first.pipeline is second.pipeline
    # Another host (context) loads its own; another precision is another model.
    make("flux", ToolContext(target=None, device="cpu"), model=model)
    make("flux", ctx, model=model, precision="bf16")
    assert diffusers_pipelines.LOADS[model] == before + 3


def test_out_of_memory_becomes_a_tool_error(tiny):
    tool = make("flux", model=str(tiny["flux"]), size="16", steps="1")

    def exhausted(*_args, **_kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    handle = tool.pipeline.pipe.transformer.register_forward_pre_hook(exhausted)
    try:
        with pytest.raises(ToolError) as exc:
            call(tool, ["a dog", "a cat"])
    finally:
        handle.remove()
    message = str(exc.value)
    assert "ran out of memory" in message and "fewer images" in message
    assert "cpu_offload=true" in message and "sdxl-turbo" in message
    assert not tool.pipeline.lock.locked()
    images, _, _ = call(tool, ["a dog"])  # the tool still works
    assert len(images) == 1

    def broken(*_args, **_kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    handle = tool.pipeline.pipe.transformer.register_forward_pre_hook(broken)
    try:
        with pytest.raises(RuntimeError, match="shapes"):  # a bug stays a bug
            call(tool, ["a dog"])
    finally:
        handle.remove()


def test_concurrent_investigations_share_one_tool(tiny):
    tool = make("flux", model=str(tiny["flux"]), size="16", steps="2")
    prompts = {0: ["a dog", "a cat"], 1: ["a red car", "a tree"], 2: ["snow", "a beach"]}
    serial = {k: tool.generate(p, 100 + k)[0] for k, p in prompts.items()}
    results: dict[int, list] = {}
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            results[k] = tool.generate(prompts[k], 100 + k)[0]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for k in prompts:
        assert all(same(a, b) for a, b in zip(serial[k], results[k]))


# -- sdxl-turbo -------------------------------------------------------------------------------


def test_sdxl_turbo(tiny):
    tool = make("sdxl-turbo", model=str(tiny["sdxl"]), size="24x16", steps="2")
    assert type(tool.pipeline.pipe).__name__ == "StableDiffusionXLPipeline"
    calls = Calls(tool.pipeline.pipe.unet)
    try:
        images, records, _ = call(tool, ["a dog", "a cat", "a dog"], seed=3)
    finally:
        calls.remove()
    assert calls.batches == [3, 3]  # 2 steps, one batch, no classifier-free guidance
    assert [im.size for im in images] == [(24, 16)] * 3
    assert all(isinstance(im, Image.Image) for im in images)
    assert not same(images[0], images[1]) and not same(images[0], images[2])
    again, _, _ = call(tool, ["a dog", "a cat", "a dog"], seed=3)
    assert all(same(a, b) for a, b in zip(images, again))
    assert records[0]["steps"] == 2 and records[0]["guidance"] == 0.0
    assert records[0]["model"] == str(tiny["sdxl"])
    defaults = make("sdxl-turbo", model=str(tiny["sdxl"]))
    assert (defaults.steps, defaults.guidance, defaults.size) == (4, 0.0, (512, 512))


# -- edit_images ------------------------------------------------------------------------------


def originals() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)),  # 48x32, not square
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)),
    ]


def test_kontext_edits_keep_the_original_size(tiny):
    tool = make("flux-kontext", model=str(tiny["kontext"]), size="16", steps="2")
    assert (tool.steps, tool.guidance) == (2, 2.5)
    base = originals()
    # Made at the original's aspect ratio with about 16x16 pixels, then resized back.
    assert tool.working_size((48, 32)) == (20, 14)
    assert tool.working_size((20, 20)) == (16, 16)
    made, notes = tool.edit(base, ["make it night", "make it winter"], 5)
    assert [im.size for im in made] == [(20, 14), (16, 16)] and notes == [None, None]

    instructions = ["make it night", "replace the dog with a cat", "make it night"]
    (out, prompts), records, _ = call(tool, [base[0], base[1], base[0]], instructions)
    assert len(out) == 6 and all(isinstance(im, Image.Image) for im in out)
    assert same(out[0], base[0]) and same(out[2], base[1])
    assert [im.size for im in out] == [(48, 32), (48, 32), (20, 20), (20, 20), (48, 32), (48, 32)]
    assert prompts == [
        "Original Image",
        "Editing Prompt: make it night",
        "Original Image",
        "Editing Prompt: replace the dog with a cat",
        "Original Image",
        "Editing Prompt: make it night",
    ]
    assert not same(out[1], out[5])  # one instruction twice in a call: two seeds
    record = records[0]
    assert record["prompts"] == instructions and record["steps"] == 2
    assert record["guidance"] == 2.5 and record["working_size"] == "16x16"
    assert record["max_sequence_length"] == 256


def test_kontext_seeds_and_options(tiny):
    tool = make("flux-kontext", model=str(tiny["kontext"]), size="12", steps="2", guidance="4")
    base = originals()[0]
    calls = Calls(tool.pipeline.pipe.transformer)
    try:
        first, _ = tool.edit([base, base], ["make it night", "make it winter"], 11)
    finally:
        calls.remove()
    assert calls.batches == [2, 2] and calls.guidance == [4.0, 4.0]
    again, _ = tool.edit([base, base], ["make it night", "make it winter"], 11)
    assert all(same(a, b) for a, b in zip(first, again))
    other, _ = tool.edit([base, base], ["make it night", "make it winter"], 12)
    assert not any(same(a, b) for a, b in zip(first, other))
    # Automatic working sizes: small originals go up to 512x512, big ones down to 1024x1024.
    auto = make("flux-kontext", model=str(tiny["kontext"]), steps="1")
    auto.multiple = 16  # FLUX's real latent grid, for the arithmetic below
    assert auto.working_size((224, 224)) == (512, 512)
    assert auto.working_size((768, 512)) == (768, 512)
    assert auto.working_size((2048, 1536)) == (1184, 880)
    assert auto.parameters()["working_size"] == "auto (512x512 to 1024x1024 pixels)"


def test_instruct_pix2pix(tiny):
    from diffusers import EulerAncestralDiscreteScheduler

    tool = make("instruct-pix2pix", model=str(tiny["pix2pix"]), size="16", steps="2")
    assert isinstance(tool.pipeline.pipe.scheduler, EulerAncestralDiscreteScheduler)
    assert (tool.steps, tool.guidance, tool.image_guidance) == (2, 7.5, 1.5)
    base = originals()
    calls = Calls(tool.pipeline.pipe.unet)
    try:
        (out, prompts), records, _ = call(tool, base, ["make it snow", "make it night"])
    finally:
        calls.remove()
    # Two originals of different working sizes: two pipeline calls, each with 2 steps of
    # text-and-image guidance (three UNet passes per image).
    assert calls.batches == [3, 3, 3, 3]
    assert [im.size for im in out] == [(48, 32), (48, 32), (20, 20), (20, 20)]
    assert prompts[1] == "Editing Prompt: make it snow"
    assert records[0]["image_guidance"] == 1.5 and records[0]["working_size"] == "16x16"
    made, _ = tool.edit(base[:1], ["make it snow"], 4)
    assert made[0].size == tool.working_size((48, 32)) == (20, 12)  # multiples of 4
    again, _ = tool.edit(base[:1], ["make it snow"], 4)
    assert same(made[0], again[0])
    # image_guidance below 1 turns classifier-free guidance off: one UNet pass per image.
    weak = make(
        "instruct-pix2pix", model=str(tiny["pix2pix"]), size="16", steps="2", image_guidance="0.5"
    )
    calls = Calls(weak.pipeline.pipe.unet)
    try:
        changed, _ = weak.edit(base[:1], ["make it snow"], 4)
    finally:
        calls.remove()
    assert calls.batches == [1, 1]
    assert not same(changed[0], made[0])


# -- on a GPU ---------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_flux_on_cuda(tiny):
    ctx = ToolContext(target=None, device="cuda", precision="bf16")
    tool = make("flux", ctx, model=str(tiny["flux"]), size="16", steps="2")
    assert tool.pipeline.pipe.transformer.device.type == "cuda"
    assert tool.pipeline.pipe.transformer.dtype == torch.bfloat16
    images, _, _ = call(tool, ["a dog", "a cat"], seed=3)
    again, _, _ = call(tool, ["a dog", "a cat"], seed=3)
    assert all(same(a, b) for a, b in zip(images, again))
    edit = make("flux-kontext", ctx, model=str(tiny["kontext"]), size="16", steps="2")
    (out, _), _, _ = call(edit, originals(), ["make it night", "make it snow"])
    assert [im.size for im in out] == [(48, 32), (48, 32), (20, 20), (20, 20)]
