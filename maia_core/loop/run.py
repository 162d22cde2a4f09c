"""A run: many units of one target investigated by one backbone.

Used by ``maia run`` and usable from notebooks::

    from maia_core.loop.run import RunConfig, run
    investigations = run(RunConfig(target="efficientnet_lite0", units="blocks.6=0-2",
                                   backbone="replay:history.json"))
"""

from __future__ import annotations

import json
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from maia_core import plugins
from maia_core import units as unitspec
from maia_core.backbone import Backbone
from maia_core.errors import BackboneError, UserError
from maia_core.execution.sandbox import DEFAULT_CELL_TIMEOUT, make_sandbox, parse_memory
from maia_core.execution.world import WorldSpec
from maia_core.files import slug
from maia_core.loop.describer import Describer
from maia_core.loop.investigation import DEFAULT_MAX_ROUNDS, Investigation, Loop, Result
from maia_core.loop.reporter import Reporter, Reporters
from maia_core.providers.pricing import PriceTable
from maia_core.units import Unit

DEFAULT_REPORTERS = ("json", "html", "console")


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


@dataclass
class RunInfo:
    config: RunConfig
    units: list[Unit]
    backbone: str
    target: str
    describer: str | None = None
    # Estimated USD this run has spent so far, and the units --budget-usd kept from starting.
    spent_usd: float = 0.0
    not_started: list[Unit] = field(default_factory=list)


def selection(config: RunConfig) -> unitspec.Selection:
    if bool(config.units) == bool(config.unit_file):
        raise UserError(
            "Give the units to study with exactly one of --units LAYER=UNITS or --unit-file FILE."
        )
    return (
        unitspec.parse_unit_spec(config.units)
        if config.units
        else unitspec.read_unit_file(config.unit_file)
    )


def make_backbone(spec: str, options: dict[str, str] | None = None) -> Backbone:
    entry, arg = plugins.registry("backbones").resolve(spec)
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
            describer = make_backbone(config.describer, config.describer_options)
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


def unit_dir(results: Path, backbone: Backbone, target: str, unit: Unit) -> Path:
    """``results/<backbone>/<target>/<layer>/<unit>/``"""
    return Path(results) / backbone.slug / slug(target) / slug(unit.layer) / str(unit.index)


def completed(out_dir: Path) -> bool:
    try:
        return json.loads((out_dir / "result.json").read_text()).get("status") == "completed"
    except (OSError, ValueError):
        return False


def run(config: RunConfig, reporter: Reporter | None = None) -> list[Investigation]:
    """Investigate every selected unit; returns the investigations, finished or skipped."""
    wanted = selection(config)
    plugins.registry("targets").resolve(config.target)  # an unknown target fails before any loading
    plugins.select_tools(config.tools)  # unknown tools fail here; defaults resolve where models load
    memory_limit = parse_memory(config.memory_limit)
    results = Path(config.results)
    backbone, describer_backbone = make_backbones(config)
    describer_name = describer_backbone.name if describer_backbone is not backbone else None
    describer = Describer(describer_backbone)
    reporters = reporter or make_reporters(config.reporters, results)

    spec = WorldSpec(
        target=config.target,
        target_options=dict(config.target_options),
        bases=list(config.bases),
        tools=list(config.tools) if config.tools is not None else None,
        device=config.device,
        precision=config.precision,
        exemplars=config.exemplars,
    )

    sandbox = make_sandbox(
        config.sandbox,
        spec,
        ask_backbone=describer,
        cell_timeout=config.cell_timeout,
        memory_limit=memory_limit,
        log_path=results / "worker.log",
    )
    investigations: list[Investigation] = []
    try:
        sandbox.start()
        layers = sandbox.layer_infos(list(wanted))
        selected = unitspec.expand(wanted, layers, config.target)
        if config.random is not None:
            selected = unitspec.sample(selected, config.random, config.seed)
        if config.chunk:
            selected = unitspec.chunk(selected, *unitspec.parse_chunk(config.chunk))
        info = RunInfo(config, selected, backbone.name, config.target, describer_name)
        reporters.run_started(info)
        loop = Loop(backbone, sandbox, reporters, max_rounds=config.max_rounds, describer=describer)
        for unit in selected:
            inv = Investigation(
                unit,
                config.target,
                backbone.name,
                unit_dir(results, backbone, config.target, unit),
                describer=describer_name,
            )
            if not config.force and completed(inv.out_dir):
                investigations.append(inv)
                reporters.unit_skipped(inv)
                continue
            if config.budget_usd is not None and info.spent_usd >= config.budget_usd:
                # Not started, so nothing is written: a later run with more budget resumes here.
                info.not_started.append(unit)
                continue
            investigations.append(inv)
            reporters.unit_started(inv)
            try:
                loop.run(inv)
            except (BackboneError, RuntimeError) as exc:
                # The backbone gave up, or the sandbox could not serve this unit: mark it
                # failed and go on with the others.
                inv.result = inv.result or Result("failed")
                inv.result.status = "failed"
                inv.result.error = f"{type(exc).__name__}: {exc}"
                if not isinstance(exc, BackboneError):
                    traceback.print_exc(file=sys.stderr)
            info.spent_usd += inv.result.usage.cost_usd or 0.0
            reporters.unit_finished(inv)
        reporters.run_finished(info, investigations)
    finally:
        sandbox.close()
        backbone.close()
        if describer_backbone is not backbone:
            describer_backbone.close()
        reporters.close()
    return investigations
