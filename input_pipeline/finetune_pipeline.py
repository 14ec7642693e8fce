"""Grain pipelines for the downstream tasks: model batches from a downstream source.

`source` holds records in the `features.downstream_features` schema (image and mask PNG
bytes or arrays, labels int8 [C]). Batches (per process, numpy):
  image   float32 [B, S, S, C] normalised as for pretraining
  labels  int8 [B, C] (1 positive, 0 negative)
  mask    float32 [B, S, S] 0/1 (segmentation only: with_mask=True)
and, for evaluation, valid (bool [B]) marking real rows.

Training shuffles and repeats exactly as the pretraining pipeline (pipeline.shuffled_stream:
same seed -> same stream, resumable from the iterator state) and augments with the
configured random affine, the same warp applied to image and mask. Unreadable records
are counted, named and dropped as there (data.max_skip_fraction).
"""
from __future__ import annotations

import numpy as np

from input_pipeline import bad_records, pipeline, transforms


def prepare(record: dict) -> dict:
  """A downstream record -> grey float image, mask (float 0/1), labels."""
  grey = transforms.load_grey(record.get("image"))
  mask = record.get("mask")
  mask = (np.zeros_like(grey) if mask is None
          else (transforms.load_grey(mask) >= 0.5).astype(np.float32))
  if mask.shape != grey.shape:
    raise transforms.BadRecord(f"mask {mask.shape} and image {grey.shape} differ in size")
  labels = np.asarray(record.get("labels"), np.int8).reshape(-1)
  return {"grey": grey, "mask": mask, "labels": labels}


def example(prepared: dict, opts: pipeline.DataOptions, with_mask: bool,
            rng: np.random.Generator | None = None) -> dict:
  """Resized (and, given rng, randomly warped) model example."""
  grey = transforms.resize_grey(prepared["grey"], opts.image_size)
  mask = transforms.resize_grey(prepared["mask"], opts.image_size) if with_mask else None
  if rng is not None:
    angle, scale = transforms.sample_affine(rng, opts.affine_degrees, opts.affine_scale)
    if angle != 0.0 or scale != 1.0:
      grey = transforms.affine_grey(grey, angle, scale)
      mask = None if mask is None else transforms.affine_grey(mask, angle, scale)
  out = {"image": transforms.normalise(grey, opts.channels),
         "labels": np.asarray(prepared["labels"], np.int8)}
  if with_mask:
    out["mask"] = (mask >= 0.5).astype(np.float32)
  return out


def _read(source, index: int, tracker: bad_records.SkipTracker):
  """The prepared record, or None (counted and logged with its image_id) when unusable."""
  record = None
  try:
    record = bad_records.read_record(source, index)
    prepared = prepare(record)
  except transforms.BadRecord as e:
    image_id = (record or {}).get("image_id", "?")
    tracker.skip(index, image_id.decode() if isinstance(image_id, bytes) else str(image_id), e)
    return None
  tracker.ok()
  return prepared


class _TrainMap:
  def __init__(self, source, num_records, seed, opts, with_mask, tracker):
    self.source, self.num_records, self.seed = source, num_records, seed
    self.opts, self.with_mask, self.tracker = opts, with_mask, tracker

  def __call__(self, position: int, record_index: int):
    record_index = int(record_index)
    prepared = _read(self.source, record_index, self.tracker)
    if prepared is None:
      return None
    epoch = int(position) // self.num_records
    rng = np.random.default_rng([self.seed, record_index, epoch])
    return example(prepared, self.opts, self.with_mask, rng)


class _EvalMap:
  def __init__(self, source, indices, opts, with_mask, num_classes, tracker):
    self.source, self.indices, self.opts = source, indices, opts
    self.with_mask, self.num_classes, self.tracker = with_mask, num_classes, tracker

  def blank(self) -> dict:
    s = self.opts.image_size
    out = {"image": np.zeros((s, s, self.opts.channels), np.float32),
           "labels": np.zeros(self.num_classes, np.int8), "valid": np.bool_(False)}
    if self.with_mask:
      out["mask"] = np.zeros((s, s), np.float32)
    return out

  def __call__(self, position: int) -> dict:
    if position >= len(self.indices):
      return self.blank()
    prepared = _read(self.source, self.indices[position], self.tracker)
    if prepared is None:
      return self.blank()
    return dict(example(prepared, self.opts, self.with_mask), valid=np.bool_(True))


def make_train_dataset(source, config, *, with_mask: bool, seed: int, process_index: int = 0,
                       process_count: int = 1, batch_size: int):
  """(IterDataset of per-process training batches, its SkipTracker)."""
  opts = pipeline.DataOptions.from_config(config)
  if len(source) == 0:
    raise ValueError("training source is empty")
  tracker = bad_records.SkipTracker(opts.max_skip_fraction, opts.skip_check_min_records,
                                    name=f"finetune train process {process_index}")
  fn = _TrainMap(source, len(source), seed % 2**32, opts, with_mask, tracker)
  return pipeline.shuffled_stream(len(source), fn, seed % 2**32, process_index, process_count,
                                  batch_size, opts), tracker


def make_eval_iterator(source, config, *, with_mask: bool, num_classes: int,
                       process_index: int = 0, process_count: int = 1, batch_size: int):
  """One ordered pass (pipeline.ordered_stream); `valid` marks the real rows."""
  opts = pipeline.DataOptions.from_config(config)
  tracker = bad_records.SkipTracker(opts.max_skip_fraction, opts.skip_check_min_records,
                                    name=f"finetune eval process {process_index}")
  n = len(source)
  fn = _EvalMap(source, range(process_index, n, process_count), opts, with_mask,
                num_classes, tracker)
  return iter(pipeline.ordered_stream(n, fn, batch_size, process_count, opts))
