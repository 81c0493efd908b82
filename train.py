"""Trains PLFM: `python train.py --config configs/plfm.py[:variant] --workdir DIR [--config.x=y]`.

Rerunning the same command resumes from the workdir's checkpoints.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from plfm_jax import cli
from plfm_jax import runtime
from plfm_jax.train import trainer

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/plfm.py", "Config file[:variant].",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.", required=True)
flags.DEFINE_bool("allow_config_change", False,
                  "Resume even though the config differs from the checkpoint's.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  runtime.configure(FLAGS.debug)
  trainer.train(FLAGS.config, FLAGS.workdir, allow_config_change=FLAGS.allow_config_change)


if __name__ == "__main__":
  cli.run(main)
