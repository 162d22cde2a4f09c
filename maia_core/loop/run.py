"""A run: many units of one target investigated by one backbone, several at a time.

Used by ``maia run`` and usable from notebooks::

    from maia_core.loop.run import RunConfig, run
    investigations = run(RunConfig(target="efficientnet_lite0", units="blocks.6=0-2",
                                   backbone="replay:history.json"))
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maia_core import plugins
from maia_core import units as unitspec
from maia_core.backbone import Backbone
from maia_core.errors import UserError, check_count
from maia_core.execution.sandbox import DEFAULT_CELL_TIMEOUT, make_execution, parse_memory
from maia_core.execution.specs import WorldSpec
from maia_core.files import ensure_output_folder
from maia_core.loop.investigation import DEFAULT_MAX_ROUNDS
from maia_core.loop.reflection import DEFAULT_K, DEFAULT_THRESHOLD, PROMPT_MODES
from maia_core.loop.reporter import Reporter, Reporters
from maia_core.loop.scheduler import OutOfSpace, Scheduler
from maia_core.loop.state import Investigation, RunInfo
from maia_core.providers.pricing import PriceTable
from maia_core.task import Subject, Task, make_task

DEFAULT_REPORTERS = ("json", "html", "console")
DEFAULT_CONCURRENCY = 4
# Upper bounds of the counts a run takes; each is far above any use, and below what would
# exhaust a machine (a kernel per investigation, a thread per unit in flight, a Ray actor each).
MAX_ROUNDS = 1000
MAX_CONCURRENCY = 256
MAX_RAY_ACTORS = 1024
# Each reflection cycle can be a whole investigation again.
MAX_REFLECT = 20
MAX_REFLECT_K = 100
EXECUTORS = ("local", "ray")


@dataclass
class RunConfig:
    target: str
    backbone: str
    units: str | None = None
    unit_file: str | None = None
    random: int | None = None
    seed: int = 0
    chunk: str | None = None
    target_options: dict[str, str] = field(default_factory=dict)
    bases: list[tuple[str, str]] = field(default_factory=list)
    backbone_options: dict[str, str] = field(default_factory=dict)
    tools: list[str] | None = None
    # capability -> {option: value}, from --tool-option CAP.KEY=VALUE
    tool_options: dict[str, dict[str, str]] = field(default_factory=dict)
    reporters: list[str] | None = None
    results: Path = Path("results")
    max_rounds: int = DEFAULT_MAX_ROUNDS
    device: str = "auto"
    precision: str = "fp32"
    sandbox: str = "process"
    cell_timeout: float | None = DEFAULT_CELL_TIMEOUT
    memory_limit: str | None = "80%"
    exemplars: str | None = None
    force: bool = False
    # The agent backbone's server, for OpenAI-compatible and proxied backbones (--base-url).
    base_url: str | None = None
    # The backbone tools' describe/summarize requests go to; None: the agent's backbone.
    describer: str | None = None
    describer_options: dict[str, str] = field(default_factory=dict)
    # Stop starting new units once this run's estimated spend reaches this many USD.
    budget_usd: float | None = None
    # JSON or TOML prices that override the built-in table (maia_core.providers.pricing).
    price_file: str | None = None
    # Investigations in flight at once; None: 4 with the process sandbox, 1 in-process.
    concurrency: int | None = None
    # "local", or "ray" to spread investigations over a Ray cluster's actors.
    executor: str = "local"
    ray_address: str | None = None
    ray_actors: int | None = None
    # Batch concurrent forward passes in the model host: "auto" (on a GPU), "on", "off".
    batching: str = "auto"
    # How kernels are contained: "bwrap" (the default policy), or "none" (the user's risk).
    containment: str = "bwrap"
    # What each investigation is asked (maia_core.task): describe, reliance, compare, ...
    task: str = "describe"
    task_options: dict[str, str] = field(default_factory=dict)
    # A JSON list of pairs of units, for a two-unit task (compare); else consecutive units.
    pairs: str | None = None
    # Self-reflection: check each answer by prediction, and investigate again up to this many
    # times while its predictiveness is below reflect_threshold (maia_core.loop.reflection).
    reflect: int = 0
    reflect_threshold: float = DEFAULT_THRESHOLD
    reflect_k: int = DEFAULT_K
    # Who writes reflection's predictions: "template" (no LLM) or "llm" (the evaluator);
    # None: llm when the evaluator can write prompts, else template.
    prompts: str | None = None
    # The evaluator backbone for --prompts llm; None: the agent's backbone.
    evaluator: str | None = None
    evaluator_options: dict[str, str] = field(default_factory=dict)


def selection(config: RunConfig) -> unitspec.Selection:
    if config.pairs:
        if config.units or config.unit_file:
            raise UserError(
                "--pairs FILE names the units to study; drop --units and --unit-file, or drop --pairs."
            )
        return unitspec.pairs_selection(unitspec.read_pairs_file(config.pairs))
    if bool(config.units) == bool(config.unit_file):
        raise UserError(
            "Give the units to study with exactly one of --units LAYER=UNITS or --unit-file FILE."
        )
    return (
        unitspec.parse_unit_spec(config.units)
        if config.units
        else unitspec.read_unit_file(config.unit_file)
    )


def most_subjects(config: RunConfig, wanted: unitspec.Selection) -> int | None:
    """At most how many investigations the run opens, read off the selection alone (None when
    it names a whole layer, whose units only the model knows, or pairs, which may be more)."""
    if config.pairs or any(indices is None for indices in wanted.values()):
        return None
    units = sum(len(i) if isinstance(i, range) else 1 for v in wanted.values() for i in v or ())
    return units if config.random is None else min(units, config.random)


def check_config(config: RunConfig) -> None:
    """Bad input, each a one-line error, before anything is loaded."""
    ensure_output_folder(config.results, "--results")
    timeout = config.cell_timeout
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise UserError(f"--cell-timeout must be a number of seconds above 0, not {timeout!r}.")
    check_count(config.max_rounds, "--max-rounds", 1, MAX_ROUNDS, "no context holds more")
    if config.budget_usd is not None and not (
        math.isfinite(config.budget_usd) and config.budget_usd >= 0
    ):
        raise UserError(
            f"--budget-usd must be a number of dollars, 0 or more, not {config.budget_usd!r}."
        )
    if config.exemplars is not None and Path(config.exemplars).is_file():
        raise UserError(
            f"--exemplars {config.exemplars!r} is a file; give the folder of exemplar stores (or one store's folder)."
        )
    if config.concurrency is not None:
        check_count(
            config.concurrency, "--concurrency", 1, MAX_CONCURRENCY, "a kernel process each"
        )
    if config.ray_actors is not None:
        check_count(config.ray_actors, "--ray-actors", 1, MAX_RAY_ACTORS)
    if config.sandbox == "none" and (config.concurrency or 1) > 1:
        raise UserError(
            "--sandbox none runs one investigation at a time, in this process; drop --concurrency or use --sandbox process."
        )
    if config.executor not in EXECUTORS:
        raise UserError(f"Unknown --executor {config.executor!r}. Use local or ray.")
    if config.batching not in ("auto", "on", "off"):
        raise UserError(f"--batching must be auto, on or off, not {config.batching!r}.")
    if config.ray_address and config.executor != "ray":
        raise UserError("--ray-address needs --executor ray.")
    if config.containment not in ("bwrap", "none"):
        raise UserError(
            f"Unknown --containment {config.containment!r}. Use bwrap (the default) or none (agent code uncontained, at your own risk)."
        )
    check_count(config.reflect, "--reflect", 0, MAX_REFLECT, "each can be a whole investigation")
    threshold = config.reflect_threshold
    if not (
        isinstance(threshold, (int, float)) and math.isfinite(threshold) and 0 < threshold <= 1
    ):
        raise UserError(
            f"--reflect-threshold must be a share of images above 0 and at most 1, not {threshold!r}."
        )
    check_count(
        config.reflect_k, "--reflect-k", 1, MAX_REFLECT_K, "each is an image rendered per check"
    )
    if config.prompts is not None and config.prompts not in PROMPT_MODES:
        raise UserError(
            f"--prompts must be template (no LLM) or llm (the evaluator backbone), not {config.prompts!r}."
        )
    if (config.evaluator or config.prompts) and not config.reflect:
        raise UserError(
            "--evaluator and --prompts choose who writes reflection's predictions; add --reflect N."
        )
    if config.evaluator and config.prompts == "template":
        raise UserError("--evaluator writes prompts, --prompts template uses none; drop one.")


def make_run_task(config: RunConfig) -> Task:
    """The run's task, with its options; one-line errors for an unknown task or option, and
    for --pairs with a task that studies one unit at a time."""
    task = make_task(config.task, config.task_options)
    if config.pairs and task.arity == 1:
        raise UserError(
            f"--pairs gives pairs of units, and --task {config.task} studies one unit at a time; "
            "use a task of two units (--task compare), or --units."
        )
    return task


def make_evaluator(config: RunConfig, agent: Backbone) -> tuple[Backbone | None, str]:
    """Who writes reflection's predictions: (the evaluator backbone or None, the prompt mode).
    The default evaluator is the agent's backbone; one that writes no prompts (the baseline,
    a replay) means templates, unless --prompts llm asks otherwise."""
    if not config.reflect or config.prompts == "template":
        return None, "template"
    made = (
        make_backbone(config.evaluator, config.evaluator_options, flag="--evaluator")
        if config.evaluator
        else agent
    )
    if made.writes_prompts:
        return made, "llm"
    if made is not agent:
        made.close()
    if config.prompts == "llm":
        raise UserError(
            f"--prompts llm needs an evaluator that writes prompts, and {made.name} does not; "
            "give --evaluator claude (or another model), or --prompts template."
        )
    return None, "template"


def make_backbone(
    spec: str, options: dict[str, str] | None = None, flag: str = "--backbone"
) -> Backbone:
    entry, arg = plugins.registry("backbones").resolve(spec, flag=flag)
    backbone = entry.factory(arg, **(options or {}))
    backbone.name = backbone.name or spec
    return backbone


def make_backbones(config: RunConfig) -> tuple[Backbone, Backbone]:
    """The agent's backbone and the describer's (the same object unless --describer differs),
    priced with the run's table, and able to keep to --budget-usd."""
    prices = PriceTable.load(config.price_file)
    options = dict(config.backbone_options)
    if config.base_url:
        options.setdefault("base_url", config.base_url)
    agent = make_backbone(config.backbone, options)
    agent.prices = prices
    describer = agent
    if config.describer and (config.describer != config.backbone or config.describer_options):
        try:
            describer = make_backbone(
                config.describer, config.describer_options, flag="--describer"
            )
        except BaseException:
            agent.close()
            raise
        describer.prices = prices
    if config.budget_usd is not None:
        for b in dict.fromkeys((agent, describer)):
            if not b.price_known():
                agent.close()
                describer.close()
                raise UserError(
                    f"--budget-usd needs a price for {b.model or b.name}, and the price table has "
                    f"none. Add one with --price-file FILE, e.g. "
                    f'{{"{b.model or b.name}": {{"input": 1.0, "output": 2.0}}}} (USD per million tokens).'
                )
    return agent, describer


def make_reporters(names: list[str] | None, results: Path) -> Reporters:
    registry = plugins.registry("reporters")
    chosen = (
        list(names)
        if names is not None
        else [n for n in DEFAULT_REPORTERS if n in registry.entries]
    )
    return Reporters([registry.resolve(n)[0].factory(results) for n in chosen])


def world_spec(config: RunConfig) -> WorldSpec:
    return WorldSpec(
        target=config.target,
        target_options=dict(config.target_options),
        bases=list(config.bases),
        tools=list(config.tools) if config.tools is not None else None,
        tool_options={cap: dict(opts) for cap, opts in config.tool_options.items()},
        device=config.device,
        precision=config.precision,
        exemplars=config.exemplars,
        batching=config.batching,
        task=config.task,
        task_options=dict(config.task_options),
    )


def select_subjects(
    config: RunConfig, task: Task, wanted: unitspec.Selection, layers: dict[str, Any]
) -> list[Subject]:
    """What the run studies: its units, or for a task of several units, their groups (the
    pairs of --pairs, else consecutive units); --random and --chunk pick among these."""
    units = unitspec.expand(wanted, layers, config.target)
    for name in dict.fromkeys(u.layer for u in units):
        task.check_layer(layers[name], config.target)
    if config.pairs:
        groups = unitspec.read_pairs_file(config.pairs)
    elif task.arity and task.arity > 1:
        groups = unitspec.group(units, task.arity)
    else:
        groups = [(u,) for u in units]
    return [Subject(g) for g in select_units(config, groups)]


def select_units(config: RunConfig, selected: list[Any]) -> list[Any]:
    """``--random`` and ``--chunk`` over the selected units (or groups of units)."""
    how = "the selection"
    if config.random is not None:
        selected = unitspec.sample(selected, config.random, config.seed)
    if config.chunk:
        index, total = unitspec.parse_chunk(config.chunk)
        how = f"chunk {config.chunk} of the {len(selected)} selected unit(s)"
        selected = unitspec.chunk(selected, index, total)
    if not selected:
        raise UserError(
            f"Zero units selected: {how} is empty. Check --units, --unit-file and --chunk."
        )
    return selected


def run(config: RunConfig, reporter: Reporter | None = None) -> list[Investigation]:
    """Investigate every selected unit; returns the investigations, finished or skipped."""
    check_config(config)
    task = make_run_task(config)
    wanted = selection(config)
    plugins.registry("targets").resolve(config.target)  # an unknown target fails before any loading
    plugins.select_tools(
        config.tools
    )  # unknown tools fail here; defaults resolve where models load
    memory_limit = parse_memory(config.memory_limit)
    concurrency = config.concurrency or (1 if config.sandbox == "none" else DEFAULT_CONCURRENCY)
    results = Path(config.results)
    backbone, describer_backbone = make_backbones(config)
    describer_name = describer_backbone.name if describer_backbone is not backbone else None
    try:
        evaluator, prompt_mode = make_evaluator(config, backbone)
    except BaseException:
        backbone.close()
        describer_backbone.close()
        raise
    reporters = (
        reporter
        if isinstance(reporter, Reporters)
        else (
            Reporters([reporter])
            if reporter is not None
            else make_reporters(config.reporters, results)
        )
    )
    spec = world_spec(config)
    if config.executor == "ray":
        from maia_core.execution.ray_executor import RayExecution

        execution = RayExecution(
            spec,
            address=config.ray_address,
            actors=config.ray_actors,
            concurrency=concurrency,
            cell_timeout=config.cell_timeout,
            memory_limit=memory_limit,
            sandbox=config.sandbox,
            containment=config.containment,
        )
    else:
        execution = make_execution(
            config.sandbox,
            spec,
            cell_timeout=config.cell_timeout,
            memory_limit=memory_limit,
            log_dir=results / "logs",
            containment=config.containment,
            concurrency=concurrency,
            sessions=most_subjects(config, wanted),
        )
    interrupted = False
    try:
        execution.start()
        layers = execution.layer_infos(list(wanted))
        selected = select_subjects(config, task, wanted, layers)
        info = RunInfo(
            config,
            selected,
            backbone.name,
            config.target,
            describer_name,
            concurrency=concurrency,
            tools=dict(execution.tools),
            containment=execution.containment,
            provenance=execution.provenance(),
        )
        if execution.containment.startswith("not contained"):
            sys.stderr.write(f"maia: agent code is {execution.containment}.\n")
        reporters.run_started(info)
        scheduler = Scheduler(
            config,
            execution,
            backbone,
            describer_backbone,
            reporters,
            info,
            concurrency=concurrency,
            task=task,
            evaluator=evaluator,
            prompts=prompt_mode,
        )
        investigations = scheduler.run(selected)
        reporters.run_finished(info, investigations)
    except (KeyboardInterrupt, OutOfSpace):
        interrupted = True  # the units in flight are stopped now, and resume next time
        raise
    finally:
        execution.close(now=interrupted)
        backbone.close()
        if describer_backbone is not backbone:
            describer_backbone.close()
        if evaluator is not None and evaluator is not backbone:
            evaluator.close()
        reporters.close()
    return investigations
