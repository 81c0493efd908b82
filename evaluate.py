"""Evaluates a trained PLFM and baselines on one split.

    python evaluate.py --config configs/plfm.py[:variant] --workdir DIR --split test [--config.x=y]
        [--weights NAME|FILE]

Writes `DIR/eval/<split>/`: per_sample.csv, summary.json, summary.md and PNG panels. Pass the
same --config and overrides as for training (a model setting that does not fit the checkpoints
is an error). `--split` takes TFDS slices such as `test[:100]`. With --weights the model is that
of a weights file (docs/weights.md) and --config only sets the data; DIR receives the results.
"""

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from plfm_jax import cli
from plfm_jax import runtime
from plfm_jax import weight_files
from plfm_jax.evaluation import baselines
from plfm_jax.evaluation import evaluate as evaluation
from plfm_jax.evaluation import report

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/plfm.py", "Config file[:variant].",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Training workdir; results go to <workdir>/eval/<split>/.",
                    required=True)
flags.DEFINE_string("weights", None,
                    "Evaluate a weights file (or shipped weights: "
                    f"{', '.join(weight_files.SHIPPED)}) instead of the workdir's checkpoints.")
flags.DEFINE_string("split", "test", "TFDS split or slice to evaluate, e.g. test or test[:100].")
flags.DEFINE_list("scenarios", list(evaluation.DEFAULT_SCENARIOS),
                  "What the methods are told of the simulated clouds, in report order: "
                  "detected (the tool's own detection), exact (the exact mask), qa60 (opaque "
                  "cores and detection), history_clouded (the latest earlier date clouded too).")
flags.DEFINE_string("fid_weights", None,
                    "Inception-v3 weights file for FID; without it FID is skipped.")
flags.DEFINE_integer("num_panels", 8, "Samples drawn in the PNG panels.")
flags.DEFINE_bool("overwrite", False, "Replace an existing <workdir>/eval/<split>/.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  runtime.configure(FLAGS.debug)
  summary = evaluation.run_evaluation(FLAGS.config, FLAGS.workdir, split=FLAGS.split,
                                      scenarios=tuple(FLAGS.scenarios),
                                      fid_weights=FLAGS.fid_weights, num_panels=FLAGS.num_panels,
                                      overwrite=FLAGS.overwrite,
                                      weights=(None if FLAGS.weights is None
                                               else weight_files.load(FLAGS.weights)))
  if jax.process_index() == 0:
    for scenario in summary["scenarios"]:
      print(f"scenario {scenario}: {report.SCENARIO_TITLES[scenario]}")
      print(report.markdown_table(summary["metrics"][scenario], baselines.LABELS))
    print(f"wrote {evaluation.output_dir(FLAGS.workdir, FLAGS.split)}")


if __name__ == "__main__":
  cli.run(main)
