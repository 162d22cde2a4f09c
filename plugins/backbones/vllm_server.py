"""``maia serve-model``: launch vLLM's OpenAI-compatible server for a local backbone.

It runs ``vllm serve`` as MAIA's ``server/serve_model.sh`` does: bound to 0.0.0.0 on port
11434 (Ollama's port, which is the local backbone's default), tensor-parallel over ``--gpus``,
with chunked prefill and prefix caching. MAIA's short names map to their Hugging Face repos;
any other name is used as a repo id. Arguments after ``--`` go to vLLM unchanged.
"""

# No "from __future__ import annotations": Typer reads the command's annotations at runtime,
# and typer is imported inside register_commands to keep this module light.
import os
import shlex
import shutil
import sys
from dataclasses import dataclass

from maia_core import hookimpl
from maia_core.errors import UserError

DEFAULT_PORT = 11434


@dataclass(frozen=True)
class Recipe:
    repo: str
    extra: tuple[str, ...] = ()
    served_name: str | None = None


# MAIA's short names (server/serve_model.sh and its README).
SHORT_NAMES = {
    "mistral": Recipe(
        "mistralai/Mistral-Small-3.2-24B-Instruct-2506",
        (
            "--tokenizer-mode",
            "mistral",
            "--config-format",
            "mistral",
            "--load-format",
            "mistral",
            "--tool-call-parser",
            "mistral",
        ),
        served_name="mistralai/Mistral-Small-3.2-24B",
    ),
    "gemma": Recipe("google/gemma-3-27b-it"),
    "qwen3-vl": Recipe("Qwen/Qwen3-VL-30B-A3B-Instruct"),
}


def recipe_for(model: str) -> Recipe:
    return SHORT_NAMES.get(model.strip().lower(), Recipe(model.strip()))


def vllm_command(
    model: str,
    *,
    gpus: int = 1,
    port: int = DEFAULT_PORT,
    host: str = "0.0.0.0",
    gpu_memory_utilization: float = 0.90,
    max_num_seqs: int = 1,
    extra: list[str] | None = None,
) -> tuple[list[str], str]:
    """The ``vllm serve`` argument list, and the model name the server answers to."""
    recipe = recipe_for(model)
    argv = [
        "vllm",
        "serve",
        recipe.repo,
        *recipe.extra,
        "--dtype",
        "auto",
        "--tensor-parallel-size",
        str(gpus),
        "--gpu-memory-utilization",
        f"{gpu_memory_utilization:g}",
        "--host",
        host,
        "--port",
        str(port),
        "--enable-chunked-prefill",
        "--enable-prefix-caching",
        "--max-num-seqs",
        str(max_num_seqs),
    ]
    if recipe.served_name:
        argv += ["--served-model-name", recipe.served_name]
    return argv + list(extra or []), recipe.served_name or recipe.repo


@hookimpl
def register_commands(cli):
    import typer

    @cli.command(
        "serve-model",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    def serve_model(
        ctx: typer.Context,
        model: str = typer.Option(
            ...,
            "--model",
            help=f"A short name ({', '.join(SHORT_NAMES)}) or any Hugging Face repo id.",
        ),
        gpus: int = typer.Option(
            1, "--gpus", min=1, help="GPUs to split the model over (tensor parallel)."
        ),
        port: int = typer.Option(DEFAULT_PORT, "--port", help="Port to serve on."),
        host: str = typer.Option(
            "0.0.0.0", "--host", help="Address to bind (all interfaces by default)."
        ),
        gpu_memory_utilization: float = typer.Option(
            0.90, "--gpu-memory-utilization", help="Share of each GPU's memory vLLM may use."
        ),
        max_num_seqs: int = typer.Option(
            1, "--max-num-seqs", min=1, help="Requests served at once."
        ),
        dry_run: bool = typer.Option(
            False, "--dry-run", help="Print the vllm command; do not run it."
        ),
    ) -> None:
        """Launch vLLM's OpenAI-compatible server for a local backbone (extra args after -- go to vllm)."""
        argv, served = vllm_command(
            model,
            gpus=gpus,
            port=port,
            host=host,
            gpu_memory_utilization=gpu_memory_utilization,
            max_num_seqs=max_num_seqs,
            extra=list(ctx.args),
        )
        if dry_run:
            print(shlex.join(argv))
            return
        exe = shutil.which("vllm")
        if exe is None:
            raise UserError(
                "vLLM is not installed: there is no vllm command on PATH. Install it on a machine "
                "with a CUDA GPU (pip install vllm) and run maia serve-model again."
            )
        sys.stderr.write(
            f"maia: starting {shlex.join(argv)}\n"
            f"maia: when it is up, run: maia run --backbone local-{served} "
            f"--base-url http://localhost:{port}/v1 ...\n"
        )
        sys.stderr.flush()
        sys.stdout.flush()
        # Replace this process, as serve_model.sh does: Ctrl-C and signals reach vLLM directly.
        os.execv(exe, [exe, *argv[1:]])
