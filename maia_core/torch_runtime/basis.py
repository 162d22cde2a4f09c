"""Units that are not channels: directions and SAE latents over a layer's activations.

A basis file is a safetensors file holding

- ``W_enc``: float ``[C, K]``, the encoder (C = the layer's channels, K = latents);
- ``b_enc``: float ``[K]``, the encoder bias;
- ``b_dec``: float ``[C]``, optional, subtracted from the activations first;

and, optionally, ``W_dec`` ``[K, C]`` (ignored here) and string metadata. Latent k at each
spatial position is ``ReLU((x - b_dec) @ W_enc + b_enc)[k]``, so maps, masks and exemplars
work exactly as for channels. A plain set of directions is ``W_enc`` with ``b_enc`` zero
(and the ReLU then keeps the positive side of each projection).

``--basis LAYER=PATH`` adds the virtual layer ``LAYER@NAME`` (NAME is the file's stem), whose
units are the K latents: ``--units blocks.6@sae=0-9``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from maia_core.errors import UserError


@dataclass
class Basis:
    name: str
    layer: str
    W_enc: torch.Tensor  # [C, K]
    b_enc: torch.Tensor  # [K]
    b_dec: torch.Tensor | None  # [C]

    @property
    def virtual_layer(self) -> str:
        return f"{self.layer}@{self.name}"

    @property
    def channels(self) -> int:
        return self.W_enc.shape[0]

    @property
    def latents(self) -> int:
        return self.W_enc.shape[1]

    @classmethod
    def load(cls, layer: str, path: str | Path, name: str | None = None) -> Basis:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise UserError(f"Basis file {str(path)!r} does not exist.")
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserError(
                f"Basis file {str(path)!r} is not a readable safetensors file: {exc}."
            ) from None
        missing = [k for k in ("W_enc", "b_enc") if k not in tensors]
        if missing:
            raise UserError(
                f"Basis file {str(path)!r} lacks {', '.join(missing)}; it needs W_enc [C, K], b_enc [K] and optionally b_dec [C]."
            )
        w, b = tensors["W_enc"].float(), tensors["b_enc"].float()
        b_dec = tensors["b_dec"].float() if "b_dec" in tensors else None
        if (
            w.ndim != 2
            or b.shape != (w.shape[1],)
            or (b_dec is not None and b_dec.shape != (w.shape[0],))
        ):
            shapes = ", ".join(
                f"{k} {tuple(t.shape)}"
                for k, t in tensors.items()
                if k in ("W_enc", "b_enc", "b_dec")
            )
            raise UserError(
                f"Basis file {str(path)!r} has shapes {shapes}; expected W_enc [C, K], b_enc [K], b_dec [C]."
            )
        if w.shape[1] == 0:
            raise UserError(
                f"Basis file {str(path)!r} has no latents: W_enc is [{w.shape[0]}, 0]. A basis "
                "needs at least one (K >= 1): W_enc [C, K], b_enc [K]."
            )
        return cls(name or path.stem, layer, w, b, b_dec)

    def to(self, device: torch.device) -> Basis:
        return Basis(
            self.name,
            self.layer,
            self.W_enc.to(device),
            self.b_enc.to(device),
            None if self.b_dec is None else self.b_dec.to(device),
        )

    def encode(self, x: torch.Tensor, unit: int | None = None) -> torch.Tensor:
        """Latents of ``x`` ([B, C, h, w] or [B, C]): [B, K, h, w] or [B, K]; one latent if ``unit``."""
        w, b = (
            (self.W_enc, self.b_enc)
            if unit is None
            else (self.W_enc[:, unit : unit + 1], self.b_enc[unit : unit + 1])
        )
        spatial = x.ndim == 4
        v = x.permute(0, 2, 3, 1) if spatial else x  # channels last, for the matmul
        if self.b_dec is not None:
            v = v - self.b_dec
        z = torch.relu(v @ w + b)
        return z.permute(0, 3, 1, 2) if spatial else z
