"""Whole-scene inference: GeoTIFF scenes of any size in, de-clouded GeoTIFFs out.

User guide: docs/predict.md.
"""

from plfm_jax.inference.scene import (SceneInputs, SceneReport, TileModel, load_tile_model,
                                      predict_scene)

__all__ = ["SceneInputs", "SceneReport", "TileModel", "load_tile_model", "predict_scene"]
