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

from input_pipeline import build, builders, features, pipeline, tokenizers as tok_lib
from input_pipeline.builders import common
from ssacl_jax.models import ssacl


def _on_process_zero_then_sync(fn, name: str):
  if jax.process_index() == 0:
    result = fn()
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)
  return fn() if jax.process_index() != 0 else result


# config.data fields passed to the data set's builder when its config has them (MIMIC-CXR).
DATA_CHOICES = ("views", "report_sections")


def builder_options(config) -> dict:
  """The builder's config fields: config.data's DATA_CHOICES it has, then data.builder."""
  d = config.data
  fields = common.config_fields(builders.get_builder_class(d.dataset).BUILDER_CONFIGS[0])
  options = {k: tuple(d[k]) for k in DATA_CHOICES if k in fields and k in d}
  return dict(options, **dict(d.builder))


def load_source(config, split: str):
  d = config.data
  return load_dataset_split(d.dataset, d.data_dir, d.manual_dir, builder_options(config), split)


def load_dataset_split(dataset: str, data_dir: str, manual_dir: str, options: dict, split: str):
  """One split of `dataset`, built first when it is not (process 0, then a barrier)."""
  build_it = lambda: build.build_dataset(dataset, data_dir, manual_dir or None, **options)
  _on_process_zero_then_sync(build_it, f"build {dataset}")
  return build.load_split(dataset, data_dir, split, **options)


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
  if decoder_path.is_dir():  # a GPT-2 folder: its tokenizer files, not its weights
    (folder / "decoder").mkdir(exist_ok=True)
    for name in tok_lib.GPT2_FILES:
      if (decoder_path / name).is_file():
        shutil.copy(decoder_path / name, folder / "decoder" / name)
  else:
    shutil.copy(decoder_path, folder / f"decoder{decoder_path.suffix}")


def tokenizer_scope(config) -> str:
  """Tokenizers are trained per data set and builder config (its training reports)."""
  d = config.data
  name = build.make_builder(d.dataset, d.data_dir, **builder_options(config)).builder_config.name
  return f"{d.dataset}/{name}"


def decoder_tokenizer_source(config) -> str:
  """The report decoder's vocabulary follows its weights: the GPT-2 folder of
  config.init.gpt2, or the one the report decoder of config.init.checkpoint started from
  (its saved config.json: a converted GPT-2 or a run that started from GPT-2), or ''
  (a SentencePiece model trained on the training reports)."""
  init = config.get("init")
  if not init:
    return ""
  if init.gpt2:
    return str(init.gpt2)
  takes_decoder = "report_decoder" in (ssacl.parse_parts(init.parts) or ("report_decoder",))
  saved = pathlib.Path(str(init.checkpoint)) / "config.json"
  if not (init.checkpoint and takes_decoder and saved.is_file()):
    return ""
  return str(json.loads(saved.read_text()).get("init", {}).get("gpt2", ""))


def load_tokenizers(config, train_source=None, workdir=None) -> tok_lib.TokenizerPair:
  """(text, decoder) tokenizers.

  A workdir's own copies win (its checkpoints were trained with them). Otherwise the
  decoder's is the BPE of the GPT-2 folder its weights start from (config.init.gpt2) and
  the text encoder's is config.data.text_tokenizer (e.g. the release's WordPiece JSON);
  either, when not given, is a SentencePiece model trained once on the training reports
  beside the data. With a workdir, the tokenizers used are copied into it.
  """
  if workdir is not None and workdir_tokenizer_paths(workdir):
    text_path, decoder_path = workdir_tokenizer_paths(workdir)
    text, decoder = tok_lib.load_tokenizer(text_path), tok_lib.load_tokenizer(decoder_path)
    check_vocab(config, text, decoder, text_path, decoder_path)
    return tok_lib.TokenizerPair(text, decoder)
  d = config.data
  text_path, decoder_path = d.text_tokenizer, decoder_tokenizer_source(config)
  if not (text_path and decoder_path):
    train_source = train_source if train_source is not None else load_source(config, d.train_split)

    def reports():
      for i in range(len(train_source)):
        yield features.as_text(train_source[i]["report"])

    trained = _on_process_zero_then_sync(
        lambda: tok_lib.ensure_tokenizers(
            d.data_dir, tokenizer_scope(config), reports(),
            None if text_path else config.model.text.vocab_size,
            None if decoder_path else config.model.report.vocab_size), "tokenizers")
    text_path, decoder_path = text_path or trained[0], decoder_path or trained[1]
  text = tok_lib.load_tokenizer(text_path)
  decoder = tok_lib.load_tokenizer(decoder_path)
  check_vocab(config, text, decoder, text_path, decoder_path)
  if workdir is not None:
    keep_tokenizers_in_workdir(workdir, text_path, decoder_path)
  return tok_lib.TokenizerPair(text, decoder)


def embedding_table(config) -> tuple[int, str, dict]:
  """(rows, where the number comes from, GPT-2 config.json or {}) of the report
  decoder's token embedding table: its GPT-2 folder's when it starts from one (and the
  folder is still there: evaluating a workdir does not need it)."""
  gpt2 = decoder_tokenizer_source(config)
  path = pathlib.Path(gpt2) / "config.json"
  if not gpt2 or not path.is_file():
    return config.model.report.vocab_size, "config.model.report.vocab_size", {}
  hf = json.loads(path.read_text())
  return int(hf.get("vocab_size", 50257)), f"the GPT-2 weights (init.gpt2={path})", hf


def check_vocab(config, text, decoder, text_source, decoder_source) -> None:
  """Each tokenizer's ids must index its model's embedding table. A decoder that starts
  from GPT-2 weights needs exactly their vocabulary: same size, same special tokens."""
  m = config.model
  if text.vocab_size > m.text.vocab_size:
    raise ValueError(f"the text tokenizer ({text_source}) has {text.vocab_size} ids but "
                     f"config.model.text.vocab_size is {m.text.vocab_size}; raise the model's "
                     "vocab size")
  rows, table, hf = embedding_table(config)
  exact = bool(decoder_tokenizer_source(config))
  if decoder.vocab_size > rows or (exact and decoder.vocab_size != rows):
    raise ValueError(f"the report decoder's tokenizer ({decoder_source}) has "
                     f"{decoder.vocab_size} ids but its embedding table, from {table}, has "
                     f"{rows} rows; the vocabulary must be the one the weights were trained with")
  if hf and m.report.vocab_size != rows:
    raise ValueError(f"config.model.report.vocab_size is {m.report.vocab_size} but the "
                     f"report decoder's embedding table, from {table}, has {rows} rows; set "
                     f"--config.model.report.vocab_size={rows}")
  for name in ("bos", "eos"):
    want = hf.get(f"{name}_token_id")
    if want is not None and getattr(decoder, f"{name}_id") != want:
      raise ValueError(f"the report decoder's tokenizer ({decoder_source}) has {name} id "
                       f"{getattr(decoder, f'{name}_id')} but {table} says {name}_token_id "
                       f"{want}")


class TrainingData:
  """Training iterator (checkpointable), tokenizers and anatomy tokens."""

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


def first_records(source, n: int):
  """The first n records of a source (all of them when it has fewer)."""
  return _FirstRecords(source, n)


class _FirstRecords:

  def __init__(self, source, n):
    self.source, self.n = source, min(n, len(source))

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    if i >= self.n:
      raise IndexError(i)
    return self.source[i]


def eval_batches(source, local_batches, mesh, batch_sharding, model_keys, batch_size: int):
  """One ordered pass over `source`: (global model batch, this process's local batch).

  The one source of evaluation batches. local_batches(source, process_index,
  process_count, per_process_batch) is the task's evaluation pipeline
  (pipeline.make_eval_iterator, finetune_pipeline.make_eval_iterator); the model batch
  holds its `model_keys` on the mesh, the local batch keeps every field (`valid` marks
  real rows; texts and ids pass through).
  """
  for local in local_batches(source, jax.process_index(), jax.process_count(),
                             batch_size // jax.process_count()):
    yield pipeline.make_global_batch({k: local[k] for k in model_keys if k in local},
                                     mesh, batch_sharding.spec), local


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
    # producer thread is shown safe there (tests/test_train_multihost.py).
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
