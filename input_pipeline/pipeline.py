"""Grain input pipelines for SS-ACL: model batches from any random-access record source.

`source` is anything with `__len__` and `__getitem__(i)` returning a dict in the
`features.py` schema (text fields bytes or str; image a uint8 [H, W, 1] array or encoded
file bytes): a TFDS array_record data source, a list in tests.

Training (`make_train_iterator`): records are shuffled per epoch with a seed shared by all
processes and repeated forever; all processes cut one global stream in blocks of the
per-process batch b (process p takes rows [p*b, (p+1)*b) of every global batch), so the
processes read disjoint records that together cover the set, and the assembled global
batch is the one a single process would read. Each example is transformed with its own
generator seeded by (seed, record index, epoch): the stream is a pure function of the
seed, and `get_state()` / `set_state()` of the returned Grain iterator resume it exactly.
Batches hold the per-process share (global batch // process_count) of the CONTRACTS
"Model batch".

Bad records never stop a run silently: a record whose image or report cannot be read
(zero bytes, truncated or unreadable file, empty or non-UTF-8 report, ...) is logged with
its index and study_id, counted and dropped inside the dataset (batches stay full);
when more than `max_skip_fraction` of the records seen so far were dropped (once at least
`skip_check_min_records` were seen), the pipeline raises `bad_records.TooManyBadRecords`.
16-bit, RGBA, palette and DICOM images are converted, not dropped.

Evaluation (`make_eval_iterator`): no augmentation, no repeat, source order; every
process yields the same number of full batches, the tail padded, and `valid` marks the
real examples, so each record is evaluated exactly once. Bad records become invalid
rows (logged and counted the same way).

Config fields read (config.data unless noted; defaults in brackets where optional):
  image_size          model input size S (square)
  channels            model input channels C (grey repeated)
  text_len            text-encoder length Lt
  report_len          report tokens kept for the decoder
  prompt_len          prompt tokens kept
  decoder_len         decoder length Ld (>= prompt_len + report_len + 2)
  prompt_prob         probability of prefixing the pathology prompt (training)
  flip_prob           probability of a left-right flip (training; words, leaves, boxes too)
  affine_degrees      random rotation range +- degrees (training)
  affine_scale        (min, max) random scale (training)
  max_skip_fraction   tolerated fraction of dropped bad records
  skip_check_min_records  records seen before the fraction is enforced [200]
  shuffle_seed        default seed when make_train_iterator gets none
  num_workers         Grain worker processes (0: in-process)
  prefetch_buffer     batches buffered per worker / records read ahead per thread
  read_threads        threads reading and transforming records [0 with no workers, else 2]
  config.train.global_batch_size   training batch over all processes
  config.eval.batch_size           evaluation batch over all processes
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from input_pipeline import bad_records, transforms
from ssacl_jax import anatomy

TRAIN_KEYS = ("image", "text_ids", "text_mask", "dec_ids", "dec_mask", "dec_loss_mask",
              "leaf_mask", "labels")


@dataclasses.dataclass(frozen=True)
class DataOptions:
  """The config fields the pipeline reads (see the module docstring)."""
  image_size: int = 224
  channels: int = 3
  text_len: int = 100
  report_len: int = 100
  prompt_len: int = 16
  decoder_len: int = 118
  prompt_prob: float = 0.5
  flip_prob: float = 0.0
  affine_degrees: float = 20.0
  affine_scale: tuple[float, float] = (0.8, 1.2)
  max_skip_fraction: float = 0.01
  skip_check_min_records: int = 200
  shuffle_seed: int = 0
  num_workers: int = 0
  prefetch_buffer: int = 2
  read_threads: int | None = None

  @classmethod
  def from_config(cls, config) -> DataOptions:
    data = config.data
    values = {}
    for f in dataclasses.fields(cls):
      if f.name in data:
        values[f.name] = data[f.name]
    if "affine_scale" in values:
      values["affine_scale"] = tuple(float(s) for s in values["affine_scale"])
    opts = cls(**values)
    if opts.decoder_len < opts.prompt_len + opts.report_len + 2:
      raise ValueError(f"config.data.decoder_len={opts.decoder_len} must be at least "
                       f"prompt_len + report_len + 2 = {opts.prompt_len + opts.report_len + 2}")
    return opts

  @property
  def threads(self) -> int:
    if self.read_threads is not None:
      return int(self.read_threads)
    return 0 if self.num_workers == 0 else 2


def _tokenizer_pair(tokenizers):
  if isinstance(tokenizers, dict):
    return tokenizers["text"], tokenizers["decoder"]
  if hasattr(tokenizers, "text") and hasattr(tokenizers, "decoder"):
    return tokenizers.text, tokenizers.decoder
  text, decoder = tokenizers
  return text, decoder


# ----------------------------------------------------------------------------------------
# Records -> examples


def prepare_record(record: dict) -> dict:
  """Checks and decodes one record: grey float image, clean report/prompt text, labels,
  regions. Raises BadRecord when the image or the report is unusable."""
  report = transforms.clean_text(transforms.decode_text(record.get("report"), "report"))
  if not report:
    raise transforms.BadRecord("report is empty")
  grey = transforms.load_grey(record.get("image"))
  labels = record.get("labels")
  labels = (np.full(anatomy.NUM_PATHOLOGIES, -2, np.int8) if labels is None
            else np.asarray(labels, np.int8).reshape(anatomy.NUM_PATHOLOGIES))
  regions = record.get("regions")
  if regions is None:
    regions = anatomy.region_vector(
        anatomy.regions_for_pathologies(anatomy.positive_pathologies(labels)))
  prompt = record.get("prompt")
  prompt = (anatomy.prompt_text(labels) if prompt is None
            else transforms.decode_text(prompt, "prompt"))
  out = {"grey": grey, "report": report, "prompt": transforms.clean_text(prompt),
         "labels": labels, "leaf_mask": transforms.leaf_mask_from_region_vector(regions),
         "study_id": bad_records.study_id_of(record)}
  for key, shape in (("leaf_boxes", (anatomy.NUM_LEAVES, 4)),
                     ("finding_boxes", (anatomy.NUM_PATHOLOGIES, 4))):
    value = record.get(key)
    out[key] = (np.zeros(shape, np.float32) if value is None
                else np.asarray(value, np.float32).reshape(shape))
  out["has_boxes"] = np.int8(record.get("has_boxes", 0))
  sentences = record.get("finding_sentences")
  sentences = [""] * anatomy.NUM_PATHOLOGIES if sentences is None else [
      transforms.decode_text(s, "finding_sentences") for s in sentences]
  out["finding_sentences"] = np.array(sentences, dtype=object)
  return out


def train_example(prepared: dict, rng: np.random.Generator, opts: DataOptions,
                  text_tok, decoder_tok) -> dict:
  """One training example of the Model batch from a prepared record.

  Random draws, in this order: flip, affine, contrastive text, prompt.
  """
  grey, report, leaf_mask = prepared["grey"], prepared["report"], prepared["leaf_mask"]
  if opts.flip_prob > 0 and rng.random() < opts.flip_prob:
    flipped = transforms.flip_example(grey, report, leaf_mask)
    grey, report, leaf_mask = flipped["grey"], flipped["report"], flipped["leaf_mask"]
  grey = transforms.resize_grey(grey, opts.image_size)
  angle, scale = transforms.sample_affine(rng, opts.affine_degrees, opts.affine_scale)
  if angle != 0.0 or scale != 1.0:
    grey = transforms.affine_grey(grey, angle, scale)
  text = transforms.contrastive_text(report, rng)
  use_prompt = bool(rng.random() < opts.prompt_prob)
  return {
      "image": transforms.normalise(grey, opts.channels),
      **transforms.text_sequence(text, text_tok, opts.text_len),
      **transforms.decoder_sequence(report, prepared["prompt"], use_prompt, decoder_tok,
                                    opts.decoder_len, opts.prompt_len, opts.report_len),
      "leaf_mask": np.asarray(leaf_mask, np.int32),
      "labels": np.asarray(prepared["labels"], np.int8),
  }


def eval_example(prepared: dict, opts: DataOptions, text_tok, decoder_tok,
                 use_prompt: bool = False) -> dict:
  """An evaluation example: no augmentation; the whole report (lower-cased, in order) as
  the contrastive text; plus the passthrough fields and `valid`."""
  grey = transforms.resize_grey(prepared["grey"], opts.image_size)
  return {
      "image": transforms.normalise(grey, opts.channels),
      **transforms.text_sequence(transforms.contrastive_text(prepared["report"], None),
                                 text_tok, opts.text_len),
      **transforms.decoder_sequence(prepared["report"], prepared["prompt"], use_prompt,
                                    decoder_tok, opts.decoder_len, opts.prompt_len,
                                    opts.report_len),
      "leaf_mask": np.asarray(prepared["leaf_mask"], np.int32),
      "labels": np.asarray(prepared["labels"], np.int8),
      "valid": np.bool_(True),
      "study_id": prepared["study_id"],
      "report": prepared["report"],
      "prompt": prepared["prompt"],
      "leaf_boxes": prepared["leaf_boxes"],
      "finding_boxes": prepared["finding_boxes"],
      "has_boxes": np.int8(prepared["has_boxes"]),
      "finding_sentences": prepared["finding_sentences"],
      "raw_image": transforms.to_uint8(grey),
  }


def blank_eval_example(opts: DataOptions) -> dict:
  """A padding row (valid = False) with the eval example's shapes and dtypes."""
  s, c = opts.image_size, opts.channels
  return {
      "image": np.zeros((s, s, c), np.float32),
      "text_ids": np.zeros(opts.text_len, np.int32),
      "text_mask": np.zeros(opts.text_len, np.int32),
      "dec_ids": np.zeros(opts.decoder_len, np.int32),
      "dec_mask": np.zeros(opts.decoder_len, np.int32),
      "dec_loss_mask": np.zeros(opts.decoder_len, np.float32),
      "leaf_mask": np.zeros(anatomy.NUM_LEAVES, np.int32),
      "labels": np.full(anatomy.NUM_PATHOLOGIES, -2, np.int8),
      "valid": np.bool_(False),
      "study_id": "",
      "report": "",
      "prompt": "",
      "leaf_boxes": np.zeros((anatomy.NUM_LEAVES, 4), np.float32),
      "finding_boxes": np.zeros((anatomy.NUM_PATHOLOGIES, 4), np.float32),
      "has_boxes": np.int8(0),
      "finding_sentences": np.array([""] * anatomy.NUM_PATHOLOGIES, dtype=object),
      "raw_image": np.zeros((s, s), np.uint8),
  }


def stack_examples(examples: Sequence[dict]) -> dict:
  """Batches examples: arrays stacked; strings into object arrays."""
  out = {}
  for key in examples[0]:
    values = [e[key] for e in examples]
    if isinstance(values[0], str):
      out[key] = np.array(values, dtype=object)
    else:
      out[key] = np.stack([np.asarray(v) for v in values])
  return out


def read_prepared(source, record_index: int, tracker: bad_records.SkipTracker):
  """(prepared record, raw record); prepared is None, and the skip counted and logged,
  when the record is unusable."""
  record = None
  try:
    record = bad_records.read_record(source, record_index)
    prepared = prepare_record(record)
  except transforms.BadRecord as e:
    tracker.skip(record_index, bad_records.study_id_of(record), e)
    return None, record
  tracker.ok()
  return prepared, record


class _TrainMap:
  """(stream position, record index) -> training example, or None for a bad record."""

  def __init__(self, source, num_records: int, seed: int, opts: DataOptions, text_tok,
               decoder_tok, tracker: bad_records.SkipTracker):
    self.source, self.num_records, self.seed = source, num_records, seed
    self.opts, self.text_tok, self.decoder_tok = opts, text_tok, decoder_tok
    self.tracker = tracker

  def __call__(self, position: int, record_index: int) -> dict | None:
    record_index = int(record_index)
    epoch = int(position) // self.num_records
    prepared, _ = read_prepared(self.source, record_index, self.tracker)
    if prepared is None:
      return None
    rng = np.random.default_rng([self.seed, record_index, epoch])
    return train_example(prepared, rng, self.opts, self.text_tok, self.decoder_tok)


class _EvalMap:
  """padded local position -> eval example (blank + invalid for padding/bad records)."""

  def __init__(self, source, indices: range, opts: DataOptions, text_tok, decoder_tok,
               tracker: bad_records.SkipTracker, use_prompt: bool):
    self.source, self.indices, self.opts = source, indices, opts
    self.text_tok, self.decoder_tok = text_tok, decoder_tok
    self.tracker, self.use_prompt = tracker, use_prompt

  def __call__(self, position: int) -> dict:
    if position >= len(self.indices):
      return blank_eval_example(self.opts)
    record_index = self.indices[position]
    prepared, record = read_prepared(self.source, record_index, self.tracker)
    if prepared is None:
      blank = blank_eval_example(self.opts)
      blank["study_id"] = bad_records.study_id_of(record) if record is not None else ""
      return blank
    return eval_example(prepared, self.opts, self.text_tok, self.decoder_tok,
                        self.use_prompt)


# ----------------------------------------------------------------------------------------
# Datasets and iterators


def _local_batch_size(global_batch: int, process_count: int) -> int:
  if global_batch % process_count:
    raise ValueError(f"global batch {global_batch} is not divisible by {process_count} "
                     "processes")
  return global_batch // process_count


def _finish(ds: grain.MapDataset, opts: DataOptions, batch_size: int,
            drop_remainder: bool) -> grain.IterDataset:
  read = grain.ReadOptions(num_threads=opts.threads,
                           prefetch_buffer_size=max(1, opts.prefetch_buffer * batch_size))
  it = ds.to_iter_dataset(read).batch(batch_size, drop_remainder=drop_remainder,
                                      batch_fn=stack_examples)
  if opts.num_workers > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=opts.num_workers, per_worker_buffer_size=opts.prefetch_buffer))
  return it


def make_train_dataset(source, config, tokenizers, process_index: int = 0,
                       process_count: int = 1, seed: int | None = None,
                       batch_size: int | None = None
                       ) -> tuple[grain.IterDataset, bad_records.SkipTracker]:
  """The training IterDataset (iterate it for batches) and its bad-record tracker.

  batch_size: per-process batch; default config.train.global_batch_size // process_count.
  """
  opts = DataOptions.from_config(config)
  text_tok, decoder_tok = _tokenizer_pair(tokenizers)
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  n = len(source)
  if n == 0:
    raise ValueError("training source is empty")
  seed = int(opts.shuffle_seed if seed is None else seed) % 2**32
  if batch_size is None:
    batch_size = _local_batch_size(int(config.train.global_batch_size), process_count)
  tracker = bad_records.SkipTracker(opts.max_skip_fraction, opts.skip_check_min_records,
                                    name=f"train process {process_index}")
  fn = _TrainMap(source, n, seed, opts, text_tok, decoder_tok, tracker)
  return shuffled_stream(n, fn, seed, process_index, process_count, batch_size, opts), tracker


def shuffled_stream(num_records: int, fn, seed: int, process_index: int, process_count: int,
                    batch_size: int, opts: DataOptions) -> grain.IterDataset:
  """Per-process training batches of fn(stream position, record index) (None = dropped)
  over the records shuffled per epoch with `seed`, repeated forever (_ProcessBlocks)."""
  order = grain.MapDataset.range(num_records).seed(seed).shuffle().repeat()
  blocks = _ProcessBlocks(order, process_index, process_count, batch_size)
  ds = grain.MapDataset.range(len(order) // process_count).map(blocks).map(_OnPair(fn))
  return _finish(ds, opts, batch_size, drop_remainder=True)


class _OnPair:
  """(position, record index) tuple -> fn(position, record index); picklable for workers."""

  def __init__(self, fn):
    self.fn = fn

  def __call__(self, pair):
    return self.fn(*pair)


class _ProcessBlocks:
  """Process p's q-th position -> (global stream position, record index).

  The global stream is cut into global batches; process p takes rows [p*b, (p+1)*b) of
  each, so the global batch assembled from all processes is rows 0..B-1 of the stream in
  order, the same batch a single process would build: runs on any number of hosts see
  the same data in the same place.
  """

  def __init__(self, order, process_index: int, process_count: int, batch_size: int):
    self.order, self.p, self.count, self.b = order, process_index, process_count, batch_size

  def __call__(self, q):
    q = int(q)
    position = (q // self.b) * self.b * self.count + self.p * self.b + q % self.b
    return position, self.order[position]


def make_train_iterator(source, config, tokenizers, process_index: int = 0,
                        process_count: int = 1, seed: int | None = None,
                        batch_size: int | None = None) -> grain.DatasetIterator:
  """Endless, checkpointable iterator of per-process training batches (numpy dicts with
  TRAIN_KEYS). `it.get_state()` / `it.set_state(state)` resume the exact stream."""
  ds, _ = make_train_dataset(source, config, tokenizers, process_index, process_count,
                             seed, batch_size)
  return iter(ds)


def eval_num_batches(num_records: int, batch_size: int, process_count: int) -> int:
  """Batches every process yields so that all records fit (same count everywhere)."""
  per_process = math.ceil(num_records / process_count)
  return max(1, math.ceil(per_process / batch_size))


def make_eval_dataset(source, config, tokenizers, process_index: int = 0,
                      process_count: int = 1, batch_size: int | None = None,
                      use_prompt: bool = False
                      ) -> tuple[grain.IterDataset, bad_records.SkipTracker]:
  opts = DataOptions.from_config(config)
  text_tok, decoder_tok = _tokenizer_pair(tokenizers)
  if batch_size is None:
    batch_size = _local_batch_size(int(config.eval.batch_size), process_count)
  n = len(source)
  tracker = bad_records.SkipTracker(opts.max_skip_fraction, opts.skip_check_min_records,
                                    name=f"eval process {process_index}")
  fn = _EvalMap(source, range(process_index, n, process_count), opts, text_tok, decoder_tok,
                tracker, use_prompt)
  return ordered_stream(n, fn, batch_size, process_count, opts), tracker


def ordered_stream(num_records: int, fn, batch_size: int, process_count: int,
                   opts: DataOptions) -> grain.IterDataset:
  """One pass of fn(local position) over this process's records (p, p + P, ...), padded
  to eval_num_batches(...) full batches; fn returns padding rows past its records."""
  total = eval_num_batches(num_records, batch_size, process_count) * batch_size
  return _finish(grain.MapDataset.range(total).map(fn), opts, batch_size,
                 drop_remainder=False)


def make_eval_iterator(source, config, tokenizers, process_index: int = 0,
                       process_count: int = 1, batch_size: int | None = None,
                       use_prompt: bool = False) -> grain.DatasetIterator:
  """One pass over the source in order: process p evaluates records p, p+P, ...; every
  process yields eval_num_batches(...) full batches; `valid` (bool) marks real rows.

  Batches hold the Model batch keys plus: valid, study_id / report / prompt (object
  arrays of str), leaf_boxes, finding_boxes, has_boxes, finding_sentences (object [B, 14]),
  raw_image (uint8 [B, S, S], the
  resized grey image before normalisation, for overlays). The decoder input carries the
  ground-truth prompt only with use_prompt.
  """
  ds, _ = make_eval_dataset(source, config, tokenizers, process_index, process_count,
                            batch_size, use_prompt)
  return iter(ds)


# ----------------------------------------------------------------------------------------
# Global arrays


def make_global_batch(local_batch: dict, mesh, batch_partition_spec) -> dict:
  """Per-process numpy batch -> global jax.Arrays sharded along the leading axis.

  `batch_partition_spec` is the PartitionSpec of the leading (batch) axis, e.g.
  P(('data', 'fsdp')); the global leading size is local size x process count. Non-numeric
  fields (the eval batch's strings) are left out.
  """
  import jax
  from jax.sharding import NamedSharding

  sharding = NamedSharding(mesh, batch_partition_spec)
  out: dict[str, Any] = {}
  for key, value in local_batch.items():
    value = np.asarray(value)
    if value.dtype == object or value.dtype.kind in "USO":
      continue
    out[key] = jax.make_array_from_process_local_data(sharding, value)
  return out
