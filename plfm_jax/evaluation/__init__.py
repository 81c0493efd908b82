"""Evaluation of trained PLFM models against baselines.

`evaluate.run_evaluation(config, workdir, split=...)` runs it; `baselines` holds the methods scored,
`report` the CSV, JSON and Markdown writers. (The function is not re-exported here: it would
shadow its module `plfm_jax.evaluation.evaluate`.)
"""
