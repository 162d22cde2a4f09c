"""``maia spurious``: MAIA §5.1 (removing spurious features) offline, in one command.

Light on purpose: the experiment (:mod:`.spurious`) loads torch when the command runs.
"""

from __future__ import annotations

from pathlib import Path

from maia_core import hookimpl


@hookimpl
def register_commands(cli):
    import typer

    @cli.command("spurious")
    def spurious(
        backbone: str = typer.Option(
            "baseline",
            "--backbone",
            "-b",
            help="Labels the units: any backbone (baseline offline).",
        ),
        backbone_option: list[str] = typer.Option([], "--backbone-option", help="KEY=VALUE."),
        k: int = typer.Option(
            50, "--k", help="Units the L1 ranking keeps for labelling (MAIA: 50)."
        ),
        draws: int = typer.Option(10, "--draws", help="Random draws for the random-k row."),
        seed: int = typer.Option(0, "--seed", help="Seed of the random draws."),
        out: Path = typer.Option(
            Path("results/spurious"),
            "--out",
            help="Folder for spurious.json, spurious.csv and the labels.",
        ),
        n_train: int = typer.Option(160, "--n-train", help="Training renders of reliance:learned."),
        n_test: int = typer.Option(96, "--n-test", help="Balanced test renders."),
        pairs: int = typer.Option(
            6, "--pairs", help="Matched pairs per class for its measured reliance."
        ),
        concurrency: int | None = typer.Option(
            None, "--concurrency", "-j", help="Investigations at once."
        ),
        device: str = typer.Option("cpu", "--device"),
        max_rounds: int | None = typer.Option(None, "--max-rounds"),
    ) -> None:
        """MAIA §5.1 offline: label the learned head's feature units, keep those whose label does
        not depend on the background, refit on biased data, score on balanced renders."""
        from maia_core.files import ensure_output_folder
        from maia_core.options import parse_pairs
        from maia_plugins.targets.reliance_learned import LearnedConfig
        from maia_plugins.targets.spurious import render_table, run_spurious

        ensure_output_folder(out, "--out")
        config = LearnedConfig.from_options(
            {"n_train": str(n_train), "n_test": str(n_test), "pairs": str(pairs)}
        )
        table = run_spurious(
            backbone=backbone,
            backbone_options=parse_pairs(backbone_option, "--backbone-option"),
            k=k,
            draws=draws,
            seed=seed,
            out=out,
            config=config,
            concurrency=concurrency,
            device=device,
            max_rounds=max_rounds,
        )
        print(render_table(table))
        print(f"Wrote {out / 'spurious.json'} and {out / 'spurious.csv'}.")
