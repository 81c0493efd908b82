"""Real cloud layers over real clear dates: how much of a mostly clouded date the tool restores.

    .venv/bin/python scripts/heavy_cover_cases.py [--data_root=../shared/data] [--split=validation]
        [--out=FILE.json]

A real cloudy date minus its own ground is a real cloud layer: its clouds, haze, their shadows
and their soft margins. The layers here come from every real cloudy date there is in
`../shared/data`: the two SEN12MS-CR pairs (one about half under cumulus and haze, one under
thin cloud and its shadow everywhere) and the three clouded MultiEarth dates, each against a
clear date near it; unions and thinned copies of them fill in the range of cover fractions
(`layers`). Where a layer brightens, it hides the ground by its opacity and adds its own light;
where it darkens, it keeps a share of the ground's light, so that a shadow keeps the texture of
the ground it falls on (`real_layer`). Laid over the latest date of a clear
`plfm_sample` series (its three earlier dates as the history, all clear, or the latest of them
clouded by another layer), it gives a scored case whose truth is the clear date.

Every case is restored as the model's input is made (`inputs.model_example`: detection, choice
and filling of the earlier dates) with the prior the shipped model corrects (`matched_multiscale`),
from the tool's own detection (no mask given) and from the exact footprint of the layer; the
best of the gap-filling baselines given the exact mask is the bar. Scores: the share of the
changed pixels the detection flags ("restored"), the share of the unchanged ones it flags
("false alarm"), and the PSNR over the changed pixels, per cover class. `--split` picks the
patches: `validation`, the three highest-numbered of each zone (the detection's settings are
chosen there, as `scripts/detection_selection.py` does), or `test`, the others.
"""

from __future__ import annotations

import functools
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import tifffile
from absl import flags

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from plfm_jax import runtime  # noqa: E402
from plfm_jax.data import inputs, layout, readers  # noqa: E402
from plfm_jax.data.normalize import s2_reflectance  # noqa: E402
from plfm_jax.evaluation import metrics  # noqa: E402
from plfm_jax.masks import detect  # noqa: E402
from plfm_jax.models import gapfill  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import multiearth_example  # noqa: E402  (a sibling script)

FLAGS = flags.FLAGS
# A pixel's layer counts as a change where its 5 x 5 mean moves R, G, B by more than this
# (reflectance): below it, the difference between a date and the clear date near it is the
# ground's own change and the two dates' misregistration.
CHANGED = 0.01
# SEN12MS-CR's 13 bands, B1 ... B12: R, G, B are B4, B3, B2.
SEN12_RGB = (3, 2, 1)
PAIRS = ("ROIs1970_fall_139_p839", "ROIs2017_winter_112_p797")
# MultiEarth's clouded dates and the clear date nearest each.
MULTIEARTH = (("2019_06_06", "2019_07_01"), ("2019_06_11", "2019_07_01"),
              ("2019_07_11", "2019_07_26"))
COVER_CLASSES = ((0.0, 0.005, "0%"), (0.005, 0.3, "under 30%"), (0.3, 0.6, "30-60%"),
                 (0.6, 0.95, "60-95%"), (0.95, 1.01, "over 95%"))
VALIDATION_PATCHES = 3


def real_layer(cloudy: np.ndarray, clear: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(add, keep), (H, W, 3) each: a layer over ground g gives keep g + add. From the clouds of
  `cloudy` over its ground `clear` (a clear date near it, as it is: matched to `cloudy`, it
  would be matched to the clouds where they cover most of it).

  Where a pixel brightens, a cloud of opacity a (its brightening over that of the date's
  brightest cloud) hides a of the ground and adds what it shows: keep 1 - a, add cloudy -
  (1 - a) clear; a thin haze is nearly additive, a thick cloud replaces the ground with its own
  light. Where it darkens, it keeps cloudy / clear of the ground's light (a shadow keeps the
  texture of the ground it falls on)."""
  difference = cloudy - clear
  smooth = np.asarray(gapfill.box_mean(jnp.asarray(difference[None]), 2))[0]
  changed = np.max(np.abs(smooth), axis=-1) > CHANGED
  brightening = np.mean(difference, axis=-1)
  brightest = cloudy.reshape(-1, 3)[np.argsort(cloudy.mean(-1).reshape(-1))[-64:]].mean(0)
  opacity = np.clip(brightening / np.maximum(np.mean(brightest - clear, -1), 1e-3), 0.0, 1.0)
  brighter = (changed & (brightening > 0))[..., None]
  keep = np.where(brighter, 1.0 - opacity[..., None],
                  np.where(changed[..., None], np.clip(cloudy / np.maximum(clear, 1e-4), 0, 1), 1))
  add = np.where(brighter, cloudy - keep * clear, 0.0)
  return add.astype(np.float32), keep.astype(np.float32)


def apply_layer(ground: np.ndarray, layer: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
  add, keep = layer
  return np.clip(ground * keep + add, 0.0, 1.0).astype(np.float32)


def changed_pixels(layer: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
  add, keep = layer
  return np.any((add != 0) | (keep != 1), axis=-1)


def layers(data_root: pathlib.Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Every real cloud layer, and unions and thinned copies of them."""
  found = {}
  for name in PAIRS:
    read = lambda kind: s2_reflectance(tifffile.imread(
        data_root / "sen12mscr_pairs" / kind / f"{name}.tif")[..., SEN12_RGB])
    found[name.split("_")[1]] = real_layer(read("s2_cloudy"), read("s2_cloudfree"))
  for cloudy, clear in MULTIEARTH:
    read = lambda date: s2_reflectance(multiearth_example.rgb(data_root / "multiearth_sample",
                                                              date))
    found[f"multiearth_{cloudy[5:]}"] = real_layer(read(cloudy), read(clear))
  for name in ("fall", "multiearth_06_06"):
    # The layer less the haze it has everywhere (the median of what it adds): its clouds alone.
    add, keep = found[name]
    add = np.clip(add - np.median(add, axis=(0, 1)), 0.0, None)
    changed = np.max(np.asarray(gapfill.box_mean(jnp.asarray(add[None]), 2))[0], -1) > CHANGED
    changed |= np.any(keep < 1, axis=-1) & ~np.any(found[name][0] > 0, axis=-1)
    found[f"{name}_clouds"] = (np.where(changed[..., None], add, 0.0),
                               np.where(changed[..., None], keep, 1.0))
  clouds = found["fall_clouds"]
  turned = tuple(np.rot90(part, 2).copy() for part in clouds)
  # The fall clouds and themselves turned round: clouds over most of the date.
  found["fall_clouds_twice"] = (np.maximum(clouds[0], turned[0]),
                                np.minimum(clouds[1], turned[1]))
  fall = found["fall"]
  found["fall_thin"] = (0.3 * fall[0], 1.0 - 0.3 * (1.0 - fall[1]))
  found["clear"] = (np.zeros_like(fall[0]), np.ones_like(fall[1]))
  return found


def series(data_root: pathlib.Path, split: str) -> list[tuple[str, np.ndarray]]:
  """(name, (4, H, W, 3) reflectance) of every `plfm_sample` series of `split`."""
  scan = layout.scan_dataset(data_root / "plfm_sample")
  size = readers.raw_patch_size(scan)
  by_zone: dict[str, list] = {}
  for one in scan.all_series():
    by_zone.setdefault(one.zone, []).append(one)
  chosen = []
  for zone, zone_series in sorted(by_zone.items()):
    ordered = sorted(zone_series, key=lambda s: s.patch)
    held = ordered[-VALIDATION_PATCHES:] if split == "validation" else ordered[:-VALIDATION_PATCHES]
    chosen += [(f"{zone} {s.patch}", s2_reflectance(readers.read_series(s, size)["s2"]))
               for s in held]
  return chosen


def _restored(example: dict, mask: np.ndarray, method: str = "matched_multiscale") -> jax.Array:
  """The cloudy date with `mask` filled by `method` from the example's earlier dates."""
  return _filled(example["history"], example["cloudy"], jnp.asarray(mask), method)


@functools.partial(jax.jit, static_argnames="method")
def _filled(history: jax.Array, cloudy: jax.Array, mask: jax.Array, method: str) -> jax.Array:
  prior = gapfill.METHODS[method](history[None], cloudy[None], mask[None, ..., None])[0]
  return jnp.where(mask[..., None], prior, cloudy)


def _psnr(image: jax.Array, truth: np.ndarray, region: np.ndarray) -> float:
  return float(metrics.psnr(jnp.asarray(image)[None], truth[None],
                            jnp.asarray(region, jnp.float32)[None, ..., None])[0])


def score_case(dates: np.ndarray, layer, history_layer=None,
               settings: detect.DetectionSettings = detect.DEFAULT) -> dict[str, float]:
  """Scores of one case: `layer` over the latest date, the earlier ones as its history,
  detected with `settings`."""
  truth = dates[-1]
  cloudy = apply_layer(truth, layer)
  history = dates[:-1].copy()
  history_masks = np.zeros(history.shape[:3], bool)
  if history_layer is not None:
    history[-1] = apply_layer(history[-1], history_layer)
    history_masks[-1] = changed_pixels(history_layer)
  changed = changed_pixels(layer)
  detected = inputs.model_example(history, cloudy, length=3,
                                  masking=inputs.Masking(settings=settings))
  exact = inputs.model_example(history, cloudy, length=3, cloud_mask=changed,
                               history_masks=history_masks, masking=inputs.EXACT)
  mask = detected["cloud_mask"][..., 0] > 0.5
  out = {"cover": float(changed.mean()),
         "restored": float(mask[changed].mean()) if changed.any() else float("nan"),
         "false_alarm": float(mask[~changed].mean()) if (~changed).any() else float("nan"),
         "clouded_history_used": float(
             detected["masks"][-2][history_masks[-1]].mean() if history_layer is not None
             else float("nan"))}
  restored = _restored(detected, mask)
  out["psnr date, detected"] = _psnr(restored, truth, np.ones_like(changed))
  if changed.any():
    out["psnr detected"] = _psnr(restored, truth, changed)
    out["psnr exact"] = _psnr(_restored(exact, changed), truth, changed)
    out["psnr best baseline, exact"] = max(
        _psnr(_restored(exact, changed, method), truth, changed)
        for method in gapfill.METHODS)
    out["psnr input"] = _psnr(cloudy, truth, changed)
  return out


def cover_class(cover: float) -> str:
  return next(name for low, high, name in COVER_CLASSES if low <= cover < high)


def run(data_root: pathlib.Path, split: str,
        settings: detect.DetectionSettings = detect.DEFAULT) -> dict:
  found = layers(data_root)
  cases = {}
  for name, dates in series(data_root, split):
    for layer_name, layer in found.items():
      cases[f"{name} {layer_name}"] = score_case(dates, layer, settings=settings)
    # A clouded earlier date: the fall clouds over the latest earlier one, other clouds over
    # the date restored.
    cases[f"{name} clouds, history clouded"] = score_case(
        dates, found["multiearth_06_06_clouds"], found["fall_clouds"], settings)
  return cases


def summary(cases: dict) -> dict[str, dict[str, float]]:
  """Mean scores per cover class, and over every case with something to restore."""
  classes: dict[str, list] = {}
  for case in cases.values():
    classes.setdefault(cover_class(case["cover"]), []).append(case)
    if case["cover"] > 0:
      classes.setdefault("all clouded", []).append(case)
  order = [name for _, _, name in COVER_CLASSES] + ["all clouded"]
  return {name: {key: float(np.nanmean([c.get(key, np.nan) for c in classes[name]]))
                 for key in next(iter(classes[name])).keys() | {"psnr detected"}}
          | {"cases": len(classes[name])} for name in order if name in classes}


def markdown(rows: dict[str, dict[str, float]]) -> str:
  columns = [("cases", "cases", 0), ("cover", "cover", 3), ("restored", "restored", 3),
             ("false_alarm", "false alarm", 4), ("psnr input", "input", 2),
             ("psnr detected", "detected", 2), ("psnr exact", "exact", 2),
             ("psnr best baseline, exact", "best baseline, exact", 2)]
  lines = ["| cover class | " + " | ".join(header for _, header, _ in columns) + " |",
           "|---|" + "---:|" * len(columns)]
  for name, row in rows.items():
    lines.append(f"| {name} | " + " | ".join(f"{row.get(key, np.nan):.{decimals}f}"
                                          for key, _, decimals in columns) + " |")
  return "\n".join(lines)


def main(argv: list[str]) -> None:
  del argv
  runtime.configure(FLAGS.debug)
  cases = run(pathlib.Path(FLAGS.data_root), FLAGS.split)
  rows = summary(cases)
  if FLAGS.out:
    pathlib.Path(FLAGS.out).write_text(json.dumps({"summary": rows, "cases": cases}, indent=1)
                                       + "\n")
  print(markdown(rows))


if __name__ == "__main__":
  from plfm_jax import cli
  flags.DEFINE_string("data_root", str(REPO.parent / "shared" / "data"),
                      "The folder holding plfm_sample, multiearth_sample and sen12mscr_pairs.")
  flags.DEFINE_enum("split", "validation", ["validation", "test"], "Which patches.")
  flags.DEFINE_string("out", None, "JSON file for every case's numbers.")
  cli.run(main)
