"""The ``grounded-sam`` detector: Grounding DINO boxes, SAM masks, as MAIA's synthetic neurons.

MAIA's ``SAMNeuron`` used IDEA's Grounding DINO (SwinT-OGC) and SAM ViT-H; here they are the
transformers ports, ``IDEA-Research/grounding-dino-tiny`` (converted from that very checkpoint)
and ``facebook/sam-vit-huge``, with MAIA's settings:

- images at 224x224 (MAIA resizes to 224 and has Grounding DINO's 800-px resize commented
  out), ImageNet normalization;
- Grounding DINO runs once per concept, caption ``concept.lower().strip() + "."``; a box is
  kept when its best token probability is above the box threshold (0.25); the text threshold
  (0.3) only picks the phrase, as in MAIA;
- a concept's score is the mean of its kept boxes' scores (MAIA's ``logit / cnt``; option
  ``score=max`` takes the best box instead), and 0 when no box is kept: never a score carried
  over from another concept (MAIA's bug);
- SAM gets the boxes as prompts (``multimask_output=False``), one mask per box; a concept's
  region is the union of its boxes' masks, dilated as MAIA's ``show_mask`` does (5x5 elliptical
  kernel, 9 iterations). MAIA dilates each connected component on its own; dilation
  distributes over union, so dilating the union once is the same region.

Speed: each image is encoded by SAM's ViT-H once per batch, whatever its number of boxes and
concepts (MAIA encoded it once per concept), and only images with a kept box are encoded.

Options: ``grounding_model`` and ``sam_model`` (Hub ids or local folders holding the model and
its processor), ``box_threshold``, ``text_threshold``, ``score`` (mean or max), ``size`` (224),
``dilation`` (iterations, 9), ``sam_batch`` (images per SAM encoder call, 4).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from maia_core.errors import UserError
from maia_core.options import as_float, as_int, reject_unknown
from maia_core.torch_runtime.detector import Detector
from maia_core.torch_runtime.target import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocess,
    hf_cache_dir,
    hub_offline_unless_reachable,
)

GROUNDING_DINO = "IDEA-Research/grounding-dino-tiny"
SAM = "facebook/sam-vit-huge"
OPTIONS = (
    "grounding_model",
    "sam_model",
    "box_threshold",
    "text_threshold",
    "score",
    "size",
    "dilation",
    "sam_batch",
)
# OpenCV's 5x5 MORPH_ELLIPSE, which MAIA's dilation uses.
ELLIPSE_5X5 = (
    (0, 0, 1, 0, 0),
    (1, 1, 1, 1, 1),
    (1, 1, 1, 1, 1),
    (1, 1, 1, 1, 1),
    (0, 0, 1, 0, 0),
)


def make_grounded_sam_detector(**options: str) -> GroundedSamDetector:
    reject_unknown(options, "Detector grounded-sam", OPTIONS)
    score = options.get("score", "mean")
    if score not in ("mean", "max"):
        raise UserError(f"Option score={score!r} of grounded-sam must be mean or max.")
    return GroundedSamDetector(
        grounding_model=options.get("grounding_model", GROUNDING_DINO),
        sam_model=options.get("sam_model", SAM),
        box_threshold=as_float(options.get("box_threshold", 0.25), "box_threshold"),
        text_threshold=as_float(options.get("text_threshold", 0.3), "text_threshold"),
        score=score,
        size=as_int(options.get("size", 224), "size"),
        dilation=as_int(options.get("dilation", 9), "dilation"),
        sam_batch=as_int(options.get("sam_batch", 4), "sam_batch"),
    )


def _is_cached(repo: str) -> bool:
    if Path(repo).expanduser().is_dir():
        return True
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, "config.json")
    return isinstance(found, str)


def missing_weights_error(missing: Sequence[str]) -> UserError:
    fetch = " && ".join(f"hf download {repo}" for repo in missing)
    return UserError(
        f"The grounded-sam detector needs the weights of {' and '.join(missing)}, which are not in "
        f"the Hugging Face cache ({hf_cache_dir()}) and cannot be downloaded here. Fetch them where "
        f"there is network with: {fetch} (then copy the cache here), or study the offline set "
        "instead: --target synthetic:offline."
    )


class GroundedSamDetector(Detector):
    name = "grounded-sam"

    def __init__(
        self,
        grounding_model: str = GROUNDING_DINO,
        sam_model: str = SAM,
        box_threshold: float = 0.25,
        text_threshold: float = 0.3,
        score: str = "mean",
        size: int = 224,
        dilation: int = 9,
        sam_batch: int = 4,
    ):
        for name, value in (("box_threshold", box_threshold), ("text_threshold", text_threshold)):
            if not 0.0 <= value <= 1.0:
                raise UserError(f"Option {name}={value} of grounded-sam must be in [0, 1].")
        if size < 32 or dilation < 0 or sam_batch < 1:
            raise UserError(
                "Options of grounded-sam: size must be at least 32, dilation at least 0, sam_batch at least 1."
            )
        self.box_threshold = box_threshold
        self.text_threshold = text_threshold
        self.threshold = box_threshold  # a kept box scores above it, and so does their mean
        self.score = score
        self.size = size
        self.dilation = dilation
        self.sam_batch = sam_batch
        self.preprocess = Preprocess(
            size=size, crop_pct=1.0, interpolation="lanczos", mean=IMAGENET_MEAN, std=IMAGENET_STD
        )
        self.device = torch.device("cpu")
        with hub_offline_unless_reachable():
            from huggingface_hub import constants

            missing = [r for r in (grounding_model, sam_model) if not _is_cached(r)]
            if missing and constants.HF_HUB_OFFLINE:
                raise missing_weights_error(missing)
            # transformers is imported only now: a missing checkpoint fails in a second.
            from transformers import (
                GroundingDinoForObjectDetection,
                GroundingDinoProcessor,
                SamModel,
                SamProcessor,
            )

            try:
                self.grounding_processor = GroundingDinoProcessor.from_pretrained(grounding_model)
                self.grounding = GroundingDinoForObjectDetection.from_pretrained(grounding_model)
                self.sam_processor = SamProcessor.from_pretrained(sam_model)
                self.sam = SamModel.from_pretrained(sam_model)
            except (OSError, ValueError) as exc:
                raise missing_weights_error(missing or [grounding_model, sam_model]) from exc
        self.grounding.eval().requires_grad_(False)
        self.sam.eval().requires_grad_(False)

    def describe(self) -> str:
        return "Grounded-SAM detector (Grounding DINO boxes, SAM masks)"

    def to(self, device: torch.device) -> GroundedSamDetector:
        self.device = torch.device(device)
        self.grounding.to(self.device)
        self.sam.to(self.device)
        return self

    def close(self) -> None:
        self.grounding.to("cpu")
        self.sam.to("cpu")

    # -- detection ----------------------------------------------------------------------------
    def _images(self, x: torch.Tensor) -> list[np.ndarray]:
        """The batch back as uint8 HxWx3 arrays, what the processors take."""
        mean = torch.tensor(self.preprocess.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.preprocess.std, device=x.device).view(1, 3, 1, 1)
        pixels = ((x.float() * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)
        return list(pixels.permute(0, 2, 3, 1).cpu().numpy())

    @torch.inference_mode()
    def ground(
        self, images: list[np.ndarray], concept: str
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Grounding DINO on every image for one concept: per image, the kept boxes' scores
        ``[n]`` and boxes ``[n, 4]`` (x0, y0, x1, y1 in pixels)."""
        caption = concept.lower().strip()
        caption = caption if caption.endswith(".") else caption + "."
        side = {"shortest_edge": self.size, "longest_edge": self.size}
        inputs = self.grounding_processor(
            images=images, text=[caption] * len(images), return_tensors="pt", size=side
        ).to(self.device)
        outputs = self.grounding(**inputs)
        results = self.grounding_processor.post_process_grounded_object_detection(
            outputs,
            inputs["input_ids"],
            threshold=self.box_threshold,
            text_threshold=self.text_threshold,
            target_sizes=[img.shape[:2] for img in images],
        )
        return [(r["scores"].float().cpu(), r["boxes"].float().cpu()) for r in results]

    @torch.inference_mode()
    def segment(self, images: list[np.ndarray], boxes: list[torch.Tensor]) -> list[torch.Tensor]:
        """SAM masks for box prompts: per image, bool ``[n, H, W]`` (one mask per box). Each
        image with boxes is encoded once; images without boxes are not encoded."""
        out: list[torch.Tensor] = [
            torch.zeros(len(b), *img.shape[:2], dtype=torch.bool) for img, b in zip(images, boxes)
        ]
        todo = [i for i, b in enumerate(boxes) if len(b)]
        for start in range(0, len(todo), self.sam_batch):
            chunk = todo[start : start + self.sam_batch]
            encoded = [
                self.sam_processor(
                    images=images[i], input_boxes=[boxes[i].tolist()], return_tensors="pt"
                )
                for i in chunk
            ]
            pixels = torch.cat([e["pixel_values"] for e in encoded]).to(self.device)
            embeddings = self.sam.get_image_embeddings(pixels)
            for j, (i, e) in enumerate(zip(chunk, encoded)):
                result = self.sam(
                    image_embeddings=embeddings[j : j + 1],
                    input_boxes=e["input_boxes"].to(self.device, embeddings.dtype),
                    multimask_output=False,
                )
                masks = self.sam_processor.post_process_masks(
                    result.pred_masks.float().cpu(), e["original_sizes"], e["reshaped_input_sizes"]
                )[0]  # [n, 1, H, W] bool
                out[i] = masks[:, 0]
        return out

    def detect(self, x: torch.Tensor, concepts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        images = self._images(x)
        B, C = len(images), len(concepts)
        H, W = images[0].shape[:2]
        scores = torch.zeros(B, C)
        owners: list[list[int]] = [[] for _ in range(B)]  # per image: the concept of each box
        boxes: list[list[torch.Tensor]] = [[] for _ in range(B)]
        for c, concept in enumerate(concepts):
            for b, (s, bx) in enumerate(self.ground(images, concept)):
                if len(s):
                    scores[b, c] = s.mean() if self.score == "mean" else s.max()
                    owners[b] += [c] * len(s)
                    boxes[b].append(bx)
        box_tensors = [torch.cat(b) if b else torch.zeros(0, 4) for b in boxes]
        regions = torch.zeros(B, C, H, W, dtype=torch.bool)
        for b, masks in enumerate(self.segment(images, box_tensors)):
            for c, mask in zip(owners[b], masks):
                regions[b, c] |= mask
        regions = dilate(regions.flatten(0, 1)[:, None].float(), self.dilation)[:, 0]
        return scores.to(x.device), regions.view(B, C, H, W).to(x.device)


def dilate(masks: torch.Tensor, iterations: int, kernel: Any = ELLIPSE_5X5) -> torch.Tensor:
    """Binary dilation of ``[N, 1, H, W]`` masks by ``kernel``, ``iterations`` times, as
    ``cv2.dilate(mask, kernel, iterations=...)`` (the image border does not grow regions)."""
    k = torch.tensor(kernel, dtype=torch.float32, device=masks.device)[None, None]
    pad = k.shape[-1] // 2
    out = (masks > 0).float()
    for _ in range(iterations):
        if not out.any():
            break
        out = (F.conv2d(out, k, padding=pad) > 0).float()
    return out
