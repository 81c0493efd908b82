"""The `plfm_series` TFDS dataset: PLFM series of 4 monthly Sentinel-1/Sentinel-2 dates."""

# Relative, so that `tfds build tfds_builders/plfm_series` (which imports this folder as the
# top-level package `plfm_series`) and `import tfds_builders.plfm_series` load one module each.
from .plfm_series_dataset_builder import Builder

__all__ = ["Builder"]
