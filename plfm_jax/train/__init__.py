"""Stage-wise PLFM training: pure step functions jit-compiled over a device mesh."""
