r"""Build an SS-ACL data set into ArrayRecord files (TFDS layout), or reuse what exists.

  python -m input_pipeline.build --dataset synthetic_cxr --data_dir data
  python -m input_pipeline.build --dataset synthetic_cxr --data_dir data \
      --config.train_size=200 --config.image_size=128 --config.seed=1
  python -m input_pipeline.build --dataset mimic_cxr --data_dir data \
      --manual_dir /path/to/mimic-cxr-jpg --config.views=PA,AP

`--config.FIELD=VALUE` sets a field of the builder's config (see each builder's config
dataclass). Each distinct config lives in its own directory
(DATA_DIR/NAME/CONFIG/VERSION), so a second run with the same options reuses the files.
The Grain pipeline reads a split with `load_split(name, data_dir, split, **options)`.
No TensorFlow is needed: reading goes through `builder.as_data_source`.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from absl import app, flags

from input_pipeline import builders
from input_pipeline.builders import common

CONFIG_PREFIX = "--config."


def split_config_args(argv: Sequence[str]) -> tuple[list[str], dict[str, str]]:
  """Separate '--config.FIELD=VALUE' arguments (returned as a dict) from the rest."""
  rest, options = [], {}
  for arg in argv:
    if arg.startswith(CONFIG_PREFIX):
      field, sep, value = arg[len(CONFIG_PREFIX):].partition("=")
      if not sep or not field:
        raise flags.Error(f"expected {CONFIG_PREFIX}FIELD=VALUE, got {arg!r}")
      options[field] = value
    else:
      rest.append(arg)
  return rest, options


def make_builder(name: str, data_dir: str, **options):
  """The builder for `name` with its config fields set from `options` (builds nothing)."""
  cls = builders.get_builder_class(name)
  config = common.make_config(cls.BUILDER_CONFIGS[0], **options)
  return cls(config=config, data_dir=data_dir, file_format="array_record")


def build_dataset(name: str, data_dir: str, manual_dir: str | None = None, **options):
  """Build (or reuse) data set `name` in data_dir; returns the prepared builder."""
  import tensorflow_datasets as tfds
  builder = make_builder(name, data_dir, **options)
  if not sys.stderr.isatty():  # progress bars would leave escape codes in the logs
    tfds.disable_progress_bar()
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def is_synthetic(name: str) -> bool:
  """Whether data set `name` is generated (a demo set, not patients' images)."""
  return builders.get_builder_class(name).SYNTHETIC


def load_split(name: str, data_dir: str, split: str, **options):
  """Random-access data source (len, [i] -> dict of numpy) over a built split."""
  builder = make_builder(name, data_dir, **options)
  if not builder.is_prepared():
    opts = " ".join(f"{CONFIG_PREFIX}{k}={_flag_value(v)}" for k, v in sorted(options.items()))
    raise FileNotFoundError(
        f"{name} (config {builder.builder_config.name}) is not built in {data_dir}; run: "
        f"python -m input_pipeline.build --dataset {name} --data_dir {data_dir} {opts}")
  if split not in builder.info.splits:
    raise KeyError(f"{name} has no split {split!r}; it has {', '.join(builder.info.splits)}")
  return builder.as_data_source(split=split)


def _flag_value(value) -> str:
  return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def _split_order(split: str) -> tuple[int, str]:
  order = ("train", "validation", "test")
  return (order.index(split) if split in order else len(order), split)


def summary(builder, reused: bool) -> dict:
  """What the build produced: config, split sizes, files; JSON-friendly."""
  return {
      "dataset": builder.name,
      "config": builder.builder_config.name,
      "options": {k: list(v) if isinstance(v, tuple) else v
                  for k, v in common.config_fields(builder.builder_config).items()},
      "reused": reused,
      "splits": {s: builder.info.splits[s].num_examples
                 for s in sorted(builder.info.splits, key=_split_order)},
      "data_dir": str(builder.data_dir),
  }


def define_flags() -> None:
  """The command's flags; defined only when run as a command, so importing this module
  (from the trainer or tests) never clashes with other flag definitions."""
  flags.DEFINE_string("dataset", "synthetic_cxr",
                      f"data set to build: {', '.join(builders.BUILDERS)}")
  flags.DEFINE_string("data_dir", None, "where the built data sets live")
  flags.DEFINE_string("manual_dir", None, "the directory holding the data set's files "
                      "(not needed for synthetic_cxr)")


def main(args) -> None:
  argv, options = args
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  name, data_dir = flags.FLAGS.dataset, flags.FLAGS.data_dir
  if not data_dir:
    raise app.UsageError("--data_dir is required")
  try:
    builder = make_builder(name, data_dir, **options)
  except (KeyError, ValueError) as e:
    raise app.UsageError(str(e)) from e
  reused = builder.is_prepared()
  print(f"{'Reusing' if reused else 'Building'} {builder.name}/{builder.builder_config.name}"
        f" in {builder.data_dir}", flush=True)
  builder = build_dataset(name, data_dir, flags.FLAGS.manual_dir, **options)
  info = summary(builder, reused)
  for split, n in info["splits"].items():
    print(f"  {split}: {n} examples")
  print(f"{'reused' if reused else 'wrote'} {info['data_dir']}")
  print(json.dumps(info))


def _parse_flags(argv: list[str]):
  rest, options = split_config_args(argv)
  return flags.FLAGS(rest), options


if __name__ == "__main__":
  define_flags()
  app.run(main, argv=sys.argv, flags_parser=_parse_flags)
