"""``maia eval`` and ``maia bench``: evaluation as commands (a plugin, like any other).

Both name each unit they cannot score (its folder and why), count it as not scored, and exit 1
when there is any. Ctrl-C or SIGTERM stops them with a message that says what is saved and
how to go on (exit 130).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from maia_core import hookimpl, plugins
from maia_core.errors import UserError
from maia_core.files import full_disk_stops

DEFAULT_SET = "synthetic:offline"
# Each task's default set for maia bench --task: (target, units; None: pairs of the set).
TASK_SETS = {
    "describe": ("synthetic:offline", "mono:or:and"),
    "reliance": ("reliance:offline", "output"),
    "compare": ("synthetic:offline", None),
}
EVAL_INTERRUPTED = (
    "Interrupted. The units scored so far keep their eval.json; run the same command again "
    "to score the others (scored units are not scored again).\n"
)
BENCH_INTERRUPTED = (
    "Interrupted. Finished investigations and the units scored so far are saved; run the same "
    "command again to resume (neither is done again).\n"
)


@hookimpl
def register_commands(cli):
    import typer

    @cli.command("eval")
    def eval_command(
        results: list[Path] = typer.Argument(
            ..., help="Results folders of maia run (any level: results/, results/claude/...)."
        ),
        evaluator: str | None = typer.Option(
            None,
            "--evaluator",
            help="The backbone that writes the prompts (MAIA's protocol), e.g. claude; implies --prompts llm.",
        ),
        evaluator_option: list[str] = typer.Option(
            [], "--evaluator-option", help="KEY=VALUE passed to the evaluator backbone."
        ),
        prompts: str | None = typer.Option(
            None,
            "--prompts",
            help="llm (with --evaluator) or template (no LLM; the default without --evaluator).",
        ),
        n: int = typer.Option(7, "--n", help="Positive and negative prompts per unit (1 to 100)."),
        tools: str | None = typer.Option(
            None,
            "--tools",
            help="text2image=NAME: the renderer (default: the default here, as in maia run).",
        ),
        tool_option: list[str] = typer.Option(
            [], "--tool-option", help="CAP.KEY=VALUE, as for maia run."
        ),
        device: str = typer.Option("auto", "--device"),
        precision: str = typer.Option("fp32", "--precision"),
        chunk: str | None = typer.Option(
            None, "--chunk", help="I/N: score only chunk I of N of the units."
        ),
        force: bool = typer.Option(
            False, "--force", help="Score units that already have an eval.json again."
        ),
        seed: int = typer.Option(0, "--seed", help="Base of every unit's seed."),
        out: Path | None = typer.Option(
            None,
            "--out",
            help="Where the table, plots and eval.html go (default: the first results folder).",
        ),
        target: str | None = typer.Option(
            None,
            "--target",
            help="Rebuild this target (as recorded in the results) from this spec yourself: needed for python: targets, which maia eval never imports from a results file.",
        ),
        target_option: list[str] = typer.Option(
            [], "--target-option", help="KEY=VALUE for --target, as for maia run."
        ),
        results_key: Path | None = typer.Option(
            None,
            "--results-key",
            help="The key that signed the results (default: yours, ~/.local/state/maia/results.key); for results written under another account.",
        ),
    ) -> None:
        """Score every finished unit's label: predictively, and against ground truth where known."""
        skipped: list[Any] = []
        try:
            run_eval(
                results,
                evaluator=evaluator,
                evaluator_options=evaluator_option,
                prompts=prompts,
                n=n,
                tools=tools,
                tool_options=tool_option,
                device=device,
                precision=precision,
                chunk=chunk,
                force=force,
                seed=seed,
                out=out,
                skipped=skipped,
                target=target,
                target_options=target_option,
                results_key=results_key,
            )
        except KeyboardInterrupt:
            sys.stderr.write(EVAL_INTERRUPTED)
            raise typer.Exit(130) from None
        if skipped:
            raise typer.Exit(1)

    @cli.command("bench")
    def bench_command(
        backbone: list[str] = typer.Option(
            ["baseline"],
            "--backbone",
            "-b",
            help="Backbones to compare (repeatable): baseline, claude, gpt-4o, ...",
        ),
        task: str = typer.Option(
            "describe",
            "--task",
            help="describe (synthetic:offline's neurons), reliance (reliance:offline's classes) or compare (pairs of synthetic:offline's neurons whose concepts overlap).",
        ),
        target: str | None = typer.Option(
            None,
            "--set",
            "--target",
            help="The set (or any target) to study. Default: the task's set.",
        ),
        units: str | None = typer.Option(
            None,
            "--units",
            "-u",
            help="Units, as for maia run (default: every unit of the task's set).",
        ),
        pairs: Path | None = typer.Option(
            None,
            "--pairs",
            help="For --task compare: the pairs, as for maia run (default: the set's neurons that share a concept).",
        ),
        reflect: list[int] = typer.Option(
            [0],
            "--reflect",
            help="Self-reflection rounds, as for maia run; repeatable (--reflect 0 --reflect 2), each a run of its own, compared in the table.",
        ),
        results: Path = typer.Option(
            Path("bench"), "--results", help="Results folder of the benchmark."
        ),
        concurrency: int | None = typer.Option(None, "--concurrency", "-j"),
        max_rounds: int = typer.Option(25, "--max-rounds"),
        backbone_option: list[str] = typer.Option(
            [], "--backbone-option", help="KEY=VALUE passed to every backbone."
        ),
        evaluator: str | None = typer.Option(
            None,
            "--evaluator",
            help="Evaluator backbone for the prompts (default: templates, no LLM).",
        ),
        n: int = typer.Option(7, "--n", help="Prompts per side, as for maia eval (1 to 100)."),
        device: str = typer.Option("auto", "--device"),
        budget_usd: float | None = typer.Option(
            None, "--budget-usd", help="Per backbone, as for maia run."
        ),
        force: bool = typer.Option(False, "--force"),
    ) -> None:
        """Benchmark backbones on a task's set: run each (with each --reflect), evaluate, and write the table, plots and eval.html."""
        from maia_core.options import parse_pairs

        options = parse_pairs(backbone_option, "--backbone-option")
        configs = check_bench(
            backbone,
            task=task,
            reflect=reflect,
            target=target,
            units=units,
            pairs=pairs,
            results=results,
            concurrency=concurrency,
            max_rounds=max_rounds,
            backbone_options=options,
            device=device,
            budget_usd=budget_usd,
            force=force,
            evaluator=evaluator,
            n=n,
        )
        skipped: list[Any] = []
        try:
            from maia_core.loop.run import run

            for config in configs:
                run(config)
            run_eval(
                [results], evaluator=evaluator, n=n, device=device, force=force, skipped=skipped
            )
        except KeyboardInterrupt:
            sys.stderr.write(BENCH_INTERRUPTED)
            raise typer.Exit(130) from None
        if skipped:
            raise typer.Exit(1)


def check_bench(
    backbones: list[str],
    *,
    evaluator: str | None,
    n: int,
    task: str = "describe",
    reflect: list[int] | None = None,
    target: str | None = None,
    units: str | None = None,
    pairs: Path | None = None,
    **config: Any,
) -> list[Any]:
    """Every option of ``maia bench``, each a one-line error, before any investigation: the
    task and its set, the output folder, the numbers, the target and units, each backbone and
    the evaluator (names, keys, prices for --budget-usd). Returns the runs' configurations:
    one per backbone and --reflect value (each value's results in ``reflect-N/`` when there
    are several, or any above 0)."""
    from maia_core import plugins
    from maia_core.loop.run import (
        RunConfig,
        check_config,
        make_backbone,
        make_backbones,
        make_run_task,
        selection,
    )
    from maia_plugins.evaluation.evaluate import check_options

    check_options("llm" if evaluator else "template", evaluator is not None, n)
    plugins.registry("tasks").resolve(task)
    default_target, default_units = TASK_SETS.get(task, (DEFAULT_SET, "mono:or:and"))
    target = target or default_target
    reflect = list(dict.fromkeys(reflect or [0]))
    results = Path(config.pop("results"))
    if task == "compare" and units is None and pairs is None:
        pairs = overlapping_pairs(target, results)
    elif units is None and pairs is None:
        units = default_units
    configs = []
    for n_reflect in reflect:
        root = results if reflect == [0] else results / f"reflect-{n_reflect}"
        for name in backbones:
            configs.append(
                RunConfig(
                    backbone=name,
                    target=target,
                    units=units,
                    pairs=str(pairs) if pairs else None,
                    task=task,
                    reflect=n_reflect,
                    results=root,
                    **config,
                )
            )
    for run_config in configs:
        check_config(run_config)
        make_run_task(run_config)
        selection(run_config)
        plugins.registry("targets").resolve(run_config.target)
        for made in dict.fromkeys(make_backbones(run_config)):
            made.close()
    if evaluator:
        make_backbone(evaluator, flag="--evaluator").close()
    return configs


def overlapping_pairs(target: str, results: Path) -> Path:
    """``maia bench --task compare``'s default pairs: each OR and AND neuron of a synthetic set
    with the single-concept neuron of one of its concepts (``zebra`` and ``zebra AND grass``),
    so the pair differs by the other concept. Written to ``<results>/pairs.json``."""
    from maia_core.files import atomic_write_json, ensure_output_folder

    name, _, spec = target.partition(":")
    if name not in ("synthetic", "synthetic_neurons") or not spec:
        raise UserError(
            f"maia bench --task compare pairs a synthetic set's neurons; {target} is not one: "
            "give --target synthetic:offline (or your set), or --pairs FILE."
        )
    from maia_plugins.targets.synthetic import load_set

    neuron_set = load_set(spec)
    by_mode = neuron_set.concepts_by_mode()
    mono = {tuple(c): i for i, c in enumerate(by_mode.get("mono") or [])}
    pairs = []
    for mode in ("and", "or"):
        for j, concepts in enumerate(by_mode.get(mode) or []):
            single = next((mono[(c,)] for c in concepts if (c,) in mono), None)
            if single is not None:
                pairs.append([f"mono={single}", f"{mode}={j}"])
    if not pairs:
        raise UserError(
            f"The set {target} has no OR or AND neuron that shares a concept with a "
            "single-concept one; give --pairs FILE."
        )
    path = ensure_output_folder(results, "--results") / "pairs.json"
    atomic_write_json(path, pairs)
    return path


@full_disk_stops(
    ", then run the same command again: the units scored so far keep their eval.json and are "
    "not scored again."
)
def run_eval(
    results: list[Path],
    *,
    evaluator: str | None = None,
    evaluator_options: list[str] | None = None,
    prompts: str | None = None,
    n: int = 7,
    tools: str | None = None,
    tool_options: list[str] | None = None,
    device: str = "auto",
    precision: str = "fp32",
    chunk: str | None = None,
    force: bool = False,
    seed: int = 0,
    out: Path | None = None,
    quiet: bool = False,
    skipped: list[Any] | None = None,
    target: str | None = None,
    target_options: list[str] | None = None,
    results_key: Path | None = None,
) -> list[dict[str, Any]]:
    """``maia eval`` as a function: score, then write ``eval.csv``, the plots and ``eval.html``.

    A unit that cannot be scored is named on stderr (its folder and why), appended to
    ``skipped`` (an :class:`~maia_plugins.evaluation.evaluate.Skipped`) and left out of the
    scores; the others are scored. A full disk is a one-line error."""
    from rich.console import Console

    from maia_core.files import ensure_output_folder
    from maia_core.options import parse_pairs, parse_tool_options
    from maia_plugins.evaluation.evaluate import check_folders, check_options, evaluate
    from maia_plugins.evaluation.plots import write_plots
    from maia_plugins.evaluation.report import render_eval_html
    from maia_plugins.evaluation.summary import rich_table, summarize, write_csv

    skipped = [] if skipped is None else skipped

    def on_skip(skip: Any) -> None:
        skipped.append(skip)
        sys.stderr.write(skip.line() + "\n")

    text2image = None
    if tools:
        cap, _, impl = tools.partition("=")
        if cap.strip() != "text2image" or not impl.strip():
            raise UserError(
                f"--tools {tools!r}: maia eval renders with text2image only; give text2image=NAME."
            )
        text2image = impl.strip()
    prompts = prompts or ("llm" if evaluator else "template")
    check_options(prompts, bool(evaluator), n)
    from maia_core import signing

    key = signing.load_key(results_key, create=results_key is None)
    targets = {}
    if target is not None:
        plugins.registry("targets").resolve(target)  # an unknown target fails at once
        targets[target] = parse_pairs(target_options or [], "--target-option")
    elif target_options:
        raise UserError("--target-option needs --target: give the target it is for.")
    results = check_folders(results)  # before --out is created, which may be one of them
    out = ensure_output_folder(out or results[0], "--out")
    backbone = None
    if evaluator:
        from maia_core.loop.run import make_backbone

        backbone = make_backbone(
            evaluator,
            parse_pairs(evaluator_options or [], "--evaluator-option"),
            flag="--evaluator",
        )
    console = Console(stderr=True, quiet=quiet)
    try:
        records = evaluate(
            results,
            prompts=prompts,
            evaluator=backbone,
            n=n,
            text2image=text2image,
            tool_options=parse_tool_options(tool_options or []),
            device=device,
            precision=precision,
            chunk_spec=chunk,
            force=force,
            seed=seed,
            progress=lambda what: console.print(f"[dim]evaluating {what}[/]", highlight=False),
            on_skip=on_skip,
            key=key,
            targets=targets,
        )
    finally:
        if backbone is not None:
            backbone.close()
    rows = summarize(records)
    write_csv(rows, out / "eval.csv")
    plots = write_plots(records, out / "plots")
    for record in records:
        report = Path(record.get("_dir", "")) / "report.html"
        try:
            record["report"] = (
                str(report.resolve().relative_to(out.resolve())) if report.is_file() else None
            )
        except ValueError:  # a results folder outside --out: no link
            record["report"] = None
    render_eval_html(records, out / "eval.html", plots=plots)
    if not quiet:
        Console().print(rich_table(rows))
        print(
            f"wrote {out / 'eval.csv'}, {out / 'eval.html'} and {len(plots)} plot(s) in {out / 'plots'}"
        )
    if skipped:
        sys.stderr.write(
            f"maia eval: {len(skipped)} unit(s) could not be scored and were skipped (named above); "
            "they count as not scored.\n"
        )
    return records
