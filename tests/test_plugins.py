"""Plugin discovery, registries, `maia plugins`, and a third-party distribution."""

import json
import subprocess
import sys

import pytest

from conftest import FIXTURES, maia
from maia_core import hookimpl, plugins
from maia_core.errors import UserError

BUILTINS = {
    "replay": {"backbones": ["replay"]},
    "timm": {"targets": ["timm"]},
    "efficientnet_lite": {"targets": ["efficientnet_lite0"]},
    "display": {"tools": ["display"]},
    "html": {"reporters": ["html"]},
    "json": {"reporters": ["json"]},
    "console": {"reporters": ["console"]},
}


def test_maia_plugins_lists_builtins_with_distribution_and_version():
    out = maia("plugins", "--json")
    assert out.returncode == 0, out.stderr
    infos = {p["name"]: p for p in json.loads(out.stdout)}
    for name, provides in BUILTINS.items():
        assert infos[name]["distribution"] == "maia"
        assert infos[name]["version"] == "0.1.0"
        for kind, names in provides.items():
            assert set(names) <= set(infos[name]["provides"][kind])


def test_maia_plugins_env_restricts_loading():
    out = maia("plugins", "--json", env={"MAIA_PLUGINS": "replay,timm"})
    assert {p["name"] for p in json.loads(out.stdout)} == {"replay", "timm"}


def test_startup_imports_no_heavy_library():
    code = (
        "import sys, cli\n"
        "for argv in (['maia', '--help'], ['maia', 'plugins']):\n"
        "    sys.argv = argv\n"
        "    try:\n"
        "        cli.main()\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = [m for m in ('torch', 'timm', 'transformers', 'diffusers', 'anthropic', 'openai') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in out.stdout, out.stdout[-500:] + out.stderr[-500:]


def test_registry_resolves_exact_pattern_and_colon_specs():
    reg = plugins.Registry("backbones", "--backbone")
    plugins_made = []

    def factory(arg, **o):
        plugins_made.append(arg)

    reg.add(plugins.Entry("backbones", "openai", factory, "p", meta={"patterns": ("gpt-*",)}))
    reg.add(plugins.Entry("backbones", "replay", factory, "p"))
    assert reg.resolve("gpt-4o") == (reg.entries["openai"], "gpt-4o")
    assert reg.resolve("openai:o3") == (reg.entries["openai"], "o3")
    assert reg.resolve("replay:/x/y.json") == (reg.entries["replay"], "/x/y.json")
    assert reg.resolve("replay") == (reg.entries["replay"], None)
    with pytest.raises(
        UserError, match=r"Unknown backbone 'claud'.*Known: openai \(gpt-\*\), replay"
    ):
        reg.resolve("claud")
    with pytest.raises(UserError, match="needs something after the colon"):
        reg.resolve("openai:")


def test_hand_registered_plugin_and_tool_selection():
    class Plugin:
        @staticmethod
        @hookimpl
        def register_tools(register):
            register("fancy-t2i", object, capability="text2image")
            register("plain-t2i", object, capability="text2image", default=True)
            # Preferred where it can run: here, only on a GPU.
            register(
                "gpu-t2i",
                object,
                capability="text2image",
                priority=10,
                available=lambda device: device.startswith("cuda"),
            )

    plugins.reset_plugins()
    try:
        plugins.register_plugin(Plugin, "t2i-plugin")
        chosen = plugins.select_tools(None)
        assert chosen["text2image"].name == "plain-t2i"
        assert plugins.select_tools(["text2image=fancy-t2i"])["text2image"].name == "fancy-t2i"
        # Where models load, availability decides the default; elsewhere default=True does.
        assert plugins.select_tools(None, device="cuda:0")["text2image"].name == "gpu-t2i"
        assert plugins.select_tools(["text2image"], device="cpu")["text2image"].name == "plain-t2i"
        with pytest.raises(
            UserError, match=r"Unknown tool 'nope'.*Known: (.*, )?display, (.*, )?text2image\."
        ):
            plugins.select_tools(["nope"])
        with pytest.raises(UserError, match="Known: fancy-t2i, plain-t2i, gpu-t2i"):
            plugins.select_tools(["text2image=other"])
        info = next(i for i in plugins.plugin_infos() if i.name == "t2i-plugin")
        # maia plugins shows each implementation with the capability it serves
        assert info.provides == {
            "tools": ["text2image=fancy-t2i", "text2image=plain-t2i", "text2image=gpu-t2i"]
        }
    finally:
        plugins.reset_plugins()


def test_third_party_distribution_is_discovered(thirdparty_env):
    out = maia("plugins", "--json", env=thirdparty_env)
    infos = {p["name"]: p for p in json.loads(out.stdout)}
    toy = infos["toynet"]
    assert toy["distribution"] == "toynet-maia" and toy["version"] == "1.2.3"
    assert toy["provides"] == {"targets": ["toynet"], "tools": ["caption"], "tasks": ["polarity"]}
    layers = maia("layers", "toynet", "--json", env=thirdparty_env)
    assert layers.returncode == 0, layers.stderr
    assert {"layer": "conv2", "units": 4, "spatial": [16, 16], "kind": "conv"} in json.loads(
        layers.stdout
    )


def test_third_party_target_runs_end_to_end(thirdparty_env, tmp_path):
    replay = tmp_path / "turns.json"
    replay.write_text(
        json.dumps(
            [
                "```python\nacts, masked = system.call_neuron([Image.new('RGB', (64, 64), 'white')])\nprint('ACT', type(acts[0]).__name__, masked[0].size)\n```",
                "[DESCRIPTION]: toy\n[LABEL]: toy",
            ]
        )
    )
    out = maia(
        "run",
        "--target",
        "toynet",
        "--units",
        "conv2=1",
        "--backbone",
        f"replay:{replay}",
        "--results",
        str(tmp_path / "r"),
        env=thirdparty_env,
    )
    assert out.returncode == 0, out.stderr
    history = json.loads((tmp_path / "r/replay-turns/toynet/conv2/1/history.json").read_text())
    outputs = [
        p["text"]
        for m in history["messages"]
        if m["role"] == "user"
        for p in m["parts"]
        if p["type"] == "text"
    ]
    assert any("ACT float (64, 64)" in t for t in outputs)


def test_broken_plugin_is_reported_not_fatal(tmp_path):
    site = tmp_path / "site"
    dist = site / "broken_maia-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-maia\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[maia]\nbroken = broken_maia_missing_module\n")
    out = maia("plugins", "--json", env={"PYTHONPATH": str(site)})
    assert out.returncode == 0
    infos = {p["name"]: p for p in json.loads(out.stdout)}
    assert "ModuleNotFoundError" in infos["broken"]["error"]
    assert out.stderr.count("plugin 'broken'") == 1
    assert "replay" in infos


def test_fixture_exists():
    assert (FIXTURES / "replay_efficientnet.json").is_file()
