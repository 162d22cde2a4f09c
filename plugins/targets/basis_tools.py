"""``maia basis train-sae``: train a small sparse autoencoder on a layer's activations.

It makes a basis file for ``--basis LAYER=FILE`` (format in maia_core/basis.py), so units can
be SAE latents instead of channels. It is deliberately small: a toy to exercise the path
end to end and a starting point, not a replacement for a real SAE library.
"""

from __future__ import annotations

from pathlib import Path

from maia_core import hookimpl
from maia_core.errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
# A toy trainer's bounds: its encoder and decoder are C x K floats in memory.
MAX_LATENTS = 65_536
MAX_STEPS = 1_000_000
MAX_POSITIONS = 65_536


@hookimpl
def register_commands(cli):
    import typer

    basis_app = typer.Typer(
        help="Bases of directions and SAE latents for --basis.", no_args_is_help=True
    )
    cli.add_typer(basis_app, name="basis")

    @basis_app.command("train-sae")
    def train_sae_command(
        target: str = typer.Option(..., "--target", "-t", help="The target, as for maia run."),
        layer: str = typer.Option(
            ..., "--layer", help="The layer whose activations the SAE encodes."
        ),
        images: Path = typer.Option(
            ..., "--images", help="A folder of images (searched recursively)."
        ),
        out: Path = typer.Option(
            Path("sae.safetensors"), "--out", help="Where to write the basis file."
        ),
        latents: int = typer.Option(64, "--latents", help="Number of latents K (1 to 65,536)."),
        l1: float = typer.Option(1e-3, "--l1", help="Sparsity penalty on the latents."),
        steps: int = typer.Option(500, "--steps", help="Optimizer steps (1 to 1,000,000)."),
        lr: float = typer.Option(1e-3, "--lr", help="Adam learning rate."),
        positions: int = typer.Option(
            64, "--positions", help="Spatial positions sampled per image (1 to 65,536)."
        ),
        limit: int | None = typer.Option(None, "--limit", help="Use at most this many images."),
        seed: int = typer.Option(0, "--seed"),
        device: str = typer.Option("auto", "--device"),
        target_option: list[str] = typer.Option(
            [], "--target-option", help="KEY=VALUE passed to the target."
        ),
    ) -> None:
        """Train a toy SAE on LAYER's activations over a folder of images."""
        from maia_core.options import parse_pairs

        stats = train_sae(
            target,
            layer,
            images,
            out,
            latents=latents,
            l1=l1,
            steps=steps,
            lr=lr,
            positions=positions,
            limit=limit,
            seed=seed,
            device=device,
            target_options=parse_pairs(target_option, "--target-option"),
        )
        print(
            f"wrote {out}: {stats['latents']} latents over {stats['channels']} channels of {layer}, "
            f"trained on {stats['vectors']} activation vectors from {stats['images']} images; "
            f"variance explained {stats['fve']:.3f}, mean active latents {stats['l0']:.1f}"
        )
        print(
            f"use it with: maia run --target {target} --basis {layer}={out} --units {layer}@{out.stem}=0-{latents - 1} ..."
        )


def image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise UserError(f"Image folder {str(folder)!r} does not exist.")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"Image folder {str(folder)!r} holds no jpg, png, webp or bmp files.")
    return files


def collect(target, layer: str, files: list[Path], positions: int, generator):
    """Activation vectors [M, C] of ``layer``: ``positions`` random positions per image."""
    import torch
    from PIL import Image

    vectors = []
    for start in range(0, len(files), target.batch_size):
        imgs = []
        for f in files[start : start + target.batch_size]:
            try:
                imgs.append(Image.open(f).convert("RGB"))
            except OSError:
                continue  # unreadable images are skipped
        if not imgs:
            continue
        x = target.preprocess.to_tensor(target.preprocess.views(imgs))
        maps = target.forward_layers(x, [layer])[layer].cpu()
        if maps.ndim == 2:
            vectors.append(maps)
            continue
        flat = maps.flatten(2).transpose(1, 2)  # [B, h*w, C]
        take = min(positions, flat.shape[1])
        for v in flat:
            idx = torch.randperm(v.shape[0], generator=generator)[:take]
            vectors.append(v[idx])
    if not vectors:
        raise UserError("No readable images: nothing to train on.")
    return torch.cat(vectors)


def train_sae(
    target_spec: str,
    layer: str,
    images: Path,
    out: Path,
    *,
    latents: int = 64,
    l1: float = 1e-3,
    steps: int = 500,
    lr: float = 1e-3,
    positions: int = 64,
    limit: int | None = None,
    seed: int = 0,
    device: str = "auto",
    target_options: dict[str, str] | None = None,
) -> dict[str, float]:
    import math

    import torch
    from safetensors.torch import save

    from maia_core import plugins
    from maia_core.errors import UserError, check_count
    from maia_core.files import atomic_write_bytes, ensure_output_file

    check_count(latents, "--latents", 1, MAX_LATENTS, "a toy trainer's; C x K floats in memory")
    check_count(steps, "--steps", 1, MAX_STEPS)
    check_count(positions, "--positions", 1, MAX_POSITIONS)

    for name, value in (("--lr", lr), ("--l1", l1)):
        if not (math.isfinite(value) and value >= 0) or (name == "--lr" and value == 0):
            raise UserError(f"{name} must be a finite number above 0, not {value!r}.")
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1, not {limit}.")
    out = ensure_output_file(out, "--out")
    files = image_files(Path(images))[:limit]
    entry, arg = plugins.registry("targets").resolve(target_spec)
    target = entry.factory(arg, device=device, **(target_options or {}))
    info = target.require_layer(layer)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x = collect(target, layer, files, positions, gen).float()
    scale = x.norm(dim=1).mean().clamp_min(1e-6)  # train on unit-scale data; undone when saving
    xs = x / scale
    C = info.units
    b_dec = xs.mean(0).clone().requires_grad_(True)
    W_enc = (torch.randn(C, latents) / C**0.5).requires_grad_(True)
    b_enc = torch.zeros(latents, requires_grad=True)
    W_dec = W_enc.detach().t().clone().requires_grad_(True)
    opt = torch.optim.Adam([W_enc, b_enc, W_dec, b_dec], lr=lr)
    batch = min(4096, len(xs))
    for _ in range(steps):
        v = xs[torch.randint(len(xs), (batch,), generator=gen)]
        z = torch.relu((v - b_dec) @ W_enc + b_enc)
        recon = z @ W_dec + b_dec
        loss = (recon - v).pow(2).sum(1).mean() + l1 * z.abs().sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with (
            torch.no_grad()
        ):  # unit-norm decoder rows, so the L1 penalty cannot be cheated by scale
            W_dec /= W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)
    with torch.no_grad():
        z = torch.relu((xs - b_dec) @ W_enc + b_enc)
        recon = z @ W_dec + b_dec
        fve = 1 - (recon - xs).pow(2).sum() / (xs - xs.mean(0)).pow(2).sum()
        l0 = (z > 0).float().sum(1).mean()
        # in the layer's own units: latent = relu((x - b_dec*s) @ (W_enc/s) + b_enc)
        tensors = {
            "W_enc": (W_enc / scale).contiguous(),
            "b_enc": b_enc.clone(),
            "b_dec": (b_dec * scale).contiguous(),
            "W_dec": (W_dec * scale).contiguous(),
        }
    atomic_write_bytes(
        out,
        save(
            {k: v.detach().cpu() for k, v in tensors.items()},
            metadata={
                "target": target_spec,
                "layer": layer,
                "latents": str(latents),
                "l1": str(l1),
                "steps": str(steps),
            },
        ),
    )
    return {
        "latents": latents,
        "channels": C,
        "vectors": len(xs),
        "images": len(files),
        "fve": float(fve),
        "l0": float(l0),
    }
