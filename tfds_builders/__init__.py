"""TFDS dataset builders of plfm-jax (each folder also builds with `tfds build <folder>`)."""
