"""One cross-season run on the real sample: train on some zones, evaluate on another.

    .venv/bin/python scripts/real_sample_results.py --variant=plus \\
        --train_zones=zone_9_a --test_zone=zone_9_b [--sample_root=../shared/data/plfm_sample] \\
        [--workdir=workdir/real_sample/plus_zone_9_a-zone_9_b] [--results=FILE.md] \\
        [--validation_patches=3] [--config.x=y ...]

The sample's zones are one place in different months (zone_9_a Jan-Apr, zone_9_b May-Aug), so
training on one and testing on the other measures how a model carries over to another season.
The sample is one flat folder; this script lays it out as the three splits train.py and
evaluate.py expect, with symbolic links only (the sample is never copied or modified), in
`<workdir>/raw/`:

    training/    the training zones, all patches but the highest-numbered `validation_patches`
    validation/  those held-out patches of the training zones (early stopping, checkpoint choice
                 and the choice of settings never see the test zone)
    test/        the test zone, every patch

then trains the variant in its CPU size (`configs/plfm.py:small,<variant>`), evaluates the best
checkpoints on `validation` and `test` (whole 256 px patches, simulated clouds, every baseline,
every scenario of what the methods are told of the clouds) and writes a report of this run to
`--results`: the tables, the exact commands, their wall times and the machine. `<workdir>/eval/{validation,test}/summary.json` hold every number, and
`<workdir>/run.json` what the report says about the run. Rerunning with the same workdir
resumes training where it stopped; the reported times are those of the rerun then, and the
report says so. Extra `--config.x=y` arguments go to both train.py and evaluate.py.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import pathlib
import shlex
import subprocess
import sys
import time
from typing import Any, Mapping, Sequence

from absl import flags

from plfm_jax import workdirs
from plfm_jax.data import layout
from plfm_jax.errors import InputError
from plfm_jax.evaluation import baselines, report

FLAGS = flags.FLAGS
REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_SAMPLE = REPO.parent / "shared" / "data" / "plfm_sample"
SPLITS = ("validation", "test")


def link_splits(sample_root: pathlib.Path, raw: pathlib.Path, train_zones: Sequence[str],
                test_zone: str | None, validation_patches: int
                ) -> dict[str, dict[str, list[int]]]:
  """Creates `raw/{training,validation,test}` of symbolic links into the sample (no `test`
  without a test zone).

  Returns:
    {split folder: {zone: patches}}.

  Raises:
    InputError: a zone is missing or has too few complete series, or the test zone is also a
      training zone.
  """
  if test_zone in train_zones:
    raise InputError(sample_root, f"the test zone {test_zone} is also a training zone")
  scan = layout.scan_dataset(sample_root)
  series = {(s.zone, s.patch): s for s in scan.all_series()}
  zones = [*train_zones, *([test_zone] if test_zone else [])]
  patches = {zone: sorted(p for z, p in series if z == zone) for zone in zones}
  for zone, found in patches.items():
    needed = validation_patches + 1 if zone in train_zones else 1
    if len(found) < needed:
      present = sorted({z for z, _ in series})
      raise InputError(sample_root, f"zone {zone} has {len(found)} complete series, needs "
                       f"{needed} (zones here: {', '.join(present) or 'none'})")
  splits = {
      "training": {z: patches[z][:len(patches[z]) - validation_patches] for z in train_zones},
      "validation": {z: patches[z][len(patches[z]) - validation_patches:] for z in train_zones},
  }
  if test_zone:
    splits["test"] = {test_zone: patches[test_zone]}
  for folder, zones in splits.items():
    for zone, chosen in zones.items():
      for patch in chosen:
        s = series[(zone, patch)]
        for modality, files in (("sen1", s.s1), ("sen2", s.rgb + s.cm)):
          target_dir = raw / folder / modality / zone
          target_dir.mkdir(parents=True, exist_ok=True)
          for file in files:
            link = target_dir / file.name
            if not link.is_symlink():
              link.symlink_to(file.resolve())
  return splits


def run(command: list[str]) -> float:
  """Runs `command` from the repository root, streaming its output; returns its wall time."""
  print("+ " + shlex.join(command), flush=True)
  started = time.perf_counter()
  subprocess.run(command, cwd=REPO, check=True)
  return time.perf_counter() - started


def machine() -> dict[str, str]:
  """What the timings were measured on: `uname -a`, CPU count and model, ISA, load average."""
  cpuinfo = pathlib.Path("/proc/cpuinfo").read_text().splitlines()
  field = lambda name: next((line.split(":", 1)[1].strip() for line in cpuinfo
                             if line.startswith(name)), "")
  uname = subprocess.run(["uname", "-a"], capture_output=True, text=True, check=True).stdout
  return {"uname": uname.strip(), "cpus": str(os.cpu_count()),
          "cpu_model": field("model name") or "unknown CPU",
          "isa": "AVX-512" if "avx512f" in field("flags").split() else "AVX2 or older",
          "load": " ".join(f"{x:.1f}" for x in os.getloadavg())}


# The baselines a restoration has to beat: the simple and the matched gap-filling methods.
GAP_FILLING = ("persistence", "temporal_mean", "temporal_median", "matched_persistence",
               "matched_mean")
# Stronger references reported beside them: the prior of `plus` and the model's own branches.
REFERENCES = ("matched_regression", "matched_multiscale", "temporal_branch", "sar_branch")


def shortfalls(means: Mapping[str, Mapping[str, float]], method: str, metric: str,
               against: Sequence[str]) -> list[str]:
  """The methods of `against` that `method` does not beat on `metric`."""
  higher = report.higher_is_better(metric)
  value = means[method][metric]
  return [m for m in against if m in means and m != method
          and not math.isnan(means[m][metric])
          and not (value > means[m][metric] if higher else value < means[m][metric])]


def verdict(means: Mapping[str, Mapping[str, float]]) -> str:
  """Whether PLFM fused and composite beat the gap-filling baselines (and the stronger
  references) on cloud-area PSNR and SSIM, in words; `means` of one scenario."""
  lines = []
  for method in ("plfm_fused", "plfm_composite"):
    for metric, label in (("psnr_cloud", "cloud-area PSNR"), ("ssim_cloud", "cloud-area SSIM")):
      missed = shortfalls(means, method, metric, GAP_FILLING)
      line = f"- {baselines.LABELS[method]}, {label} {means[method][metric]:.4g}: " + (
          "beats persistence, the temporal mean and median and both matched baselines"
          if not missed else
          "does **not** beat " + ", ".join(f"{baselines.LABELS[m]} ({means[m][metric]:.4g})"
                                           for m in missed))
      behind = shortfalls(means, method, metric, REFERENCES)
      if behind:
        line += "; not above the stronger references " + ", ".join(f"{baselines.LABELS[m]} ({means[m][metric]:.4g})"
                                       for m in behind)
      lines.append(line + ".")
  return "\n".join(lines)


def describe_splits(splits: Mapping[str, Mapping[str, list[int]]]) -> str:
  """The split table of the report."""
  rows = [f"| {folder} | {zone} | {len(patches)} | {', '.join(map(str, patches))} |"
          for folder, zones in splits.items() for zone, patches in zones.items()]
  return "| split | zone | series | patches |\n|---|---|---:|---|\n" + "\n".join(rows)


def run_markdown(record: Mapping[str, Any], summaries: Mapping[str, dict]) -> str:
  """The report of one run: test and validation tables, verdict, settings, reproduction."""
  test, config = summaries["test"], record["config"]
  clouds, model, train = test["clouds"], config["model"], config["train"]
  low, high = clouds["coverage_range"]
  lead = test["scenarios"][0]
  host = record["machine"]
  total = sum(c["seconds"] for c in record["commands"])
  commands = "\n".join(f"{shlex.join(c['argv'])}   # {c['name']}: {c['seconds'] / 60:.1f} min"
                       for c in record["commands"])
  tables = "\n".join(
      f"### {split} ({summaries[split]['num_samples']} series), scenario `{scenario}`: "
      f"{report.SCENARIO_TITLES[scenario]}\n\n"
      + report.markdown_table(summaries[split]["metrics"][scenario], baselines.LABELS)
      for split in ("test", "validation") for scenario in summaries[split]["scenarios"])
  return f"""# `{config['variant']}`: train on {', '.join(record['train_zones'])}, test on {record['test_zone']}

Metrics in reflectance (clip(x / 10000, 0, 1)) on whole {test['image_size']} px patches under
simulated clouds, haze and shadows (seed {clouds['seed']}, coverage drawn from {low:.0%}-{high:.0%}
per sample; measured mean on the test zone {clouds['mean_coverage']:.1%}); every method sees the
same clouds and, in each scenario, the same mask; cloud-area metrics cover everything the clouds
changed.

{tables}
**Under the clouds, on the test zone, scenario `{lead}`:**

{verdict(test['metrics'][lead])}

- model: ConvLSTM {tuple(model['temporal_features'])}, generator {model['generator_features']},
  discriminator {model['discriminator_features']}, head {model['head_features']}; norm
  `{model['norm']}`; temporal prior `{model['temporal_prior']}`, matched history
  {model['match_history']}; head inputs `{model['head_inputs']}`, head output
  `{model['head_output']}`; standardised inputs {model['standardize']}; S2 normalisation `{config['data']['s2_normalization']}`
- training: {config['data']['crop_size']} px crops, batch {config['batch_size']}; stages
  {', '.join(train['stages'])}, at most {train['num_epochs']} epochs of {train['steps_per_epoch']}
  steps, patience {train['patience']}; Adam {train['learning_rate']:g}; cloud loss weight
  {train['cloud_loss_weight']:g}; seed {config['seed']}

{describe_splits(record['splits'])}

Run ({record['run_note']}):

```bash
{commands}
```

- wall time {total / 60:.1f} min on `{host['uname']}`; {host['cpus']} CPUs, {host['cpu_model']}
  ({host['isa']}); load average at the end {host['load']}
- {record['date']}
"""


def _repo_relative(path: str | os.PathLike) -> str:
  """`path` relative to the repository root when inside it: commands a reader can paste."""
  path = pathlib.Path(path).absolute()
  return os.path.relpath(path, REPO) if REPO in path.parents else str(path)


def default_workdir(variant: str, train_zones: Sequence[str], test_zone: str) -> pathlib.Path:
  """workdir/real_sample/<variant>_<train zones>-<test zone>."""
  name = f"{variant.replace(',', '+')}_{'+'.join(train_zones)}-{test_zone}"
  return REPO / "workdir" / "real_sample" / name


def main(argv: list[str]) -> None:
  overrides = argv[1:]
  train_zones = [z for z in FLAGS.train_zones if z]
  workdir = pathlib.Path(FLAGS.workdir or default_workdir(FLAGS.variant, train_zones,
                                                            FLAGS.test_zone)).absolute()
  results = pathlib.Path(FLAGS.results) if FLAGS.results else workdir / "results.md"
  fresh = not (workdir / "checkpoints").exists()
  splits = link_splits(pathlib.Path(FLAGS.sample_root), workdir / "raw", train_zones,
                       FLAGS.test_zone, FLAGS.validation_patches)
  common = ["--config", f"configs/plfm.py:small,{FLAGS.variant}",
            "--workdir", _repo_relative(workdir),
            f"--config.data.tfds_dir={_repo_relative(workdir / 'tfds')}", *overrides]
  python = _repo_relative(sys.executable)
  train = [python, "train.py", *common,
           f"--config.data.manual_dir={_repo_relative(workdir / 'raw')}",
           *(["--allow_config_change"] if FLAGS.allow_config_change else [])]
  commands = [("train", train)] + [
      (f"evaluate {split}", [python, "evaluate.py", *common, "--split", split,
                             "--overwrite"]) for split in SPLITS]
  ran = [{"name": name, "argv": command, "seconds": run(command)} for name, command in commands]
  summaries = {split: report.read_summary(workdir / "eval" / split / "summary.json")
               for split in SPLITS}
  record = {
      "variant": FLAGS.variant, "train_zones": train_zones, "test_zone": FLAGS.test_zone,
      "splits": splits, "commands": ran, "machine": machine(),
      "config": workdirs.config_dict(workdirs.saved_config(workdir)),
      "run_note": "from an empty workdir" if fresh else
                  "resuming an existing workdir: the times are those of this rerun",
      "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
  }
  report.write_text(workdir / "run.json", json.dumps(record, indent=2) + "\n")
  report.write_text(results, run_markdown(record, summaries))
  print(f"wrote {results}")


if __name__ == "__main__":
  from plfm_jax import cli
  flags.DEFINE_string("variant", "plus",
                      "configs/plfm.py variant(s), run in their CPU size (`small,` before them).")
  flags.DEFINE_list("train_zones", ["zone_9_a"], "Training zones, comma-separated.")
  flags.DEFINE_string("test_zone", "zone_9_b", "Test zone.")
  flags.DEFINE_string("sample_root", str(DEFAULT_SAMPLE), "The real sample's root folder.")
  flags.DEFINE_string("workdir", None,
                      "Default workdir/real_sample/<variant>_<train zones>-<test zone>.")
  flags.DEFINE_string("results", None, "Report of this run (Markdown); default "
                      "<workdir>/results.md.")
  flags.DEFINE_integer("validation_patches", 3,
                       "Highest-numbered patches of each training zone held out.", lower_bound=1)
  flags.DEFINE_bool("allow_config_change", False,
                    "Passed to train.py: resume checkpoints saved with other settings.")
  cli.run(main, passthrough=lambda arg: arg.startswith("--config."))
