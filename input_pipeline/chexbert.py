"""CheXbert (Smit et al., 2020) in JAX/Flax: the labeler the release scores clinical
efficacy with (SPEC section 5), run on the user's own weights.

Model: bert-base-uncased, then 13 four-way heads (classes 0 blank, 1 positive,
2 negative, 3 uncertain) and one two-way head for No Finding (0 blank, 1 positive), all
on the last layer's [CLS] state (the pooler is unused). Inference only, so no dropout.

Weights: the user's `chexbert.pth`, a torch file {'model_state_dict': ...} saved from an
nn.DataParallel model, so every name carries a 'module.' prefix
(module.bert.embeddings..., module.linear_heads.0.weight ... module.linear_heads.13.weight).
It is read with torch.load(weights_only=True); torch is only needed for that read
(pip install 'ssacl_jax[convert]'). The vocabulary is the user's bert-base-uncased
`vocab.txt`. Nothing is downloaded.

Preprocessing, as CheXbert's bert_tokenizer.py: strip, newlines to spaces, whitespace
collapsed (together: `clean_report`); uncased WordPiece (BertTokenizer's basic tokenizer:
lower-case, strip accents, split punctuation; then WordPiece); [CLS] ... [SEP] cut at 512
ids keeping the final [SEP]; an empty report becomes [CLS] [SEP].

Labelling: identical reports are labelled once; the rest are sorted by length and cut
into batches of `batch_size` rows, each padded to a length bucket (16, 24, 32, 48, ...:
short reports do not pay for 512 positions, and few shapes compile). The forward
pass is jitted with the batch sharded over the mesh and the weights replicated. Labels
come out like the rule labeler's (input_pipeline.labeler): int8 [n, 14] in
anatomy.PATHOLOGIES order, 1 positive, 0 negative, -1 uncertain, -2 not mentioned, which
is how CheXbert's label.py writes its CSV (blank NaN, uncertain -1, negative 0).
"""
from __future__ import annotations

import dataclasses
import functools
import pathlib
import re
from collections.abc import Iterable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from input_pipeline import features, tokenizers
from ssacl_jax import anatomy

NAME = "chexbert"
STATE_DICT = "model_state_dict"
DATA_PARALLEL_PREFIX = "module."
MAX_LEN = 512
MIN_BUCKET = 16
# BERT's attention heads are 64 wide (bert-base: 768 / 12); the weights do not say it.
HEAD_DIM = 64
LAYER_NORM_EPS = 1e-12

# CheXbert's head order (its constants.CONDITIONS); No Finding, last, is the 2-way head.
CONDITIONS: tuple[str, ...] = (
    "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices", "No Finding")
HEAD_CLASSES: tuple[int, ...] = (4,) * 13 + (2,)
NUM_LOGITS = sum(HEAD_CLASSES)
# CheXbert class (0 blank, 1 positive, 2 negative, 3 uncertain) -> the labels' schema.
CLASS_TO_LABEL = np.array([features.NOT_MENTIONED, features.POSITIVE, features.NEGATIVE,
                           features.UNCERTAIN], np.int8)
_COLUMNS = np.array([anatomy.PATHOLOGY_INDEX[c] for c in CONDITIONS])


class ChexbertError(ValueError):
  """The CheXbert checkpoint or vocabulary cannot be used; the message says why."""


# --------------------------------------------------------------------------- preprocessing

def clean_report(report: str) -> str:
  """Stripped, newlines as spaces, whitespace collapsed (pandas' \\s+ is str.split's)."""
  return " ".join(str(report).split())


def load_vocab(path: str | pathlib.Path) -> tokenizers.WordPieceTokenizer:
  """The bert-base-uncased WordPiece tokenizer of a local `vocab.txt`."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"CheXbert vocabulary {path} does not exist (pass the "
                            "bert-base-uncased vocab.txt)")
  try:
    return tokenizers.WordPieceTokenizer(path)
  except (ValueError, UnicodeDecodeError) as e:
    raise ChexbertError(f"CheXbert vocabulary {path}: {e}") from e


def token_ids(tok: tokenizers.WordPieceTokenizer, report: str,
              max_len: int = MAX_LEN) -> np.ndarray:
  """int32 ids of one report: [CLS] pieces [SEP], at most `max_len` (CheXbert's cut keeps
  the final [SEP]; the release's text encoder, `tokenizers.encode_text`, has none)."""
  pieces = list(tok.encode(clean_report(report)))[:max(max_len - 2, 0)]
  return np.asarray([tok.bos_id, *pieces, tok.eos_id], np.int32)


# --------------------------------------------------------------------------------- weights

@dataclasses.dataclass(frozen=True)
class Architecture:
  """Sizes of a CheXbert model, read off its weights."""
  vocab_size: int
  hidden: int
  layers: int
  mlp: int
  positions: int
  type_vocab: int

  @property
  def heads(self) -> int:
    return max(self.hidden // HEAD_DIM, 1)


def read_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """The float32 tensors of a `chexbert.pth`, names without DataParallel's 'module.'."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"CheXbert checkpoint {path} does not exist")
  try:
    import torch
  except ImportError as e:
    raise ChexbertError(f"reading the CheXbert checkpoint {path} needs torch: "
                        "pip install 'ssacl_jax[convert]'") from e
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises many kinds for a file that is not its own
    raise ChexbertError(f"{path} is not a torch checkpoint that loads with weights_only=True "
                        f"({type(e).__name__}: {e}); expected CheXbert's chexbert.pth") from e
  if not isinstance(obj, dict) or not isinstance(obj.get(STATE_DICT), dict):
    found = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
    raise ChexbertError(f"{path} holds no {STATE_DICT!r} (found {found}); expected "
                        f"CheXbert's chexbert.pth, a dict {{'{STATE_DICT}': ...}}")
  return {k.removeprefix(DATA_PARALLEL_PREFIX): v.detach().to(torch.float32).numpy()
          for k, v in obj[STATE_DICT].items() if isinstance(v, torch.Tensor)}


def _layer_names(i: int) -> dict[str, str]:
  """Our layer parameter -> the torch module of bert.encoder.layer.i."""
  layer = f"bert.encoder.layer.{i}"
  return {"query": f"{layer}.attention.self.query", "key": f"{layer}.attention.self.key",
          "value": f"{layer}.attention.self.value",
          "attention_out": f"{layer}.attention.output.dense",
          "attention_norm": f"{layer}.attention.output.LayerNorm",
          "intermediate": f"{layer}.intermediate.dense", "output": f"{layer}.output.dense",
          "output_norm": f"{layer}.output.LayerNorm"}


_EMBEDDINGS = {"word_embeddings": "bert.embeddings.word_embeddings",
               "position_embeddings": "bert.embeddings.position_embeddings",
               "token_type_embeddings": "bert.embeddings.token_type_embeddings"}
_EMBEDDING_NORM = "bert.embeddings.LayerNorm"


def required_names(num_layers: int) -> list[str]:
  """Every tensor name the labeler reads (without the 'module.' prefix)."""
  modules = [_EMBEDDING_NORM] + [m for i in range(num_layers) for m in _layer_names(i).values()]
  heads = [f"linear_heads.{h}" for h in range(len(HEAD_CLASSES))]
  return ([f"{e}.weight" for e in _EMBEDDINGS.values()] +
          [f"{m}.{p}" for m in modules + heads for p in ("weight", "bias")])


def _num_layers(state: dict) -> int:
  found = [int(m.group(1)) for k in state
           if (m := re.match(r"bert\.encoder\.layer\.(\d+)\.", k))]
  return max(found) + 1 if found else 1


def architecture(state: dict[str, np.ndarray], source: str = "checkpoint") -> Architecture:
  """Sizes from the weights; a missing tensor or a wrongly shaped head is named."""
  layers = _num_layers(state)
  missing = [n for n in required_names(layers) if n not in state]
  if missing:
    shown = ", ".join(DATA_PARALLEL_PREFIX + n for n in missing[:20])
    more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
    raise ChexbertError(f"{source} is missing {len(missing)} CheXbert tensor(s): "
                        f"{shown}{more}")
  words = state["bert.embeddings.word_embeddings.weight"]
  for h, classes in enumerate(HEAD_CLASSES):
    shape = state[f"linear_heads.{h}.weight"].shape
    if shape != (classes, words.shape[1]):
      raise ChexbertError(f"{source}: linear_heads.{h}.weight is {list(shape)}, expected "
                          f"[{classes}, {words.shape[1]}] (CheXbert: heads 0-12 four-way, "
                          "head 13 two-way)")
  return Architecture(
      vocab_size=words.shape[0], hidden=words.shape[1], layers=layers,
      mlp=state["bert.encoder.layer.0.intermediate.dense.weight"].shape[0],
      positions=state["bert.embeddings.position_embeddings.weight"].shape[0],
      type_vocab=state["bert.embeddings.token_type_embeddings.weight"].shape[0])


def _dense(state, name: str) -> dict:
  return {"kernel": state[f"{name}.weight"].T, "bias": state[f"{name}.bias"]}


def _norm(state, name: str) -> dict:
  return {"scale": state[f"{name}.weight"], "bias": state[f"{name}.bias"]}


def params_from_state_dict(state: dict[str, np.ndarray], arch: Architecture) -> dict:
  """Torch names and layouts -> the Flax tree of `Chexbert` (layers stacked for scan)."""
  per_layer = []
  for i in range(arch.layers):
    names = _layer_names(i)
    per_layer.append({ours: (_norm if ours.endswith("_norm") else _dense)(state, theirs)
                      for ours, theirs in names.items()})
  heads = [_dense(state, f"linear_heads.{h}") for h in range(len(HEAD_CLASSES))]
  tree = {ours: {"embedding": state[f"{theirs}.weight"]} for ours, theirs in _EMBEDDINGS.items()}
  tree["embedding_norm"] = _norm(state, _EMBEDDING_NORM)
  tree["layers"] = jax.tree.map(lambda *xs: np.stack(xs), *per_layer)
  tree["heads"] = {"kernel": np.concatenate([h["kernel"] for h in heads], axis=1),
                   "bias": np.concatenate([h["bias"] for h in heads])}
  return tree


# ----------------------------------------------------------------------------------- model

_HIGHEST = jax.lax.Precision.HIGHEST  # float32 throughout, as CheXbert ran in torch


class _Layer(nn.Module):
  """A Hugging Face BertLayer: post-norm attention and GELU (erf) feed-forward."""
  heads: int
  mlp: int

  @nn.compact
  def __call__(self, x, bias):
    b, length, width = x.shape
    dense = functools.partial(nn.Dense, precision=_HIGHEST)
    split = lambda y: y.reshape(b, length, self.heads, width // self.heads)
    q, k, v = (split(dense(width, name=n)(x)) for n in ("query", "key", "value"))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=_HIGHEST)
    weights = jax.nn.softmax(scores / np.sqrt(width // self.heads) + bias, axis=-1)
    att = jnp.einsum("bhqk,bkhd->bqhd", weights, v, precision=_HIGHEST)
    att = dense(width, name="attention_out")(att.reshape(b, length, width))
    x = nn.LayerNorm(LAYER_NORM_EPS, name="attention_norm")(x + att)
    h = nn.gelu(dense(self.mlp, name="intermediate")(x), approximate=False)
    return nn.LayerNorm(LAYER_NORM_EPS, name="output_norm")(x + dense(width, name="output")(h)), None


class Chexbert(nn.Module):
  """ids, mask [B, L] -> the 14 heads' logits concatenated, float32 [B, NUM_LOGITS]."""
  arch: Architecture

  @nn.compact
  def __call__(self, ids, mask):
    a = self.arch
    positions = jnp.arange(ids.shape[1])
    x = (nn.Embed(a.vocab_size, a.hidden, name="word_embeddings")(ids)
         + nn.Embed(a.positions, a.hidden, name="position_embeddings")(positions)[None]
         + nn.Embed(a.type_vocab, a.hidden, name="token_type_embeddings")(jnp.zeros_like(ids)))
    x = nn.LayerNorm(LAYER_NORM_EPS, name="embedding_norm")(x)
    bias = jnp.where(mask[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min)
    layers = nn.scan(_Layer, variable_axes={"params": 0}, split_rngs={"params": True},
                     in_axes=nn.broadcast, length=a.layers)
    x, _ = layers(a.heads, a.mlp, name="layers")(x, bias)
    return nn.Dense(NUM_LOGITS, precision=_HIGHEST, name="heads")(x[:, 0])


def classes_from_logits(logits: np.ndarray) -> np.ndarray:
  """[n, NUM_LOGITS] -> CheXbert classes int8 [n, 14] in CONDITIONS order (argmax per head)."""
  bounds = np.cumsum((0,) + HEAD_CLASSES)
  return np.stack([np.argmax(logits[:, lo:hi], axis=1)
                   for lo, hi in zip(bounds[:-1], bounds[1:])], axis=1).astype(np.int8)


def labels_from_classes(classes: np.ndarray) -> np.ndarray:
  """CheXbert classes [n, 14] -> labels int8 [n, 14] in anatomy.PATHOLOGIES order."""
  out = np.empty_like(classes)
  out[:, _COLUMNS] = CLASS_TO_LABEL[classes]
  return out


# -------------------------------------------------------------------------------- labeling

def bucket_length(n: int, max_len: int) -> int:
  """The padded length of a batch whose longest report has n ids: the next of 16, 24, 32,
  48, 64, 96, ... (powers of two and the midpoints: at most a third is padding, and at
  most 11 shapes compile up to 512), capped at max_len."""
  bucket = MIN_BUCKET
  while bucket < n:
    bucket = bucket * 3 // 2 if bucket & (bucket - 1) == 0 else bucket * 4 // 3
  return min(bucket, max_len)


def default_batch_sharding() -> NamedSharding:
  """The batch split over every device (the CLI's mesh; evaluation passes its own)."""
  mesh = jax.make_mesh((jax.device_count(),), ("batch",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  return NamedSharding(mesh, P("batch"))


def _batch_shards(sharding: NamedSharding) -> int:
  axes = sharding.spec[0] if len(sharding.spec) else None
  axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
  return int(np.prod([sharding.mesh.shape[a] for a in axes]))


def _put(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global array from a value every process holds (works on one host or many)."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


@functools.cache
def _jitted_forward(arch: Architecture, batch: NamedSharding):
  """One jitted forward per architecture and mesh, so every labeler reuses its compiles."""
  model = Chexbert(arch)
  replicated = NamedSharding(batch.mesh, P())
  return jax.jit(lambda params, ids, mask: model.apply({"params": params}, ids, mask),
                 in_shardings=(replicated, batch, batch), out_shardings=replicated)


class ChexbertLabeler:
  """CheXbert over Flax params and a WordPiece tokenizer; `from_files` reads the user's."""

  name = NAME

  def __init__(self, params: dict, arch: Architecture, tok: tokenizers.WordPieceTokenizer, *,
               batch_size: int = 64, batch_sharding: NamedSharding | None = None):
    if tok.vocab_size != arch.vocab_size:
      raise ChexbertError(
          f"the vocabulary {tok.path} has {tok.vocab_size} tokens but the checkpoint's word "
          f"embedding has {arch.vocab_size} rows: pass the vocab.txt the CheXbert "
          "checkpoint was trained with (bert-base-uncased: 30522)")
    self.arch, self.tok = arch, tok
    self.max_len = min(MAX_LEN, arch.positions)
    sharding = batch_sharding or default_batch_sharding()
    shards = _batch_shards(sharding)
    self.batch_size = -(-max(batch_size, 1) // shards) * shards
    self._batch = NamedSharding(sharding.mesh, P(*sharding.spec[:1]))
    replicated = NamedSharding(sharding.mesh, P())
    self._params = jax.tree.map(lambda x: _put(np.asarray(x, np.float32), replicated), params)
    self._forward = _jitted_forward(arch, self._batch)

  @classmethod
  def from_files(cls, checkpoint: str | pathlib.Path, vocab: str | pathlib.Path,
                 **kwargs) -> ChexbertLabeler:
    """The user's chexbert.pth and bert-base-uncased vocab.txt."""
    tok = load_vocab(vocab)
    state = read_state_dict(checkpoint)
    arch = architecture(state, str(checkpoint))
    return cls(params_from_state_dict(state, arch), arch, tok, **kwargs)

  def _logits_of_ids(self, rows: Sequence[np.ndarray]) -> np.ndarray:
    """[n, NUM_LOGITS] for rows of ids, batched by length (rows keep their order)."""
    order = np.argsort([len(r) for r in rows], kind="stable")
    out = np.zeros((len(rows), NUM_LOGITS), np.float32)
    empty = token_ids(self.tok, "")
    for start in range(0, len(rows), self.batch_size):
      chosen = order[start:start + self.batch_size]
      length = bucket_length(max(len(rows[i]) for i in chosen), self.max_len)
      ids = np.zeros((self.batch_size, length), np.int32)
      mask = np.zeros_like(ids)
      for j in range(self.batch_size):  # spare rows hold an empty report
        row = rows[chosen[j]] if j < len(chosen) else empty
        ids[j, :len(row)], mask[j, :len(row)] = row, 1
      logits = self._forward(self._params, _put(ids, self._batch), _put(mask, self._batch))
      out[chosen] = np.asarray(logits.addressable_data(0))[:len(chosen)]
    return out

  def logits(self, reports: Iterable[str]) -> np.ndarray:
    """float32 [n, NUM_LOGITS]: the heads' logits, concatenated in CONDITIONS order."""
    cleaned = [clean_report(r) for r in reports]
    if not cleaned:
      return np.zeros((0, NUM_LOGITS), np.float32)
    unique, inverse = np.unique(np.asarray(cleaned, object), return_inverse=True)
    return self._logits_of_ids([token_ids(self.tok, r) for r in unique])[inverse.reshape(-1)]

  def label_many(self, reports: Iterable[str]) -> np.ndarray:
    """int8 [n, 14] in anatomy.PATHOLOGIES order: 1, 0, -1, or -2 (not mentioned)."""
    return labels_from_classes(classes_from_logits(self.logits(reports)))

  def label(self, report: str) -> np.ndarray:
    """int8 [14], as label_many."""
    return self.label_many([report])[0]
