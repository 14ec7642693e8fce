"""Everything the trainer and evaluators need from input_pipeline, for one process.

Builds the configured data set when it is not built yet (process 0, then a barrier),
trains or loads the tokenizers beside it, and turns per-process Grain batches into global
jax.Arrays on the mesh.
"""
from __future__ import annotations

import json
import pathlib
import queue
import shutil
import threading

import jax
import numpy as np

from input_pipeline import build, features, pipeline, tokenizers as tok_lib


def _on_process_zero_then_sync(fn, name: str):
  if jax.process_index() == 0:
    result = fn()
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)
  return fn() if jax.process_index() != 0 else result


def builder_options(config) -> dict:
  return dict(config.data.builder)


def load_source(config, split: str):
  d = config.data
  build_it = lambda: build.build_dataset(d.dataset, d.data_dir, d.manual_dir or None,
                                         **builder_options(config))
  _on_process_zero_then_sync(build_it, f"build {d.dataset}")
  return build.load_split(d.dataset, d.data_dir, split, **builder_options(config))


WORKDIR_TOKENIZERS = "tokenizers"


def workdir_tokenizer_paths(workdir):
  """Where a workdir keeps the tokenizers its checkpoints were trained with, or None."""
  folder = pathlib.Path(workdir) / WORKDIR_TOKENIZERS
  text = sorted(folder.glob("text.*"))
  decoder = sorted(folder.glob("decoder*"))
  return (text[0], decoder[0]) if text and decoder else None


def keep_tokenizers_in_workdir(workdir, text_path, decoder_path) -> None:
  """Copy the tokenizers next to the checkpoints, so the workdir is self-contained."""
  if jax.process_index() != 0 or workdir_tokenizer_paths(workdir):
    return
  folder = pathlib.Path(workdir) / WORKDIR_TOKENIZERS
  folder.mkdir(parents=True, exist_ok=True)
  shutil.copy(text_path, folder / f"text{pathlib.Path(text_path).suffix}")
  decoder_path = pathlib.Path(decoder_path)
  if decoder_path.is_dir():
    shutil.copytree(decoder_path, folder / "decoder", dirs_exist_ok=True)
  else:
    shutil.copy(decoder_path, folder / f"decoder{decoder_path.suffix}")


def tokenizer_scope(config) -> str:
  """Tokenizers are trained per data set and builder config (its training reports)."""
  d = config.data
  name = build.make_builder(d.dataset, d.data_dir, **builder_options(config)).builder_config.name
  return f"{d.dataset}/{name}"


def load_tokenizers(config, train_source=None, workdir=None) -> tok_lib.TokenizerPair:
  """(text, decoder) tokenizers.

  A workdir's own copies win (its checkpoints were trained with them). Otherwise the
  SentencePiece models beside the data, trained on the training reports once;
  config.data.text_tokenizer (e.g. the release's WordPiece JSON) and
  config.data.decoder_tokenizer (a GPT-2 BPE folder) replace them. With a workdir, the
  tokenizers used are copied into it.
  """
  if workdir is not None and workdir_tokenizer_paths(workdir):
    text_path, decoder_path = workdir_tokenizer_paths(workdir)
    text, decoder = tok_lib.load_tokenizer(text_path), tok_lib.load_tokenizer(decoder_path)
    check_vocab(config, text, decoder)
    return tok_lib.TokenizerPair(text, decoder)
  d = config.data
  train_source = train_source if train_source is not None else load_source(config, d.train_split)

  def reports():
    for i in range(len(train_source)):
      yield features.as_text(train_source[i]["report"])

  text_path, decoder_path = _on_process_zero_then_sync(
      lambda: tok_lib.ensure_tokenizers(d.data_dir, tokenizer_scope(config), reports(),
                                        config.model.text.vocab_size,
                                        config.model.report.vocab_size), "tokenizers")
  decoder_path = d.decoder_tokenizer or decoder_path
  text_path = d.text_tokenizer or text_path
  text = tok_lib.load_tokenizer(text_path)
  decoder = tok_lib.load_tokenizer(decoder_path)
  check_vocab(config, text, decoder)
  if workdir is not None:
    keep_tokenizers_in_workdir(workdir, text_path, decoder_path)
  return tok_lib.TokenizerPair(text, decoder)


def check_vocab(config, text, decoder) -> None:
  m = config.model
  for name, tok, size in (("text", text, m.text.vocab_size), ("report", decoder, m.report.vocab_size)):
    if tok.vocab_size > size:
      raise ValueError(f"the {name} tokenizer has {tok.vocab_size} ids but "
                       f"config.model.{name}.vocab_size is {size}; raise the model's vocab size")


class TrainingData:
  """Training iterator (checkpointable), evaluation batches and anatomy tokens."""

  def __init__(self, config, mesh, batch_sharding, workdir=None):
    self.config, self.mesh = config, mesh
    self.batch_spec = batch_sharding.spec
    self.train_source = load_source(config, config.data.train_split)
    self.tokenizers = load_tokenizers(config, self.train_source, workdir)
    self.anatomy_tokens = tok_lib.anatomy_tokens(self.tokenizers.text, config.data.anatomy_len)
    per_update = config.train.global_batch_size
    ds, self.tracker = pipeline.make_train_dataset(
        self.train_source, config, self.tokenizers, jax.process_index(), jax.process_count(),
        seed=config.data.shuffle_seed + config.train.seed, batch_size=per_update // jax.process_count())
    self.train_iterator = iter(ds)

  def next_train_batch(self) -> dict:
    local = next(self.train_iterator)
    local = {k: local[k] for k in pipeline.TRAIN_KEYS}
    return pipeline.make_global_batch(local, self.mesh, self.batch_spec)

  def skip_stats(self) -> dict:
    return {"data_records_seen": self.tracker.seen, "data_records_skipped": self.tracker.skipped}

  def eval_batches(self, split: str, batch_size: int, max_examples=None, full_only=True):
    """Global model batches over `split` (padded rows dropped when full_only)."""
    source = load_source(self.config, split)
    if max_examples:
      source = _Head(source, max_examples)
    it = pipeline.make_eval_iterator(source, self.config, self.tokenizers, jax.process_index(),
                                     jax.process_count(), batch_size // jax.process_count())
    yielded = False
    for local in it:
      if full_only and yielded and not np.all(local["valid"]):
        continue
      yielded = True
      yield pipeline.make_global_batch({k: local[k] for k in pipeline.TRAIN_KEYS},
                                       self.mesh, self.batch_spec)


class DevicePrefetcher:
  """The next `depth` training batches, produced and put on the devices (in the batch
  sharding) by a background thread while the current step runs.

  The checkpoint records the iterator's position after the last batch handed out, not
  after the batches still waiting in the queue, so a resumed run starts with the first
  batch it did not train on. `position()` is that record, for Checkpointer.save.
  """

  def __init__(self, data, depth: int = 1, threaded: bool | None = None):
    self._iterator = data.train_iterator
    self._make_batch = data.next_train_batch
    self._state = self._iterator.get_state()
    self._queue = queue.Queue(maxsize=max(int(depth), 1))
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._produce, name="batch-prefetch", daemon=True)
    # Several processes: batches are made on the loop's thread (no read-ahead), until the
    # producer thread is shown safe there (tests/test_multihost.py).
    self.threaded = jax.process_count() == 1 if threaded is None else threaded
    if self.threaded:
      self._thread.start()

  def _produce(self):
    try:
      while not self._stop.is_set():
        self._put((self._make_batch(), self._iterator.get_state()))
    except BaseException as e:  # handed to the training loop, which raises it
      self._put((e, None))

  def _put(self, item):
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return
      except queue.Full:
        continue

  def next(self) -> dict:
    if not self.threaded:
      batch = self._make_batch()
      self._state = self._iterator.get_state()
      return batch
    batch, state = self._queue.get()
    if isinstance(batch, BaseException):
      raise batch
    self._state = state
    return batch

  def position(self) -> "IteratorPosition":
    return IteratorPosition(self._state)

  def close(self) -> None:
    self._stop.set()
    while self._thread.is_alive():
      try:
        self._queue.get(timeout=0.1)
      except queue.Empty:
        pass


class IteratorPosition:
  """A saved data-iterator state in the form Grain's checkpoint handler writes (get_state
  returning bytes), so it is stored exactly like the iterator itself would be."""

  def __init__(self, state):
    self.state = state

  def get_state(self) -> bytes:
    return self.state if isinstance(self.state, bytes) else json.dumps(self.state, indent=4).encode()


class _Head:
  """The first n records of a source."""

  def __init__(self, source, n):
    self.source, self.n = source, min(n, len(source))

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    if i >= self.n:
      raise IndexError(i)
    return self.source[i]
