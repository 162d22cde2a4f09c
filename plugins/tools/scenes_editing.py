"""Edits of the ``scenes`` edit_images, and the ground truth both scenes tools record.

An image drawn by the scenes tools carries its spec in its ground truth, so an edit changes
the spec (swap a stamp, move it, recolour it, change the background) and draws it again:
the result is exact, and has exact ground truth. Any other image (a photo, a dataset
exemplar, a masked image) has no spec: objects can be pasted onto it and it can be
recoloured or grayed as a whole, and objects pasted earlier by this tool can be recoloured;
anything else is left undone, and the note says so.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
from PIL import Image

from maia_plugins.datasets import scene_effects
from maia_plugins.datasets.scene_effects import Effect
from maia_plugins.datasets.scenes import (
    BACKGROUNDS,
    Background,
    Placement,
    RenderedScene,
    SceneSpec,
    recolor,
)
from maia_plugins.tools.scene_language import (
    SIZES,
    TEXTURE_TINTS,
    Edit,
    SceneLanguage,
    color_rgb,
    make_background,
    seeded_rng,
    texture_tint,
)

_MASK_ALPHA = 128
_WHOLE = {"image", "picture", "photo", "everything", "whole image", "entire image", "scene"}
_WHOLE |= {"whole picture", "whole scene", "all", "entire picture", "photograph", "frame"}
_GRAY = (128, 128, 128)


def _words(target: str | None) -> str:
    words = (target or "").lower().split()
    return " ".join(w for w in words if w not in ("the", "a", "an", "this", "whole", "entire"))


def annotate(
    scene: RenderedScene,
    extras: list[dict[str, Any]],
    background: Any = None,
) -> dict[str, Any]:
    """The scenes annotation of ``scene`` with what the prompt called things: each object's
    ``concept`` and ``color_name``, the background's ``label`` and ``color_name``, the
    ``spec``, and the ``colors`` and ``concepts`` present. ``background`` is a
    :class:`~.scene_language.BackgroundChoice`, a dict with ``label``/``color_name``, or None
    (the default plain background)."""
    ann = scene.annotation
    for obj, extra in zip(ann["objects"], extras):
        obj["concept"] = extra.get("concept") or obj["label"]
        obj["color_name"] = extra.get("color_name")
    bg = ann["background"]
    if background is None:
        bg["label"], bg["color_name"] = "plain", None
    elif isinstance(background, dict):
        bg["label"], bg["color_name"] = background.get("label"), background.get("color_name")
    else:
        bg["label"], bg["color_name"] = background.label, background.color_name
    ann["spec"] = scene.spec.to_dict()
    colors = {o["color_name"] for o in ann["objects"] if o.get("color_name")}
    if bg.get("color_name"):
        colors.add(bg["color_name"])
    ann["colors"] = sorted(colors)
    ann["concepts"] = sorted({o["concept"] for o in ann["objects"]})
    return ann


# -- scenes images: edit the spec, draw it again -------------------------------------------


def is_scene_truth(truth: Any, image: Image.Image) -> bool:
    """Whether ``truth`` is a scenes annotation with the spec that drew ``image``, which an
    edit can change and draw again (other tools may put other ground truth)."""
    return (
        isinstance(truth, dict)
        and isinstance(truth.get("spec"), dict)
        and truth.get("size") == image.width == image.height
        and len(truth.get("objects", ())) == len(truth["spec"].get("objects", ()))
    )


def edit_scene(
    language: SceneLanguage, truth: dict[str, Any], edits: list[Edit], seed: int
) -> tuple[Image.Image, dict[str, Any], list[str]]:
    """Apply ``edits`` to the scene whose ground truth is ``truth``; (image, truth, notes)."""
    size = int(truth["size"])
    spec = SceneSpec.from_dict(truth["spec"])
    objects = list(spec.objects)
    extras = [
        {"concept": o.get("concept") or o["label"], "color_name": o.get("color_name")}
        for o in truth["objects"]
    ]
    background = spec.background
    effects = list(spec.effects)
    bg_meta = {
        "label": truth["background"].get("label"),
        "color_name": truth["background"].get("color_name"),
    }
    notes: list[str] = []
    for k, e in enumerate(edits):
        notes += e.notes
        step_seed = seed * 31 + k
        target = _words(e.target)
        if e.kind == "unknown":
            continue
        if e.kind == "add":
            anchor = None
            if e.target:
                found, missing = language.find(e.target, _views(language, objects, extras))
                if missing:
                    notes.append(f"placed it freely: {missing}")
                else:
                    anchor = (objects[found[0]], e.position)
            new, new_extras = language.place_new(e.objects, objects, step_seed, size, anchor)
            if anchor is not None and anchor[1] == "behind":
                objects, extras = new + objects, new_extras + extras  # drawn first
            else:
                objects, extras = objects + new, extras + new_extras
            continue
        if e.kind == "background":
            background = make_background(e.background, seeded_rng(step_seed, "background"))
            bg_meta = {"label": e.background.label, "color_name": e.background.color_name}
            continue
        if e.kind == "effect":
            effects = _change_effects(effects, e, step_seed)
            continue
        whole = target in _WHOLE
        if e.kind == "grayscale" and (whole or target in ("it", "")):
            # the whole image, photo backgrounds included, exactly as the effect draws it
            effects = _change_effects(effects, Edit("effect", effect=Effect.make("grayscale")), 0)
            continue
        names_bg = language.names_background(target, bg_meta.get("label"))
        if names_bg or (whole and e.kind in ("recolor", "grayscale")):
            if e.kind in ("recolor", "grayscale"):
                color = e.color if e.kind == "recolor" else "gray"
                background, said = _recolor_background(background, color, e.kind)
                if said:
                    notes.append(said)
                else:
                    bg_meta = {"label": bg_meta["label"], "color_name": color}
                if not whole:
                    continue
            else:
                notes.append(f"cannot {e.kind} the background (say 'change the background to ...')")
                continue
        indices, missing = language.find(e.target or "", _views(language, objects, extras))
        if missing:
            notes.append(f"did not {e.kind} '{e.target}': {missing}")
            continue
        if e.kind == "remove":
            keep = [j for j in range(len(objects)) if j not in indices]
            objects = [objects[j] for j in keep]
            extras = [extras[j] for j in keep]
        elif e.kind == "replace":
            phrase = e.objects[0]
            # "replace the dog with two cats": one in its place, the rest beside it
            more = [replace(phrase, count=phrase.count - 1)] if phrase.count > 1 else []
            more += e.objects[1:]
            for n, j in enumerate(indices):
                old = objects[j]
                stamp = language.pick_stamp(phrase.concept, step_seed * 17 + n, avoid=old.stamp)
                scale = old.scale * SIZES.get(phrase.size or "", 1.0)
                color = color_rgb(phrase.color) if phrase.color else None
                new = Placement(stamp, old.x, old.y, scale, old.flip, color)
                if phrase.position:
                    new = _move(new, phrase.position)
                objects[j] = language.fit(new, size)
                extras[j] = {"concept": phrase.concept.name, "color_name": phrase.color}
                if more:
                    anchor = (objects[j], "next to")
                    added, added_extras = language.place_new(
                        more, objects, step_seed * 13 + n, size, anchor
                    )
                    objects += added
                    extras += added_extras
        elif e.kind in ("recolor", "grayscale"):
            color = e.color if e.kind == "recolor" else "gray"
            for j in indices:
                objects[j] = replace(objects[j], color=color_rgb(color))
                extras[j] = {**extras[j], "color_name": color}
        elif e.kind == "resize":
            for j in indices:
                old = objects[j]
                scale = old.scale * e.factor if e.factor else 0.6 * SIZES.get(e.size or "", 1.0)
                objects[j] = language.fit(replace(old, scale=scale), size)
        elif e.kind == "move":
            for j in indices:
                objects[j] = language.fit(_move(objects[j], e.position), size)
        elif e.kind == "flip":
            for j in indices:
                objects[j] = replace(objects[j], flip=not objects[j].flip)
    scene = language.renderer.render(SceneSpec(background, tuple(objects), tuple(effects)), size)
    return scene.image, annotate(scene, extras, bg_meta), notes


def _change_effects(effects: list[Effect], e: Edit, seed: int) -> list[Effect]:
    """``effects`` with ``e``'s effect added (replacing one of its kind) or its kind removed."""
    kind = e.effect.kind if e.effect is not None else e.remove_effect
    kept = [x for x in effects if x.kind != kind]
    if e.effect is None:
        return kept
    effect = e.effect
    if effect.kind == "noise":
        effect = replace(effect, seed=seed)
    elif effect.kind == "rotate":  # rotations add up
        turned = sum(x.amount for x in effects if x.kind == "rotate") + effect.amount
        if round(turned / 90.0) % 4 == 0:
            return kept
        effect = replace(effect, amount=float(round(turned / 90.0) % 4 * 90))
    return [*kept, effect]


def _views(
    language: SceneLanguage, objects: list[Placement], extras: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The current objects as :meth:`SceneLanguage.find` reads them."""
    return [
        {
            "stamp": p.stamp,
            "label": language.library[p.stamp].label,
            "concept": x.get("concept"),
            "color_name": x.get("color_name"),
            "x": p.x,
            "y": p.y,
            "area": p.scale**2,
        }
        for p, x in zip(objects, extras)
    ]


def _move(p: Placement, position: str) -> Placement:
    x = {"left": 0.25, "right": 0.75}
    y = {"top": 0.25, "bottom": 0.75}
    if position == "center":
        return replace(p, x=0.5, y=0.5)
    words = position.split()
    return replace(
        p,
        x=next((x[w] for w in words if w in x), p.x),
        y=next((y[w] for w in words if w in y), p.y),
    )


def _recolor_background(bg: Background, color: str, kind: str) -> tuple[Background, str | None]:
    source = BACKGROUNDS[bg.name]
    rgb = color_rgb(color)
    if source.kind == "plain":
        if kind == "grayscale":
            lum = round(sum(w * c for w, c in zip((0.299, 0.587, 0.114), bg.color or _GRAY)))
            rgb = (lum, lum, lum)
        return replace(bg, color=rgb), None
    if source.kind == "texture":
        if kind == "grayscale":
            tint = bg.color or TEXTURE_TINTS.get(bg.name, (255, 255, 255))
            lum = round(sum(w * c for w, c in zip((0.299, 0.587, 0.114), tint)))
            return replace(bg, color=(lum, lum, lum)), None
        return replace(bg, color=texture_tint(color)), None
    return bg, f"the {bg.name} photo background keeps its colours"


# -- other images: paste, recolour as a whole -----------------------------------------------


def edit_outside(
    language: SceneLanguage,
    image: Image.Image,
    truth: dict[str, Any] | None,
    edits: list[Edit],
    seed: int,
) -> tuple[Image.Image, dict[str, Any], list[str]]:
    """Apply what of ``edits`` can be done to an image the scenes tools did not draw."""
    canvas = np.asarray(image.convert("RGB"), dtype=np.float32).copy()
    height, width = canvas.shape[:2]
    side = min(width, height)
    pasted: list[dict[str, Any]] = [dict(o) for o in (truth or {}).get("objects", [])]
    notes: list[str] = []
    outside = "this image was not drawn by text2image, so only adding objects, recolouring "
    outside += "and effects on the whole image work on it"
    applied: list[dict[str, Any]] = list((truth or {}).get("effects") or [])
    for k, e in enumerate(edits):
        notes += e.notes
        target = _words(e.target)
        if e.kind == "unknown":
            continue
        if e.kind == "effect":
            if e.effect is None:
                notes.append(f"could not remove the {e.remove_effect}: {outside}")
                continue
            effect = replace(e.effect, seed=seed * 31 + k) if e.effect.kind == "noise" else e.effect
            image_now = Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8), "RGB")
            canvas = np.asarray(scene_effects.apply(image_now, [effect]), dtype=np.float32).copy()
            height, width = canvas.shape[:2]
            side = min(width, height)
            for o in pasted:
                o["mask"] = scene_effects.apply_to_mask(o["mask"], [effect])
                o["area"] = int(o["mask"].sum())
            applied.append(effect.to_dict())
            continue
        if e.kind == "add":
            existing = [Placement.from_dict(o) for o in pasted]
            anchor = None
            if e.target:  # "next to the cat": only objects pasted here can be found
                found, missing = language.find(e.target, pasted) if pasted else ([], "none")
                if found:
                    anchor = (existing[found[0]], e.position)
                else:
                    notes.append(f"placed it freely: could not find '{e.target}' in this image")
            new, new_extras = language.place_new(e.objects, existing, seed * 31 + k, side, anchor)
            for placement, extra in zip(new, new_extras):
                mask, box = _paste(language, canvas, placement, width, height)
                for o in pasted:
                    before = o["area"]
                    o["mask"] = o["mask"] & ~mask
                    o["area"] = int(o["mask"].sum())
                    o["visible"] = o["visible"] * o["area"] / before if before else 0.0
                pasted.append(_object_entry(language, placement, extra, mask, box))
            continue
        if e.kind in ("recolor", "grayscale") and (target in _WHOLE or target in ("it", "")):
            color = e.color if e.kind == "recolor" else None
            canvas = _recolor_pixels(canvas, None, color)
            for o in pasted:
                o["color_name"] = color or "gray"
            if color is None:
                applied.append(Effect.make("grayscale").to_dict())
            continue
        if e.kind in ("recolor", "grayscale") and pasted:
            indices, missing = language.find(e.target or "", pasted)
            if not missing:
                color = e.color if e.kind == "recolor" else None
                for j in indices:
                    canvas = _recolor_pixels(canvas, pasted[j]["mask"], color)
                    pasted[j]["color_name"] = color or "gray"
                continue
        verb = {"recolor": "recolour", "grayscale": "gray", "background": "change"}.get(
            e.kind, e.kind
        )
        what = (
            f" '{e.target}'" if e.target else (" the background" if e.kind == "background" else "")
        )
        notes.append(f"could not {verb}{what}: {outside}")
    result = Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8), "RGB")
    for o in pasted:
        ys, xs = np.nonzero(o["mask"].any(axis=1))[0], np.nonzero(o["mask"].any(axis=0))[0]
        o["bbox"] = [int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1] if len(xs) else None
    colors = sorted({o["color_name"] for o in pasted if o.get("color_name")})
    annotation = {
        "size": [width, height],
        "background": {"name": None, "kind": "outside", "label": None, "contains": []},
        "objects": pasted,
        "labels": sorted({o["label"] for o in pasted}),
        "concepts": sorted({o["concept"] for o in pasted}),
        "colors": colors,
        "spec": None,
    }
    if applied:
        annotation["effects"] = applied
    return result, annotation, notes


def _recolor_pixels(canvas: np.ndarray, mask: np.ndarray | None, color: str | None) -> np.ndarray:
    rgba = np.dstack([canvas, np.full(canvas.shape[:2], 255.0, dtype=np.float32)])
    if mask is not None:
        rgba[..., 3] = np.where(mask, 255.0, 0.0)
    im = Image.fromarray(np.clip(np.rint(rgba), 0, 255).astype(np.uint8), "RGBA")
    if color is None:
        gray = np.asarray(im.convert("L"), dtype=np.float32)
        out = np.repeat(gray[..., None], 3, axis=2)
    else:
        out = np.asarray(recolor(im, color_rgb(color)), dtype=np.float32)[..., :3]
    if mask is None:
        return out
    return np.where(mask[..., None], out, canvas)


def _paste(
    language: SceneLanguage, canvas: np.ndarray, p: Placement, width: int, height: int
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Composite ``p`` onto ``canvas`` in place (x of the width, y of the height, its longest
    side ``scale`` of the shorter side); its visible mask and extent."""
    side = min(width, height)
    w, h = language.renderer.object_size(p, side)
    im = language.renderer.object_image(p, w, h, side)
    x0 = round(p.x * width - w / 2)
    y0 = round(p.y * height - h / 2)
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + w, width), min(y0 + h, height)
    mask = np.zeros((height, width), dtype=bool)
    if ix0 < ix1 and iy0 < iy1:
        rgba = np.asarray(im)[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
        alpha = rgba[..., 3:4].astype(np.float32) / 255.0
        region = canvas[iy0:iy1, ix0:ix1]
        canvas[iy0:iy1, ix0:ix1] = region * (1.0 - alpha) + rgba[..., :3] * alpha
        mask[iy0:iy1, ix0:ix1] = rgba[..., 3] >= _MASK_ALPHA
    return mask, (ix0, iy0, ix1, iy1)


def _object_entry(
    language: SceneLanguage,
    p: Placement,
    extra: dict[str, Any],
    mask: np.ndarray,
    box: tuple[int, int, int, int],
) -> dict[str, Any]:
    stamp = language.library[p.stamp]
    area = int(mask.sum())
    return {
        "stamp": stamp.id,
        "label": stamp.label,
        "description": stamp.description,
        "category": stamp.category,
        **p.to_dict(),
        "extent": list(box),
        "area": area,
        "visible": 1.0 if area else 0.0,
        "mask": mask,
        "concept": extra.get("concept") or stamp.label,
        "color_name": extra.get("color_name"),
    }
