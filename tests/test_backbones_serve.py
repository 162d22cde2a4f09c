"""`maia serve-model`, with a stand-in `vllm` executable on PATH that records its arguments."""

from __future__ import annotations

import os
import stat

import pytest

from conftest import maia

STAND_IN = """#!/bin/sh
# Records how maia started it, one argument per line, then exits like a server that was stopped.
printf '%s\\n' "$@" > "$VLLM_ARGS"
exit 0
"""


@pytest.fixture
def fake_vllm(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "vllm"
    exe.write_text(STAND_IN)
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    args = tmp_path / "args.txt"
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "VLLM_ARGS": str(args)}
    return env, args


def serve(env, *args):
    return maia("serve-model", *args, env=env, timeout=60)


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_short_name_is_served_from_its_repo_on_all_interfaces_port_11434(fake_vllm):
    env, args = fake_vllm
    out = serve(env, "--model", "gemma", "--gpus", "2")
    assert out.returncode == 0, out.stderr
    argv = args.read_text().splitlines()
    assert argv[:2] == ["serve", "google/gemma-3-27b-it"]
    assert flag(argv, "--host") == "0.0.0.0" and flag(argv, "--port") == "11434"
    assert flag(argv, "--tensor-parallel-size") == "2" and flag(argv, "--dtype") == "auto"
    assert "--enable-prefix-caching" in argv and "--enable-chunked-prefill" in argv
    assert "local-google/gemma-3-27b-it --base-url http://localhost:11434/v1" in out.stderr


def test_mistral_gets_its_tokenizer_flags_and_served_name(fake_vllm):
    env, args = fake_vllm
    out = serve(env, "--model", "Mistral", "--port", "8000")
    assert out.returncode == 0, out.stderr
    argv = args.read_text().splitlines()
    assert argv[1] == "mistralai/Mistral-Small-3.2-24B-Instruct-2506"
    assert flag(argv, "--tokenizer-mode") == "mistral" and flag(argv, "--load-format") == "mistral"
    assert flag(argv, "--served-model-name") == "mistralai/Mistral-Small-3.2-24B"
    assert flag(argv, "--port") == "8000" and flag(argv, "--tensor-parallel-size") == "1"


def test_any_repo_id_and_extra_vllm_arguments(fake_vllm):
    env, args = fake_vllm
    out = serve(env, "--model", "Qwen/Qwen2.5-VL-7B-Instruct", "--", "--max-model-len", "32768")
    assert out.returncode == 0, out.stderr
    argv = args.read_text().splitlines()
    assert argv[1] == "Qwen/Qwen2.5-VL-7B-Instruct" and argv[-2:] == ["--max-model-len", "32768"]
    out = serve(env, "--model", "qwen3-vl", "--dry-run")
    assert out.stdout.startswith("vllm serve Qwen/Qwen3-VL-30B-A3B-Instruct ")


def test_missing_vllm_is_a_clear_one_line_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = serve({"PATH": str(empty)}, "--model", "gemma")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert (
        len(lines) == 1 and "vLLM is not installed" in lines[0] and "pip install vllm" in lines[0]
    )
