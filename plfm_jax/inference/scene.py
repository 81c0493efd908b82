"""De-clouding a whole Sentinel-2 scene with a PLFM model, window by window.

    input GeoTIFFs (aligned onto the cloudy date's grid, `align`)
      --(windows, `rasters`)--> reflectance, masks given --(`inputs.model_example`: clouds, haze
      and shadows found in every date, the clearest dates chosen, their clouds filled)-->
      normalised windows --(batches, the windows with something to restore)--> predict_tiles
      --> feathered blend of predictions and masks (`tiling.blend`) --> composite with the clear
      pixels --> tiled GeoTIFF (optionally Cloud-Optimised) on the cloudy input's grid

Windows are as large as the fully convolutional networks allow on the machine (`window`, 512 px
by default): the detection and the prior are fitted on the whole window, so a scene is restored
with at least the context of an evaluated dataset patch. A window in which nothing is to be
restored is not run through the model. Everything streams: memory holds one row of windows of
every input and the batches in flight, whatever the scene size. The model is any `predict_tiles`
callable; `load_tile_model` binds a trained one from a workdir, `tile_model` any config and
variables (those of a weights file, `plfm_jax.weight_files`), `gapfill_tile_model` a gap-filling
baseline (no network).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import pathlib
import sys
import tempfile
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import tqdm

from plfm_jax import diskspace
from plfm_jax import sharding
from plfm_jax import workdirs
from plfm_jax.data import inputs as inputs_lib
from plfm_jax.data.layout import SERIES_LENGTH
from plfm_jax.data.normalize import REFLECTANCE_SCALE, S2_NORMALIZATIONS, s1_db_to_unit
from plfm_jax.errors import InputError
from plfm_jax.inference import align
from plfm_jax.inference import rasters
from plfm_jax.inference import tiling
from plfm_jax.masks import formats
from plfm_jax.models import gapfill
from plfm_jax.models.plfm import INFERENCE_COMPONENTS, PLFM

# "minmax" models: the cloudy window is scaled by the min and max of its own clear pixels when at
# least this share of the window is clear, else by those of the latest earlier date.
MIN_CLEAR_FRACTION = 0.25
# Batches dispatched before the oldest one's result is fetched: the next batch is read and
# prepared while the device computes.
_IN_FLIGHT = 2
# Window sides are multiples of this: the U-Nets halve the image five times.
WINDOW_MULTIPLE = 32
DEFAULT_WINDOW = 512
# Windows per model call: one 512 px window keeps two CPU cores as busy as eight do (and a last
# batch padded with empty windows costs as much as full ones); raise it for small windows or
# accelerators.
DEFAULT_BATCH_SIZE = 1
# Values of a --mask_out file.
MASK_CLEAR, MASK_CLOUD, MASK_SHADOW = 0, 1, 2

PredictTiles = Callable[[Mapping[str, np.ndarray]], Any]


@dataclasses.dataclass(frozen=True)
class TileModel:
  """A model as `predict_scene` uses it.

  Attributes:
    predict_tiles: batch -> (B, window, window, 3) prediction in [0, 1] (NumPy or JAX). The
      batch holds float32 NumPy arrays in [0, 1]: "history" (B, history_length, window,
      window, 3), "history_mask" (B, history_length, window, window, 1), "cloudy" (B, window,
      window, 3), "cloud_mask" (B, window, window, 1) and, when the scene has S1, "sar" (B,
      window, window, 1); always exactly `batch_size` windows (the last batch padded with
      zeros).
    tile_size: the size the model was trained at; windows may be larger.
    normalization: S2 normalisation the model was trained with, "reflectance" or "minmax".
    history_length: earlier dates the model reads.
    batch_size: windows per call.
  """
  predict_tiles: PredictTiles
  tile_size: int
  normalization: str = "reflectance"
  history_length: int = 3
  batch_size: int = DEFAULT_BATCH_SIZE


@dataclasses.dataclass(frozen=True)
class SceneInputs:
  """The inputs: S2 of the cloudy date, S2 of the earlier dates (oldest first, one or more),
  optionally S1 VV of the cloudy date and a cloud mask of it. GeoTIFFs, or for S2 dates folders
  of per-band GeoTIFFs whose QA60 bands are those dates' masks; inputs on other grids are
  reprojected onto the cloudy date's (`align`).

  Attributes:
    mask_format: of `cloud_mask`, one of `formats.FORMATS` ("auto": told from its values).
    mask_threshold: a probability mask's threshold (of 1).
    history_masks: masks of the earlier dates, one per date or None (QA60 of date folders).
  """
  cloudy: pathlib.Path
  history: tuple[pathlib.Path, ...]
  sar: pathlib.Path | None = None
  cloud_mask: pathlib.Path | None = None
  mask_format: str = "auto"
  mask_threshold: float = formats.DEFAULT_PROBABILITY_THRESHOLD
  history_masks: tuple[pathlib.Path | None, ...] = ()


@dataclasses.dataclass(frozen=True)
class DateReport:
  """What was found in one date: shares of its pixels flagged as cloud or haze, as shadow, and
  by the mask given for it."""
  name: str
  cloud: float
  shadow: float
  given: float


@dataclasses.dataclass(frozen=True)
class SceneReport:
  """What `predict_scene` did: the scene's size, the windows run through the model (0 when
  nothing was to be restored), the share of pixels restored, what was found in every date (the
  earlier dates, then the cloudy one), whether S1 was used, and what was done to the inputs to
  bring them onto the cloudy date's grid (`align`)."""
  height: int
  width: int
  windows: int
  cloud_fraction: float
  dates: tuple[DateReport, ...] = ()
  sar: bool = True
  notes: tuple[str, ...] = ()


def load_tile_model(workdir: str | os.PathLike, *, batch_size: int = DEFAULT_BATCH_SIZE,
                    devices: Sequence[jax.Device] | None = None) -> TileModel:
  """The best trained model of `workdir` as a TileModel (see `tile_model`).

  Raises:
    InputError: no trained model (or a missing stage) in `workdir`.
  """
  config = workdirs.saved_config(workdir)
  variables = workdirs.best_variables(config, workdir, INFERENCE_COMPONENTS)
  return tile_model(config, variables, batch_size=batch_size, devices=devices)


def tile_model(config: ml_collections.ConfigDict, variables: Mapping[str, Any], *,
               batch_size: int = DEFAULT_BATCH_SIZE,
               devices: Sequence[jax.Device] | None = None) -> TileModel:
  """The model of the training `config` with `variables` as a TileModel, batches sharded over
  `devices` (`_sharded`): its normalisation, any window size."""
  model = PLFM.from_config(config.model, training=False)
  predict_tiles, batch_size = _sharded(
      lambda variables, batch: model.predict(variables, batch)["fused"], variables,
      batch_size, devices)
  return TileModel(predict_tiles=predict_tiles, tile_size=int(config.data.crop_size),
                   normalization=config.data.s2_normalization,
                   history_length=SERIES_LENGTH - 1, batch_size=batch_size)


def gapfill_tile_model(method: str, *, batch_size: int = DEFAULT_BATCH_SIZE,
                       devices: Sequence[jax.Device] | None = None) -> TileModel:
  """A gap-filling method (`gapfill.METHODS`, fitted robustly) as a TileModel: no network and
  no weights, the windows built as for the model (the same detection, the same earlier dates
  chosen and filled), so that a scene restored by a baseline compares with the model's.

  Raises:
    InputError: an unknown method.
  """
  if method not in gapfill.METHODS:
    raise InputError("--method", f"unknown method {method!r}; choose from "
                     f"{', '.join(gapfill.METHODS)}")
  fill = gapfill.METHODS[method]
  predict_tiles, batch_size = _sharded(
      lambda _, batch: fill(batch["history"], batch["cloudy"], batch["cloud_mask"]), {},
      batch_size, devices)
  return TileModel(predict_tiles=predict_tiles, tile_size=WINDOW_MULTIPLE,
                   normalization="reflectance", history_length=SERIES_LENGTH - 1,
                   batch_size=batch_size)


def _sharded(apply: Callable[[Any, dict], jax.Array], variables: Mapping[str, Any],
             batch_size: int, devices: Sequence[jax.Device] | None
             ) -> tuple[PredictTiles, int]:
  """(predict_tiles, batch size) of the jitted `apply(variables, batch)` with batches sharded
  over `devices`.

  `batch_size` is rounded up to a multiple of the device count; variables are replicated on
  every device. Over several processes, each computes its own rows of every batch (every
  process calls with the same whole batch) and all of them receive the whole prediction.
  """
  mesh = sharding.make_mesh(devices)
  # Through host memory, not `sharding.replicate`: restored variables sit on this process's
  # device, and a mesh over several processes takes no cross-host copy from there.
  variables = jax.device_put(jax.tree.map(np.asarray, variables), sharding.replicated(mesh))
  run = jax.jit(apply)

  def predict_tiles(batch: Mapping[str, np.ndarray]) -> np.ndarray:
    rows = len(next(iter(batch.values()))) // jax.process_count()
    mine = slice(jax.process_index() * rows, (jax.process_index() + 1) * rows)
    prediction = run(variables, sharding.global_batch(
        {k: v[mine] for k, v in batch.items()}, mesh))
    return multihost_utils.process_allgather(prediction, tiled=True)

  return predict_tiles, -(-batch_size // mesh.size) * mesh.size


@dataclasses.dataclass
class _Inputs:
  """The opened inputs and how to read their masks."""
  cloudy: rasters.Raster
  history: list[rasters.Raster]
  sar: rasters.Raster | None
  cloud_mask: rasters.Raster | None
  mask_format: str
  mask_scale: float | None
  mask_threshold: float
  history_masks: list[rasters.Raster | None]


def _open_inputs(inputs: SceneInputs, stack: contextlib.ExitStack) -> _Inputs:
  """Opens and checks every input; all must share the cloudy input's grid."""
  def s2(path: pathlib.Path) -> rasters.Raster:
    return rasters.open_raster(path, stack, what="Sentinel-2 R, G, B reflectance x 10000",
                               bands=3, dtype_ok=lambda d: d == np.uint16, dtype_wanted="uint16")

  def mask(path: pathlib.Path | None) -> rasters.Raster | None:
    if path is None:
      return None
    return rasters.open_raster(path, stack, what="a cloud mask", bands=1,
                               dtype_ok=lambda d: np.issubdtype(d, np.number),
                               dtype_wanted="numbers")

  cloudy = s2(inputs.cloudy)
  opened = _Inputs(
      cloudy=cloudy, history=[s2(p) for p in inputs.history],
      sar=None if inputs.sar is None else rasters.open_raster(
          inputs.sar, stack, what="Sentinel-1 VV backscatter in dB", bands=1,
          dtype_ok=lambda d: np.issubdtype(d, np.floating), dtype_wanted="float32 or float64"),
      cloud_mask=mask(inputs.cloud_mask), mask_format=inputs.mask_format, mask_scale=None,
      mask_threshold=inputs.mask_threshold,
      history_masks=[mask(m) for m in inputs.history_masks] or [None] * len(inputs.history))
  others = [*opened.history, *[r for r in (opened.sar, opened.cloud_mask) if r],
            *[m for m in opened.history_masks if m]]
  rasters.check_same_grid(cloudy, others)
  if opened.cloud_mask is not None:
    _settle_mask_format(opened)
  return opened


def _settle_mask_format(opened: _Inputs) -> None:
  """The cloud mask's format and probability scale, from a sample of the whole file, so that
  every window reads it alike."""
  dataset = opened.cloud_mask.dataset
  step = max(1, max(dataset.height, dataset.width) // 1024)
  sample = dataset.read(1, out_shape=(max(1, dataset.height // step),
                                      max(1, dataset.width // step)))
  try:
    if opened.mask_format == "auto":
      opened.mask_format = formats.guess_format(sample)
    if opened.mask_format == "probability":
      opened.mask_scale = formats.probability_scale(sample)
    formats.to_mask(sample, opened.mask_format, threshold=opened.mask_threshold,
                    scale=opened.mask_scale)
  except formats.FormatError as e:
    raise InputError(opened.cloud_mask.path, f"cannot be read as a cloud mask: {e}") from None


def _check_output(path: pathlib.Path, inputs: Sequence[pathlib.Path], overwrite: bool) -> None:
  if path.is_dir():
    raise InputError(path, "is a folder; name the output file")
  if not path.parent.is_dir():
    raise InputError(path.parent, "output folder does not exist")
  if path.exists():
    if any(p.exists() and os.path.samefile(path, p) for p in inputs):
      raise InputError(path, "is also an input; choose another output path")
    if not overwrite:
      raise InputError(path, "exists; pass --overwrite to replace it")


def _normalize_window(history: np.ndarray, cloudy: np.ndarray, clear: np.ndarray,
                      method: str) -> tuple[np.ndarray, np.ndarray, float, float]:
  """(history, cloudy) reflectance of one window in [0, 1] as the model was trained, and the
  (low, span) that maps the model's [0, 1] output back to reflectance.

  "reflectance" is the identity. "minmax" scales each earlier date by its own min and max, as
  in training. The cloudy date was scaled in training by the min and max of its cloud-free
  original, which does not exist here: its clear pixels stand in for it when there are enough,
  else the latest earlier date.
  """
  if method == "reflectance":
    return history, cloudy, 0.0, 1.0
  low = history.min(axis=(1, 2, 3), keepdims=True)
  span = history.max(axis=(1, 2, 3), keepdims=True) - low
  history01 = (history - low) / np.where(span > 0, span, 1).astype(np.float32)
  reference = cloudy[clear] if clear.mean() >= MIN_CLEAR_FRACTION else history[-1]
  low, high = float(reference.min()), float(reference.max())
  span = high - low if high > low else 1.0
  cloudy01 = np.clip((cloudy - np.float32(low)) / np.float32(span), 0, 1)
  return history01.astype(np.float32), cloudy01.astype(np.float32), low, span


@dataclasses.dataclass
class _Window:
  """One window: the model's example (None: nothing to restore), the (low, span) of its
  output, its cloudy reflectance and masks for the blend, and what was found in each date."""
  example: dict[str, np.ndarray] | None
  scale: tuple[float, float]
  cloudy: np.ndarray
  mask: np.ndarray
  shadow: np.ndarray
  counts: np.ndarray


class _Reader:
  """Reads windows of every input and builds the model's examples (`inputs.model_example`)."""

  def __init__(self, opened: _Inputs, model: TileModel, masking: inputs_lib.Masking):
    self.opened, self.model, self.masking = opened, model, masking
    self.height, self.width = opened.cloudy.height, opened.cloudy.width

  def _s2(self, raster: rasters.Raster, window: tuple[int, int, int, int]
          ) -> tuple[np.ndarray, np.ndarray]:
    """(reflectance, valid) of an S2 date's window: nodata (all bands at the nodata value, or
    0 where none is set, as outside a reprojected footprint) and pixels beyond the scene are
    invalid."""
    data = raster.read(*window)
    nodata = 0 if raster.nodata is None else raster.nodata
    valid = ~np.all(data == nodata, axis=-1) & rasters.valid(*window, self.height, self.width)
    return data.astype(np.float32) / np.float32(REFLECTANCE_SCALE), valid

  def _mask(self, raster: rasters.Raster | None, fmt: str,
            window: tuple[int, int, int, int]) -> np.ndarray | None:
    if raster is None:
      return None
    return formats.to_mask(raster.read(*window)[..., 0], fmt,
                           threshold=self.opened.mask_threshold, scale=self.opened.mask_scale)

  def window(self, top: int, left: int, size: int, own: tuple[slice, slice]) -> _Window:
    """The window of `size` px at (top, left); `own` its part of the scene (`tiling.own_parts`),
    over which its findings are counted."""
    box = (top, left, size, size)
    cloudy, cloudy_valid = self._s2(self.opened.cloudy, box)
    history, history_valid = zip(*(self._s2(r, box) for r in self.opened.history))
    history_masks = [self._mask(m, "qa60", box) for m in self.opened.history_masks]
    given = None if all(m is None for m in history_masks) else np.stack([
        np.zeros((size, size), bool) if m is None else m for m in history_masks])
    example = inputs_lib.model_example(
        np.stack(history), cloudy, length=self.model.history_length,
        cloud_mask=self._mask(self.opened.cloud_mask, self.opened.mask_format, box),
        history_masks=given, valid=np.stack([*history_valid, cloudy_valid]),
        masking=self.masking)
    restore = example["cloud_mask"][..., 0] > 0
    # Per date: cloud, shadow and given pixels of this window's own part of the scene.
    counts = np.stack([example["cloud"], example["shadow"], example["given"]], axis=1)
    counts = counts[..., own[0], own[1]].sum(axis=(2, 3))
    if not restore.any():
      return _Window(None, (0.0, 1.0), cloudy, restore, example["shadow"][-1], counts)
    history01, cloudy01, low, span = _normalize_window(
        example["history"], cloudy, ~restore & cloudy_valid, self.model.normalization)
    batch = {"history": history01, "history_mask": example["history_mask"], "cloudy": cloudy01,
             "cloud_mask": example["cloud_mask"]}
    if self.opened.sar is not None:
      # Missing radar samples (NaN) read as the weakest backscatter.
      batch["sar"] = np.nan_to_num(s1_db_to_unit(self.opened.sar.read(*box)), nan=0.0)
    return _Window(batch, (low, span), cloudy, restore, example["shadow"][-1], counts)


def _predictions(windows: Iterator[_Window], model: TileModel, size: int,
                 bar: tqdm.tqdm) -> Iterator[tuple[_Window, np.ndarray]]:
  """Each window with its prediction (size, size, 3) in reflectance, in the windows' order; a
  window with nothing to restore is its cloudy input, without running the model.

  Windows are grouped until a group holds a batch of windows to run (or twice as many windows
  in all, so that a clear stretch of the scene does not pile up); up to _IN_FLIGHT groups are
  computed while the next ones are read.
  """
  pending: collections.deque = collections.deque()  # (group, output or None), in order

  def dispatch(group: list[_Window]) -> None:
    run = [w for w in group if w.example is not None]
    output = None
    if run:
      batch = {key: np.zeros((model.batch_size, *value.shape), value.dtype)
               for key, value in run[0].example.items()}
      for i, w in enumerate(run):
        for key, value in w.example.items():
          batch[key][i] = value
      output = model.predict_tiles(batch)
    pending.append((group, output))

  def finish() -> Iterator[tuple[_Window, np.ndarray]]:
    group, output = pending.popleft()
    if output is not None:
      output = np.asarray(output, np.float32)
      expected = (model.batch_size, size, size, 3)
      if output.shape != expected:
        raise ValueError(f"predict_tiles returned shape {output.shape}, expected {expected}")
    ran = iter(() if output is None else output)
    for w in group:
      if w.example is None:
        yield w, w.cloudy
      else:
        low, span = w.scale
        yield w, next(ran) * np.float32(span) + np.float32(low)
    bar.update(len(group))

  group: list[_Window] = []
  for w in windows:
    group.append(w)
    runs = sum(x.example is not None for x in group)
    if runs == model.batch_size or len(group) >= 2 * model.batch_size:
      dispatch(group)
      group = []
      while len(pending) >= _IN_FLIGHT:
        yield from finish()
  if group:
    dispatch(group)
  while pending:
    yield from finish()


def window_layout(height: int, width: int, window: int | None,
                  overlap: int | None) -> tuple[int, int]:
  """(window side, overlap): the overlap (default an eighth of `window`, default
  DEFAULT_WINDOW), and the smallest side, a multiple of WINDOW_MULTIPLE and at most `window`,
  that covers the scene with no more windows than `window` would: the networks' cost is their
  pixels, and a 2048 px scene takes five 480 px windows per axis as it takes five of 512.

  Raises:
    ValueError: `window` not a positive multiple of WINDOW_MULTIPLE.
    InputError: `overlap` not in [0, window).
  """
  window = DEFAULT_WINDOW if window is None else window
  if window < WINDOW_MULTIPLE or window % WINDOW_MULTIPLE:
    raise ValueError(f"window must be a positive multiple of {WINDOW_MULTIPLE}, got {window}")
  overlap = window // 8 if overlap is None else overlap
  if not 0 <= overlap < window:
    raise InputError("--overlap", f"must be in [0, {window}) for {window} px windows")
  needed = -(-max(height, width) // WINDOW_MULTIPLE) * WINDOW_MULTIPLE
  if needed <= window:
    # One window holds the scene: nothing overlaps.
    return needed, min(overlap, needed // 8)
  count = lambda side: (len(tiling.window_starts(height, side, overlap))
                        * len(tiling.window_starts(width, side, overlap)))
  most = count(window)
  first = (overlap // WINDOW_MULTIPLE + 1) * WINDOW_MULTIPLE
  return next(s for s in range(first, window + 1, WINDOW_MULTIPLE) if count(s) <= most), overlap


def predict_scene(inputs: SceneInputs, out: str | os.PathLike, model: TileModel, *,
                  window: int | None = None, overlap: int | None = None,
                  composite: bool = True, mask_out: str | os.PathLike | None = None,
                  masking: inputs_lib.Masking = inputs_lib.Masking(), overwrite: bool = False,
                  compression: str = "deflate", cog: bool = False,
                  progress: bool = True) -> SceneReport:
  """De-clouds a scene and writes it as a GeoTIFF.

  Args:
    inputs: the input GeoTIFFs or date folders; brought onto the cloudy date's grid (`align`,
      in a temporary folder beside `out`) and checked (bands, dtypes, layout, one grid) before
      any work.
    out: the output GeoTIFF: uint16 R, G, B reflectance x 10000 on the cloudy input's grid,
      with its CRS, geotransform, nodata and photometric interpretation.
    model: the model and how to feed it.
    window: largest window side in pixels (`window_layout`).
    overlap: pixels shared by neighbouring windows, blended by feathering; default an eighth
      of the window.
    composite: keep the cloudy input's pixels exactly where nothing is to be restored and take
      the prediction only there (a date without anything to restore is then written
      unchanged, without running the model); False writes the prediction everywhere. Pixels
      at the cloudy input's nodata value stay nodata either way. Over several processes only
      process 0 writes outputs.
    mask_out: also write what was restored here, on the same grid: uint8, MASK_CLEAR,
      MASK_CLOUD (cloud, haze, their buffer, or the given mask) or MASK_SHADOW.
    masking: detect clouds, haze and shadows (with the given masks), or trust the given masks.
    overwrite: replace existing output files.
    compression: of the outputs, "deflate" or "none".
    cog: write Cloud-Optimised GeoTIFFs with overviews.
    progress: show a progress bar on stderr.

  Raises:
    InputError: a bad input, an existing output without `overwrite`, an output that is an
      input, too little disk space, or no earlier date.
  """
  _check_request(inputs, model)
  out = pathlib.Path(out)
  mask_out = None if mask_out is None else pathlib.Path(mask_out)
  _check_outputs(inputs, out, mask_out, overwrite)
  # Over several processes (`tile_model`), every one runs the windows; process 0 writes.
  writer = jax.process_index() == 0
  names = [*(str(p) for p in inputs.history), str(inputs.cloudy)]

  with contextlib.ExitStack() as stack:
    scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix=".plfm_inputs_",
                                                              dir=out.parent))
    inputs, notes = align.align_inputs(inputs, pathlib.Path(scratch))
    opened = _open_inputs(inputs, stack)
    cloudy = opened.cloudy
    height, width = cloudy.height, cloudy.width
    size, overlap = window_layout(height, width, window, overlap)
    _check_disk_space(out, mask_out, height, width)
    grid = tiling.TileGrid(height, width, size, overlap)
    bar = stack.enter_context(tqdm.tqdm(total=len(grid), unit="window", desc="restoring",
                                        file=sys.stderr, disable=not (progress and writer)))
    tally = _Tally(runs=0, counts=np.zeros((len(opened.history) + 1, 3)))
    windows = _scene_windows(_Reader(opened, model, masking), grid)
    tiles = _tiles(_predictions(windows, model, size, bar), tally)
    outputs = []
    if writer:
      outputs = [stack.enter_context(rasters.Output(
          out, reference=cloudy, bands=3, dtype=np.uint16, nodata=cloudy.nodata,
          compression=compression, cog=cog))]
      if mask_out is not None:
        outputs.append(stack.enter_context(rasters.Output(
            mask_out, reference=cloudy, bands=1, dtype=np.uint8, nodata=None,
            compression=compression, cog=cog)))
    restored = _write_blended(grid, tiles, cloudy, outputs, composite)
  dates = tuple(DateReport(name, *(tally.counts[i] / (height * width)))
                for i, name in enumerate(names))
  return SceneReport(height=height, width=width, windows=tally.runs,
                     cloud_fraction=restored / (height * width), dates=dates,
                     sar=inputs.sar is not None, notes=tuple(notes))


def _check_request(inputs: SceneInputs, model: TileModel) -> None:
  if model.normalization not in S2_NORMALIZATIONS:
    raise ValueError(f"normalization must be one of {S2_NORMALIZATIONS}, "
                     f"got {model.normalization!r}")
  if not inputs.history:
    raise InputError("--history", "at least one earlier date is needed")


def _check_outputs(inputs: SceneInputs, out: pathlib.Path, mask_out: pathlib.Path | None,
                   overwrite: bool) -> None:
  input_paths = [p for p in (inputs.cloudy, *inputs.history, inputs.sar, inputs.cloud_mask)
                 if p is not None]
  for path in [out] + ([mask_out] if mask_out else []):
    _check_output(path, input_paths, overwrite)
  if mask_out is not None and mask_out.absolute() == out.absolute():
    raise InputError(mask_out, "is also the output image; choose another path for the mask")


def _check_disk_space(out: pathlib.Path, mask_out: pathlib.Path | None, height: int,
                      width: int) -> None:
  # Uncompressed sizes (uint16 R, G, B; uint8 mask): an upper bound of what Deflate writes.
  needed = collections.Counter({out.parent.resolve(): height * width * 6})
  if mask_out is not None:
    needed[mask_out.parent.resolve()] += height * width
  for folder, bytes_needed in needed.items():
    diskspace.check_free_space(folder, bytes_needed, "the output")


def _scene_windows(reader: _Reader, grid: tiling.TileGrid) -> Iterator[_Window]:
  """Every window of the scene, row by row, each counting its findings over its own part."""
  size = grid.tile
  rows_own = tiling.own_parts(grid.row_starts, size, grid.height)
  cols_own = tiling.own_parts(grid.col_starts, size, grid.width)
  for top, rows in zip(grid.row_starts, rows_own):
    for left, cols in zip(grid.col_starts, cols_own):
      yield reader.window(int(top), int(left), size, (slice(*rows), slice(*cols)))


@dataclasses.dataclass
class _Tally:
  """Windows run through the model, and per date the (cloud, shadow, given) pixels found."""
  runs: int
  counts: np.ndarray


def _tiles(predicted: Iterator[tuple[_Window, np.ndarray]], tally: _Tally
           ) -> Iterator[np.ndarray]:
  """What the blend averages per window: prediction (3 bands), mask and shadow; tallied."""
  for w, prediction in predicted:
    tally.runs += w.example is not None
    tally.counts += w.counts
    yield np.concatenate([prediction, w.mask[..., None], w.shadow[..., None]], axis=-1)


def _write_blended(grid: tiling.TileGrid, tiles: Iterator[np.ndarray], cloudy: rasters.Raster,
                   outputs: Sequence[rasters.Output], composite: bool) -> int:
  """Blends the tiles into rows, finishes them against the cloudy input and writes them to
  `outputs` (the image, then optionally the mask; none on processes that do not write); the
  number of pixels restored."""
  restored = 0
  for first, rows in tiling.blend(grid, tiles):
    original = cloudy.read(first, 0, len(rows), grid.width)
    result, mask_rows = _finish_rows(rows, original, cloudy.nodata, composite)
    restored += int((mask_rows != MASK_CLEAR).sum())
    if outputs:
      outputs[0].write(first, result)
    if len(outputs) > 1:
      outputs[1].write(first, mask_rows[..., None])
  return restored


def _finish_rows(rows: np.ndarray, original: np.ndarray, nodata: float | None,
                 composite: bool) -> tuple[np.ndarray, np.ndarray]:
  """(uint16 output rows, uint8 mask rows) from blended rows (prediction in reflectance,
  mask and shadow shares) and the cloudy input's rows."""
  prediction, mask, shadow = rows[..., :3], rows[..., 3] > 0.5, rows[..., 4] > 0.5
  result = np.rint(np.clip(prediction * REFLECTANCE_SCALE, 0, np.iinfo(np.uint16).max))
  result = result.astype(np.uint16)
  invalid = np.all(original == (0 if nodata is None else nodata), axis=-1)
  mask &= ~invalid
  if composite:
    result = np.where(mask[..., None], result, original)
  result = np.where(invalid[..., None], original, result)
  mask_rows = np.where(mask, np.where(shadow, MASK_SHADOW, MASK_CLOUD), MASK_CLEAR)
  return result, mask_rows.astype(np.uint8)
