"""De-clouding a whole Sentinel-2 scene with a PLFM model, window by window.

    input GeoTIFFs --(bands of window rows)--> normalised windows --(batches)--> predict_tiles
      --> back to reflectance x 10000 --> feathered blend (tiling.blend) --> composite with the
      clear pixels --> tiled GeoTIFF with the cloudy input's georeference

Everything streams: memory holds about one row of windows of every input (window height x scene
width) and the batches in flight, whatever the scene size. The model is any `predict_tiles`
callable; `load_tile_model` binds a trained one from a workdir, `tile_model` any config and
variables (those of a weights file, `plfm_jax.weights`).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import pathlib
import sys
import tempfile
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import tqdm

from plfm_jax import diskspace
from plfm_jax import sharding
from plfm_jax import workdir as workdir_lib
from plfm_jax.data.layout import SERIES_LENGTH
from plfm_jax.data.normalize import (REFLECTANCE_SCALE, S2_NORMALIZATIONS, normalize_s2,
                                     s1_db_to_unit)
from plfm_jax.errors import InputError
from plfm_jax.inference import align
from plfm_jax.inference import cloud_mask as cloud_mask_lib
from plfm_jax.inference import geotiff
from plfm_jax.inference import tiling
from plfm_jax.models.plfm import INFERENCE_COMPONENTS, PLFM, composite as composite_images

# "minmax" models: the cloudy window is scaled by the min and max of its own clear pixels when at
# least this share of the window is clear, else by those of the latest earlier date.
MIN_CLEAR_FRACTION = 0.25
# Batches dispatched before the oldest one's result is fetched: the next batch is read and
# normalised while the device computes.
_IN_FLIGHT = 2

PredictTiles = Callable[[Mapping[str, np.ndarray]], Any]


@dataclasses.dataclass(frozen=True)
class TileModel:
  """A model as `predict_scene` uses it.

  Attributes:
    predict_tiles: batch -> (B, tile, tile, 3) prediction in [0, 1] (NumPy or JAX). The batch
      holds float32 NumPy arrays in [0, 1]: "history" (B, history_length, tile, tile, 3),
      "cloudy" (B, tile, tile, 3), "cloud_mask" (B, tile, tile, 1), "sar" (B, tile, tile, 1),
      always exactly `batch_size` windows (the last batch padded with zeros).
    tile_size: window height and width, the size the model was trained at.
    normalization: S2 normalisation the model was trained with, "reflectance" or "minmax".
    history_length: earlier dates the model takes.
    batch_size: windows per call.
  """
  predict_tiles: PredictTiles
  tile_size: int
  normalization: str = "reflectance"
  history_length: int = 3
  batch_size: int = 8


@dataclasses.dataclass(frozen=True)
class SceneInputs:
  """The inputs: S2 of the cloudy date, S2 of the earlier dates (oldest first), S1 VV of the
  cloudy date and, optionally, the cloudy date's QA60 band. GeoTIFFs, or for S2 dates folders of
  per-band GeoTIFFs; inputs on other grids are reprojected onto the cloudy date's (`align`)."""
  cloudy: pathlib.Path
  history: tuple[pathlib.Path, ...]
  sar: pathlib.Path
  qa60: pathlib.Path | None = None


@dataclasses.dataclass(frozen=True)
class SceneReport:
  """What `predict_scene` did: the scene's size, the model windows run (0 when a cloud-free date
  was written unchanged) and the share of pixels restored."""
  height: int
  width: int
  windows: int
  cloud_fraction: float
  # What was done to the inputs to bring them onto the cloudy date's grid (`align`).
  notes: tuple[str, ...] = ()


def load_tile_model(workdir: str | os.PathLike, *, batch_size: int = 8,
                    devices: Sequence[jax.Device] | None = None) -> TileModel:
  """The best trained model of `workdir` as a TileModel (see `tile_model`).

  Raises:
    InputError: no trained model (or a missing stage) in `workdir`.
  """
  config = workdir_lib.saved_config(workdir)
  variables = workdir_lib.best_variables(config, workdir, INFERENCE_COMPONENTS)
  return tile_model(config, variables, batch_size=batch_size, devices=devices)


def tile_model(config: ml_collections.ConfigDict, variables: Mapping[str, Any], *,
               batch_size: int = 8, devices: Sequence[jax.Device] | None = None) -> TileModel:
  """The model of the training `config` with `variables` as a TileModel, batches sharded over
  `devices`: windows of the training crop size, its normalisation.

  `batch_size` is rounded up to a multiple of the device count; variables are replicated on
  every device. Over several processes, each computes its own rows of every batch (every
  process calls with the same whole batch) and all of them receive the whole prediction.
  """
  model = PLFM.from_config(config.model)
  mesh = sharding.make_mesh(devices)
  # Through host memory, not `sharding.replicate`: restored variables sit on this process's
  # device, and a mesh over several processes takes no cross-host copy from there.
  variables = jax.device_put(jax.tree.map(np.asarray, variables), sharding.replicated(mesh))

  @jax.jit
  def fused(variables: dict, batch: dict) -> jax.Array:
    return model.predict(variables, batch)["fused"]

  def predict_tiles(batch: Mapping[str, np.ndarray]) -> np.ndarray:
    rows = len(next(iter(batch.values()))) // jax.process_count()
    mine = slice(jax.process_index() * rows, (jax.process_index() + 1) * rows)
    prediction = fused(variables, sharding.global_batch(
        {k: v[mine] for k, v in batch.items()}, mesh))
    return multihost_utils.process_allgather(prediction, tiled=True)

  return TileModel(predict_tiles=predict_tiles, tile_size=int(config.data.crop_size),
                   normalization=config.data.s2_normalization,
                   history_length=SERIES_LENGTH - 1,
                   batch_size=-(-batch_size // mesh.size) * mesh.size)


def _is_uint16(dtype: np.dtype) -> bool:
  return dtype == np.uint16


def _open_inputs(inputs: SceneInputs, stack: contextlib.ExitStack) -> dict[str, Any]:
  """Opens and checks every input; all must share the cloudy input's grid."""
  def s2(path: pathlib.Path) -> geotiff.Raster:
    return stack.enter_context(geotiff.open_raster(
        path, what="Sentinel-2 R, G, B reflectance x 10000", bands=3, dtype_ok=_is_uint16,
        dtype_wanted="uint16"))

  rasters = {
      "cloudy": s2(inputs.cloudy),
      "history": [s2(p) for p in inputs.history],
      "sar": stack.enter_context(geotiff.open_raster(
          inputs.sar, what="Sentinel-1 VV backscatter in dB", bands=1,
          dtype_ok=lambda d: np.issubdtype(d, np.floating), dtype_wanted="float32 or float64")),
      "qa60": None if inputs.qa60 is None else stack.enter_context(geotiff.open_raster(
          inputs.qa60, what="Sentinel-2 QA60 cloud bitmask", bands=1,
          dtype_ok=lambda d: np.issubdtype(d, np.integer), dtype_wanted="an integer type")),
  }
  others = [*rasters["history"], rasters["sar"]] + ([rasters["qa60"]] if rasters["qa60"] else [])
  geotiff.check_same_grid(rasters["cloudy"], others)
  return rasters


def _check_output(path: pathlib.Path, inputs: Iterable[pathlib.Path], overwrite: bool) -> None:
  if path.is_dir():
    raise InputError(path, "is a folder; name the output file")
  if not path.parent.is_dir():
    raise InputError(path.parent, "output folder does not exist")
  if path.exists():
    if any(p.exists() and os.path.samefile(path, p) for p in inputs):
      raise InputError(path, "is also an input; choose another output path")
    if not overwrite:
      raise InputError(path, "exists; pass --overwrite to replace it")


def _mask_rows(rasters: Mapping[str, Any], start: int, stop: int, cloudy: np.ndarray,
               brightness: float) -> np.ndarray:
  """Bool cloud mask of rows [start, stop) of the scene, `cloudy` being those rows."""
  qa60 = rasters["qa60"].read_rows(start, stop)[..., 0] if rasters["qa60"] else None
  return cloud_mask_lib.cloud_mask(cloudy, qa60, brightness=brightness,
                                   nodata=rasters["cloudy"].nodata)


def _normalize_window(history: np.ndarray, cloudy: np.ndarray, clear: np.ndarray,
                      method: str) -> tuple[np.ndarray, np.ndarray, float, float]:
  """(history, cloudy) of one window in [0, 1] as the model was trained, and the (low, span)
  that maps the model's [0, 1] output back to reflectance x 10000.

  "reflectance" divides by 10000 and multiplies back: exact. "minmax" scales each earlier date
  by its own min and max, as in training. The cloudy date was scaled in training by the min and
  max of its cloud-free original, which does not exist here: its clear pixels stand in for it
  when there are enough, else the latest earlier date.
  """
  history01 = normalize_s2(history, method)
  if method == "reflectance":
    low, span = 0.0, REFLECTANCE_SCALE
  else:
    reference = cloudy[clear] if clear.mean() >= MIN_CLEAR_FRACTION else history[-1]
    low, high = float(reference.min()), float(reference.max())
    span = high - low if high > low else 1.0
  cloudy01 = np.clip((cloudy.astype(np.float32) - np.float32(low)) / np.float32(span), 0, 1)
  return history01, cloudy01, low, span


def _pad_to(array: np.ndarray, size: int) -> np.ndarray:
  """Mirror-pads the H, W axes (the two before the last) of a window cut at the scene's edge."""
  pad = [(0, 0)] * array.ndim
  pad[-3], pad[-2] = (0, size - array.shape[-3]), (0, size - array.shape[-2])
  return np.pad(array, pad, mode="symmetric") if any(p[1] for p in pad) else array


def _windows(rasters: Mapping[str, Any], grid: tiling.TileGrid, method: str,
             brightness: float) -> Iterator[tuple[dict[str, np.ndarray], float, float]]:
  """(model example, low, span) for every window of `grid`, in row-major order."""
  size = grid.tile
  for top in grid.row_starts:
    bottom = min(int(top) + size, grid.height)
    cloudy = rasters["cloudy"].read_rows(top, bottom)
    history = np.stack([r.read_rows(top, bottom) for r in rasters["history"]])
    sar = rasters["sar"].read_rows(top, bottom)
    mask = _mask_rows(rasters, top, bottom, cloudy, brightness)
    nodata = rasters["cloudy"].nodata
    clear = ~mask if nodata is None else ~mask & ~np.all(cloudy == nodata, axis=-1)
    for left in grid.col_starts:
      cols = slice(left, left + size)
      history01, cloudy01, low, span = _normalize_window(
          _pad_to(history[:, :, cols], size), _pad_to(cloudy[:, cols], size),
          _pad_to(clear[:, cols, None], size)[..., 0], method)
      # Missing radar samples (NaN) read as the weakest backscatter.
      sar01 = np.nan_to_num(s1_db_to_unit(_pad_to(sar[:, cols], size)), nan=0.0)
      example = {"history": history01, "cloudy": cloudy01, "sar": sar01,
                 "cloud_mask": _pad_to(mask[:, cols, None], size).astype(np.float32)}
      yield example, low, span


def _predictions(windows: Iterator[tuple[dict[str, np.ndarray], float, float]],
                 model: TileModel, bar: tqdm.tqdm) -> Iterator[np.ndarray]:
  """Runs the model on batches of windows; yields each window's prediction (tile, tile, 3) in
  reflectance x 10000 (float32), in the windows' order."""
  in_flight: collections.deque = collections.deque()

  def finish() -> Iterator[np.ndarray]:
    scales, output = in_flight.popleft()
    output = np.asarray(output, np.float32)
    expected = (model.batch_size, model.tile_size, model.tile_size, 3)
    if output.shape != expected:
      raise ValueError(f"predict_tiles returned shape {output.shape}, expected {expected}")
    bar.update(len(scales))
    for (low, span), prediction in zip(scales, output):
      yield prediction * np.float32(span) + np.float32(low)

  while True:
    chunk = [w for _, w in zip(range(model.batch_size), windows)]
    if not chunk:
      break
    batch = {key: np.zeros((model.batch_size, *value.shape), value.dtype)
             for key, value in chunk[0][0].items()}
    for i, (example, _, _) in enumerate(chunk):
      for key, value in example.items():
        batch[key][i] = value
    in_flight.append(([(low, span) for _, low, span in chunk], model.predict_tiles(batch)))
    if len(in_flight) >= _IN_FLIGHT:
      yield from finish()
  while in_flight:
    yield from finish()


def predict_scene(inputs: SceneInputs, out: str | os.PathLike, model: TileModel, *,
                  overlap: int | None = None, composite: bool = True,
                  mask_out: str | os.PathLike | None = None,
                  brightness: float = cloud_mask_lib.DEFAULT_BRIGHTNESS,
                  overwrite: bool = False, compression: str = "zlib",
                  progress: bool = True) -> SceneReport:
  """De-clouds a scene and writes it as a GeoTIFF.

  Args:
    inputs: the input GeoTIFFs or date folders; brought onto the cloudy date's grid (`align`,
      in a temporary folder beside `out`) and checked (bands, dtypes, layout, one grid) before
      any work.
    out: the output GeoTIFF: uint16 R, G, B reflectance x 10000 with the cloudy input's
      georeference tags and photometric interpretation.
    model: the model and how to feed it.
    overlap: pixels shared by neighbouring windows, blended by feathering; default a quarter of
      the window.
    composite: keep the cloudy input's clear pixels exactly and take the prediction only under
      clouds (a date without clouds is then written unchanged, without running the model);
      False writes the prediction everywhere. Pixels at the cloudy input's nodata value stay
      nodata either way. Over several processes only process 0 writes outputs.
    mask_out: also write the cloud mask used (uint8, 1 = restored) here, on the same grid.
    brightness: threshold of the cloud heuristic, used when `inputs.qa60` is None.
    overwrite: replace existing output files.
    compression: of the outputs, "zlib" (Deflate) or "none".
    progress: show a progress bar on stderr.

  Raises:
    InputError: a bad input, an existing output without `overwrite`, an output that is an
      input, too little disk space, or the wrong number of earlier dates for the model.
  """
  if model.normalization not in S2_NORMALIZATIONS:
    raise ValueError(f"normalization must be one of {S2_NORMALIZATIONS}, "
                     f"got {model.normalization!r}")
  out = pathlib.Path(out)
  mask_out = None if mask_out is None else pathlib.Path(mask_out)
  input_paths = [inputs.cloudy, *inputs.history, inputs.sar] + (
      [inputs.qa60] if inputs.qa60 else [])
  if len(inputs.history) != model.history_length:
    raise InputError(", ".join(map(str, inputs.history)) or "--history",
                     f"the model takes {model.history_length} earlier dates, got "
                     f"{len(inputs.history)}")
  for path in [out] + ([mask_out] if mask_out else []):
    _check_output(path, input_paths, overwrite)
  if mask_out is not None and mask_out.absolute() == out.absolute():
    raise InputError(mask_out, "is also the output image; choose another path for the mask")
  overlap = model.tile_size // 4 if overlap is None else overlap
  # Over several processes (`tile_model`), every one runs the windows; process 0 writes.
  writer = jax.process_index() == 0

  with contextlib.ExitStack() as stack:
    scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix=".plfm_inputs_",
                                                              dir=out.parent))
    inputs, notes = align.align_inputs(inputs, pathlib.Path(scratch))
    rasters = _open_inputs(inputs, stack)
    cloudy = rasters["cloudy"]
    height, width = cloudy.height, cloudy.width
    # Uncompressed sizes (uint16 R, G, B; uint8 mask): an upper bound of what Deflate writes.
    needed = collections.Counter({out.parent.resolve(): height * width * 6})
    if mask_out is not None:
      needed[mask_out.parent.resolve()] += height * width
    for folder, size in needed.items():
      diskspace.check_free_space(folder, size, "the output")
    cloud_pixels = sum(int(_mask_rows(rasters, first, first + len(rows), rows, brightness).sum())
                       for first, rows in cloudy.row_bands(geotiff.OUTPUT_TILE))
    if composite and not cloud_pixels:
      # Nothing to restore: the composite is the input, pixel for pixel.
      blocks = cloudy.row_bands(geotiff.OUTPUT_TILE)
      grid = ()
    else:
      grid = tiling.TileGrid(height, width, model.tile_size, overlap)
      blocks = _output_blocks(rasters, grid, model, composite, brightness, stack,
                              progress and writer)
    if not writer:
      # Another process writes; this one computes its share of every batch of windows.
      for _ in blocks:
        pass
    else:
      geotiff.write_geotiff(out, blocks, height=height, width=width, bands=3, dtype=np.uint16,
                            tags=cloudy.tags, photometric=cloudy.photometric,
                            compression=compression)
    if mask_out is not None and writer:
      mask_blocks = ((first, _mask_rows(rasters, first, first + len(rows), rows, brightness)
                      .astype(np.uint8)[..., None])
                     for first, rows in cloudy.row_bands(geotiff.OUTPUT_TILE))
      # A nodata value of the image would mark "clear" (0) in the mask as missing.
      tags = {code: tag for code, tag in cloudy.tags.items() if code != geotiff.NODATA_TAG}
      geotiff.write_geotiff(mask_out, mask_blocks, height=height, width=width, bands=1,
                            dtype=np.uint8, tags=tags, compression=compression)
  return SceneReport(height=height, width=width, windows=len(grid),
                     cloud_fraction=cloud_pixels / (height * width), notes=tuple(notes))


def _output_blocks(rasters: Mapping[str, Any], grid: tiling.TileGrid, model: TileModel,
                   composite: bool, brightness: float, stack: contextlib.ExitStack,
                   progress: bool) -> Iterator[tuple[int, np.ndarray]]:
  """(first row, uint16 rows) of the output: the model's blended windows, composited."""
  cloudy = rasters["cloudy"]
  bar = stack.enter_context(tqdm.tqdm(total=len(grid), unit="window", desc="predicting",
                                      file=sys.stderr, disable=not progress))
  windows = _windows(rasters, grid, model.normalization, brightness)
  for first, rows in tiling.blend(grid, _predictions(windows, model, bar)):
    stop = first + len(rows)
    original = cloudy.read_rows(first, stop)
    prediction = np.rint(np.clip(rows, 0, np.iinfo(np.uint16).max)).astype(np.uint16)
    if composite:
      mask = _mask_rows(rasters, first, stop, original, brightness)
      prediction = np.asarray(composite_images(prediction, original, mask[..., None]))
    elif cloudy.nodata is not None:
      nodata = np.all(original == cloudy.nodata, axis=-1, keepdims=True)
      prediction = np.where(nodata, original, prediction)
    yield first, prediction
