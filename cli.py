"""The ``maia`` command line. Subcommands may also come from plugins (``register_commands``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from maia_core import plugins
from maia_core.errors import UserError
from maia_core.options import (
    DEFAULT_CELL_TIMEOUT,
    DEFAULT_MAX_ROUNDS,
    parse_basis_specs,
    parse_pairs,
    parse_tool_options,
)

app = typer.Typer(
    help="Automated interpretability of vision models: an agent investigates units by experiment.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


INTERRUPTED = "Interrupted. Finished units are saved; run the same command again to resume.\n"


def _split(values: list[str] | None) -> list[str] | None:
    """Comma lists may also be repeated: --tools a,b --tools c."""
    if not values:
        return None
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


@app.command()
def run(
    target: str = typer.Option(
        ...,
        "--target",
        "-t",
        help="The model to study: efficientnet_lite0, timm:<name>, ... (see maia plugins).",
    ),
    backbone: str = typer.Option(
        ...,
        "--backbone",
        "-b",
        help="The agent: replay:PATH, claude, gpt-4o, ... (see maia plugins).",
    ),
    units: str | None = typer.Option(
        None,
        "--units",
        "-u",
        help="Units, MAIA syntax: layer3=229,288:layer4=0-9 (a bare layer means all units).",
    ),
    unit_file: Path | None = typer.Option(
        None, "--unit-file", help='MAIA\'s neuron_indices JSON: {"layer": [units]}.'
    ),
    random: int | None = typer.Option(
        None, "--random", help="Study N units sampled from the selection."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for --random."),
    chunk: str | None = typer.Option(
        None,
        "--chunk",
        help="I/N: study only chunk I (0-based) of N, as MAIA's --chunk_id/--total_chunks.",
    ),
    target_option: list[str] = typer.Option(
        [],
        "--target-option",
        help="KEY=VALUE passed to the target, e.g. pretrained=false. Repeatable.",
    ),
    basis: list[str] = typer.Option(
        [],
        "--basis",
        help="LAYER=FILE.safetensors: the units of the virtual layer LAYER@FILE are SAE latents or directions. Repeatable.",
    ),
    backbone_option: list[str] = typer.Option(
        [],
        "--backbone-option",
        help="KEY=VALUE passed to the backbone, e.g. max_attempts=8, timeout=120, context_tokens=100000, image_size=512, merge_system=true. Repeatable.",
    ),
    base_url: str | None = typer.Option(
        None,
        "--base-url",
        help="The backbone's server, e.g. http://localhost:11434/v1 for local-<model> (the default there).",
    ),
    describer: str | None = typer.Option(
        None,
        "--describer",
        help="The backbone that describe_images and summarize_images ask. Default: the agent's backbone.",
    ),
    describer_option: list[str] = typer.Option(
        [], "--describer-option", help="KEY=VALUE passed to the describer backbone. Repeatable."
    ),
    budget_usd: float | None = typer.Option(
        None,
        "--budget-usd",
        help="Stop starting new units once this run's estimated spend reaches this many USD.",
    ),
    price_file: Path | None = typer.Option(
        None,
        "--price-file",
        help='JSON or TOML prices in USD per million tokens, overriding the built-in table: {"model": {"input": 2, "output": 10}}.',
    ),
    tools: list[str] | None = typer.Option(
        None,
        "--tools",
        help="Tools to expose, comma-separated; pick an implementation with cap=impl. Default: all.",
    ),
    reporter: list[str] | None = typer.Option(
        None, "--reporter", help="Reporters, comma-separated. Default: json,html,console."
    ),
    results: Path = typer.Option(
        Path("results"),
        "--results",
        help="Results folder: <results>/<backbone>/<target>/<layer>/<unit>/.",
    ),
    max_rounds: int = typer.Option(
        DEFAULT_MAX_ROUNDS,
        "--max-rounds",
        help="Experiment rounds before the agent must answer (1 to 1000).",
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    precision: str = typer.Option("fp32", "--precision", help="fp32, bf16 or fp16 (autocast)."),
    sandbox: str = typer.Option(
        "process",
        "--sandbox",
        help="process (a model host and an isolated kernel per investigation) or none (in this process, for notebooks).",
    ),
    cell_timeout: float = typer.Option(
        DEFAULT_CELL_TIMEOUT, "--cell-timeout", help="Seconds one cell may run."
    ),
    memory_limit: str = typer.Option(
        "80%",
        "--memory-limit",
        help="Memory cap per investigation's kernel (its child processes included): 8G, 512M, 75% of RAM, or none.",
    ),
    exemplars: Path | None = typer.Option(
        None, "--exemplars", help="Exemplar store folder (default ./exemplars)."
    ),
    force: bool = typer.Option(False, "--force", help="Re-run units that already completed."),
    concurrency: int | None = typer.Option(
        None,
        "--concurrency",
        "-j",
        help="Investigations in flight at once, sharing one copy of each model (default 4; 1 with --sandbox none).",
    ),
    tool_option: list[str] = typer.Option(
        [],
        "--tool-option",
        help="CAP.KEY=VALUE passed to the implementation of a tool capability, e.g. text2image.steps=4. Repeatable.",
    ),
    batching: str = typer.Option(
        "auto",
        "--batching",
        help="Batch concurrent forward passes in the model host: auto (on a GPU), on or off.",
    ),
    executor: str = typer.Option(
        "local", "--executor", help="local, or ray to spread investigations over a Ray cluster."
    ),
    ray_address: str | None = typer.Option(
        None,
        "--ray-address",
        help="An existing Ray cluster (e.g. ray://head:10001); default: a local one.",
    ),
    ray_actors: int | None = typer.Option(
        None,
        "--ray-actors",
        min=1,
        help="Ray actors hosting models (default: one per GPU, else one per node).",
    ),
    containment: str = typer.Option(
        "bwrap",
        "--containment",
        help="How kernels are contained: bwrap (the default; see the README) or none (agent code runs as you, with your files and network: at your own risk).",
    ),
    task: str = typer.Option(
        "describe",
        "--task",
        help="What each investigation finds: describe (what a unit detects), reliance (what a classifier's class relies on), compare (what separates two units), or a plugin's task (see maia plugins).",
    ),
    task_option: list[str] = typer.Option(
        [], "--task-option", help="KEY=VALUE passed to the task. Repeatable."
    ),
    pairs: Path | None = typer.Option(
        None,
        "--pairs",
        help='For a task of two units (compare): a JSON list of pairs, [["layer4=122", "layer4=210"]]. Default: consecutive units of --units.',
    ),
    reflect: int = typer.Option(
        0,
        "--reflect",
        help="Self-reflection: check each answer by prediction, and investigate again up to N times while it predicts too little (0 to 20; default 0, off).",
    ),
    reflect_threshold: float = typer.Option(
        0.9,
        "--reflect-threshold",
        help="The share of a check's images that must land on their predicted side (above 0, at most 1).",
    ),
    reflect_k: int = typer.Option(
        10, "--reflect-k", help="Prompts predicted high, and as many low, per check (1 to 100)."
    ),
    evaluator: str | None = typer.Option(
        None,
        "--evaluator",
        help="The backbone that writes reflection's predictions. Default: the agent's (templates for the baseline and replays).",
    ),
    evaluator_option: list[str] = typer.Option(
        [], "--evaluator-option", help="KEY=VALUE passed to the evaluator backbone. Repeatable."
    ),
    prompts: str | None = typer.Option(
        None,
        "--prompts",
        help="Who writes reflection's predictions: llm (the evaluator) or template (no LLM).",
    ),
) -> None:
    """Investigate units of a target with a backbone, and write reports."""
    from maia_core.loop.run import RunConfig
    from maia_core.loop.run import run as run_units

    config = RunConfig(
        target=target,
        backbone=backbone,
        units=units,
        unit_file=str(unit_file) if unit_file else None,
        random=random,
        seed=seed,
        chunk=chunk,
        target_options=parse_pairs(target_option, "--target-option"),
        bases=parse_basis_specs(basis),
        backbone_options=parse_pairs(backbone_option, "--backbone-option"),
        tools=_split(tools),
        reporters=_split(reporter),
        results=results,
        max_rounds=max_rounds,
        device=device,
        precision=precision,
        sandbox=sandbox,
        cell_timeout=cell_timeout,
        memory_limit=memory_limit,
        exemplars=str(exemplars) if exemplars else None,
        force=force,
        base_url=base_url,
        describer=describer,
        describer_options=parse_pairs(describer_option, "--describer-option"),
        budget_usd=budget_usd,
        price_file=str(price_file) if price_file else None,
        concurrency=concurrency,
        tool_options=parse_tool_options(tool_option),
        batching=batching,
        executor=executor,
        ray_address=ray_address,
        ray_actors=ray_actors,
        containment=containment,
        task=task,
        task_options=parse_pairs(task_option, "--task-option"),
        pairs=str(pairs) if pairs else None,
        reflect=reflect,
        reflect_threshold=reflect_threshold,
        reflect_k=reflect_k,
        evaluator=evaluator,
        evaluator_options=parse_pairs(evaluator_option, "--evaluator-option"),
        prompts=prompts,
    )
    try:
        investigations = run_units(config)
    except KeyboardInterrupt:
        # Typer would swallow it silently: say what was kept, and how to go on.
        sys.stderr.write(INTERRUPTED)
        raise typer.Exit(130) from None
    if any(i.result is not None and i.result.status == "failed" for i in investigations):
        raise typer.Exit(1)


@app.command()
def layers(
    target: str = typer.Argument(..., help="The target, as for maia run --target."),
    target_option: list[str] = typer.Option(
        [], "--target-option", help="KEY=VALUE passed to the target. Repeatable."
    ),
    basis: list[str] = typer.Option(
        [], "--basis", help="LAYER=FILE.safetensors: also list the virtual layer LAYER@FILE."
    ),
    all_layers: bool = typer.Option(
        False, "--all", help="List every module, not only the main layers."
    ),
    device: str = typer.Option("cpu", "--device", help="Where to load the model for probing."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    show_concepts: bool = typer.Option(
        False,
        "--show-concepts",
        help="With --json, for synthetic neurons: each unit's mode and concepts (its ground truth).",
    ),
) -> None:
    """List a target's layers with their unit counts and spatial sizes."""
    from rich.console import Console
    from rich.table import Table

    from maia_core.execution.host import load_target
    from maia_core.execution.specs import WorldSpec

    spec = WorldSpec(
        target=target,
        target_options=parse_pairs(target_option, "--target-option"),
        device=device,
        bases=parse_basis_specs(basis),
    )
    tgt = load_target(spec)
    infos = tgt.layers(all=all_layers)
    if as_json:
        rows = [
            {"layer": i.name, "units": i.units, "spatial": i.spatial, "kind": i.kind} for i in infos
        ]
        listing = getattr(tgt, "unit_listing", None)
        if callable(listing):  # units with known concepts: listed, the concepts only when asked
            for row in rows:
                row["unit_list"] = [
                    {k: v for k, v in e.items() if k != "layer"}
                    for e in listing(show_concepts)
                    if e["layer"] == row["layer"]
                ]
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"{target}: {tgt.describe()}")
    for col in ("layer", "units", "spatial", "kind"):
        table.add_column(col, justify="right" if col == "units" else "left")
    for i in infos:
        table.add_row(
            i.name, str(i.units), f"{i.spatial[0]}x{i.spatial[1]}" if i.spatial else "-", i.kind
        )
    Console().print(table)


@app.command("plugins")
def list_plugins(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List discovered plugins: distribution, version, and what each provides."""
    infos = plugins.plugin_infos()
    if as_json:
        print(json.dumps([info.__dict__ for info in infos], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="maia plugins")
    for col in ("plugin", "distribution", "version", "provides"):
        table.add_column(col)
    for info in infos:
        provides = "; ".join(
            f"{kind}: {', '.join(names)}" for kind, names in sorted(info.provides.items())
        )
        if info.error:
            provides = f"[red]failed to load: {info.error}[/]"
        table.add_row(info.name, info.distribution or "-", info.version or "-", provides or "-")
    Console().print(table)


def _add_plugin_commands() -> None:
    plugins.add_commands(app)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    import signal

    from maia_core.allocator import tune_malloc

    # Exemplars, eval, bench and --sandbox none run models in this process (see allocator).
    tune_malloc()

    # SLURM, timeout, docker and systemd stop a job with SIGTERM (a closed terminal sends
    # SIGHUP): handled like Ctrl-C, so finished units are saved and children are stopped.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    try:
        _add_plugin_commands()
        app()
    except UserError as exc:
        sys.stderr.write(f"Error: {exc.message}\n")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write(INTERRUPTED)
        sys.exit(130)


if __name__ == "__main__":
    main()
