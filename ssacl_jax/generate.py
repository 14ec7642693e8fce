"""Batched incremental decoding with a KV cache: greedy, beam search, nucleus sampling.

SPEC 5: beam search, 3 beams, at most 100 new tokens, at least 80, repetition penalty 2.0,
length penalty 2.0, stop at the newline. The release calls Hugging Face `generate` with
`inputs_embeds`; this module reproduces that decoding (BeamSearchScorer of transformers
4.36-4.4x) in one compiled program per shape: a prefill call writes the prefix (and an
optional prompt) into the cache, then a `lax.while_loop` picks one token per step and
feeds it back, stopping early once every sequence is finished.

The core is independent of SS-ACL. A `LanguageModel` bundles four pure functions and
the caches' slot axis:
  decode_fn(embeds [R, L, W], key_valid [R, S], caches, cache_index, positions [R, L]) ->
      (hidden [R, L, W], caches): writes the L inputs at cache slots cache_index.. and
      attends causally to the cache slots marked in key_valid (S = cache size); positions
      are the inputs' positions in the sequence the model was trained on;
  logits_fn(hidden [R, L, W]) -> logits [R, L, V] float32;
  embed_fn(ids [R, L]) -> embeds [R, L, W];
  init_cache_fn(rows, size) -> zero caches (a pytree whose leaves have rows on axis 0 and
      the `size` cache slots on axis `slot_axis`).

Cache layout, [prefix P | prompt Lp | generated T]: key_valid is the prefix mask (for
SS-ACL: leaf queries visible per sample, CLS hidden, patches visible), then the prompt mask
(right-padded), then each generated slot as soon as it is written. The first token comes
from the logits at the last real prompt position (the last prefix position without a
prompt), and generated token t of a row sits at position P + len(prompt) + t, as in
training, whatever the padding of the prompt block: batched rows with prompts of
different lengths decode exactly as they would alone. Only the last prompt position is
mapped to the vocabulary in the prefill. Beam search keeps one copy of the cache per beam
and, when beams are reordered, moves only the generated slots (the prefix and prompt
slots are the same for all of a sample's beams).

Hugging Face semantics reproduced (with `inputs_embeds`, HF's `input_ids` hold only the
generated tokens, and `decoder_prompt_len` is 0):
  * processors: repetition penalty over the tokens generated so far (HF rule: a score s of
    a seen token becomes s * p if s < 0 else s / p; the prompt is not penalised unless
    `penalize_prompt`), then the EOS score is -inf while fewer than `min_new_tokens` tokens
    have been generated. Greedy and sampling apply them to the logits; beam search, like
    HF, applies them to the log-softmax scores (which are not renormalised afterwards).
  * sampling: processors, then temperature, top-k (0 = off; HF's default would be 50) and
    top-p (HF's TopPLogitsWarper, keeping at least one token), then a categorical draw.
  * beam search: `num_beams` running beams; each step takes the top 2 * num_beams
    (beam, token) candidates by accumulated score; EOS candidates ranked below num_beams
    become finished hypotheses scored sum_logprobs / generated_len ** length_penalty,
    where generated_len counts the generated tokens *including* the EOS (HF's
    `cur_len - decoder_prompt_len` with cur_len = len(input_ids) + 1; transformers before
    4.36 used len(input_ids), i.e. without the EOS); the first num_beams non-EOS
    candidates are the new beams. A sample keeps the num_beams best finished hypotheses
    and is done (early_stopping=False) once it holds num_beams of them and the worst
    is >= best candidate score / cur_len ** length_penalty (HF's heuristic: it uses the
    current length, so with a positive length penalty it may stop before a longer beam
    could have won). At max_new_tokens, samples not done add their running beams, scored
    sum_logprobs / max_new_tokens ** length_penalty, and the best hypothesis is returned.
    Exact score ties are broken in favour of earlier hypotheses.

Outputs (`Generation`): tokens int32 [B, T] (T = max_new_tokens) with the EOS at
position `lengths[b]` when the sequence finished and pad after it; lengths int32 [B] =
tokens before the EOS (T when unfinished); scores float32 [B]: beam search, the
length-penalised score of the returned hypothesis; greedy and sampling, the sum of the
model's unprocessed log-probabilities of the generated tokens (EOS included).
"""
from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ssacl_jax import layers

METHODS = ("beam", "greedy", "nucleus")

# Traces of the jitted SS-ACL generation, by method: a counter that only grows when jit
# retraces (tests use it to check one compilation per shape).
TRACES: collections.Counter = collections.Counter()

_BEAM_INIT_OFFSET = -1e9  # HF: beams 1.. start at -1e9 so the first step expands beam 0 only


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
  """Decoding settings (defaults: SPEC 5 and GPT-2 ids: newline 198, <|endoftext|> pad)."""
  method: str = "beam"
  num_beams: int = 3
  max_new_tokens: int = 100
  min_new_tokens: int = 80
  repetition_penalty: float = 2.0
  length_penalty: float = 2.0
  top_p: float = 0.9
  top_k: int = 0
  temperature: float = 1.0
  eos_id: int = 198
  pad_id: int = 50256
  penalize_prompt: bool = False
  # On a mesh: gather the decoder's weights (in the compute dtype) once, before the decoding
  # loop, instead of all-gathering the fsdp shards at every step (bench/RESULTS.md).
  gather_decoder_weights: bool = True

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f"unknown decoding method {self.method!r}; use one of {METHODS}")
    if self.num_beams < 1 or self.max_new_tokens < 1:
      raise ValueError("num_beams and max_new_tokens must be >= 1")
    if self.repetition_penalty <= 0 or self.temperature <= 0 or not 0 < self.top_p <= 1:
      raise ValueError("need repetition_penalty > 0, temperature > 0, 0 < top_p <= 1")


def decode_config(config: Any = None, **overrides) -> DecodeConfig:
  """A DecodeConfig from a DecodeConfig, mapping or ConfigDict (unknown keys rejected)."""
  if config is None:
    values = {}
  elif isinstance(config, DecodeConfig):
    values = dataclasses.asdict(config)
  elif isinstance(config, Mapping):
    values = dict(config)
  else:  # ml_collections.ConfigDict
    values = dict(config.to_dict() if hasattr(config, "to_dict") else vars(config))
  values.update(overrides)
  fields = {f.name: f.type for f in dataclasses.fields(DecodeConfig)}
  unknown = sorted(set(values) - set(fields))
  if unknown:
    raise KeyError(f"unknown decoding settings {unknown}; valid: {sorted(fields)}")
  return DecodeConfig(**values)


class LanguageModel(NamedTuple):
  decode_fn: Callable
  logits_fn: Callable
  embed_fn: Callable
  init_cache_fn: Callable
  slot_axis: int


class Generation(NamedTuple):
  tokens: jax.Array   # int32 [B, T]
  lengths: jax.Array  # int32 [B]
  scores: jax.Array   # float32 [B]


# -- logits processors (HF rules) ------------------------------------------------------------

def apply_repetition_penalty(scores, seen, penalty: float):
  """HF RepetitionPenaltyLogitsProcessor: seen tokens' s -> s * p if s < 0 else s / p."""
  if penalty == 1.0:
    return scores
  penalised = jnp.where(scores < 0, scores * penalty, scores / penalty)
  return jnp.where(seen, penalised, scores)


def apply_min_length(scores, num_generated, min_new_tokens: int, eos_id: int):
  """EOS score -inf while fewer than min_new_tokens tokens have been generated."""
  if min_new_tokens <= 0:
    return scores
  blocked = num_generated < min_new_tokens
  return scores.at[:, eos_id].set(jnp.where(blocked, -jnp.inf, scores[:, eos_id]))


def process(scores, seen, num_generated, cfg: DecodeConfig):
  scores = apply_repetition_penalty(scores, seen, cfg.repetition_penalty)
  return apply_min_length(scores, num_generated, cfg.min_new_tokens, cfg.eos_id)


def top_k_filter(logits, k: int):
  """HF TopKLogitsWarper: keep scores >= the k-th largest (k <= 0: no filtering)."""
  if k <= 0 or k >= logits.shape[-1]:
    return logits
  kth = jax.lax.top_k(logits, k)[0][..., -1:]
  return jnp.where(logits < kth, -jnp.inf, logits)


def top_p_filter(logits, top_p: float):
  """HF TopPLogitsWarper: drop the low tail holding at most 1 - top_p of the probability.

  Sorted ascending, a token goes when the cumulative probability up to it is <= 1 - top_p;
  the most likely token always stays.
  """
  if top_p >= 1.0:
    return logits
  order = jnp.argsort(logits, axis=-1)
  sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
  cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
  remove_sorted = (cum <= 1.0 - top_p).at[..., -1].set(False)
  rows = jnp.arange(logits.shape[0])[:, None]
  remove = jnp.zeros_like(remove_sorted).at[rows, order].set(remove_sorted)
  return jnp.where(remove, -jnp.inf, logits)


# -- cache prefill and one decoding step -----------------------------------------------------

class Prefilled(NamedTuple):
  logits: jax.Array      # float32 [B, V]: scores the first generated token
  caches: Any
  base_valid: jax.Array  # bool [B, S]: prefix + prompt validity, generated slots False
  start: int             # cache slot of the first generated token (P + Lp)
  seen: jax.Array        # bool [B, V]: tokens that count as already present
  position: jax.Array    # int32 [B]: position of the first generated token (P + len(prompt))


def prefill(lm: LanguageModel, prefix, prefix_valid, cfg: DecodeConfig, prompt_ids=None,
            prompt_mask=None) -> Prefilled:
  """Writes [prefix | prompt] into a cache of P + Lp + T slots in one decoder call."""
  b, p = prefix.shape[:2]
  valid = prefix_valid.astype(bool)
  last = jnp.full((b,), p - 1, jnp.int32)
  embeds = prefix
  if prompt_ids is not None:
    if prompt_mask is None:
      prompt_mask = jnp.ones(prompt_ids.shape, jnp.int32)
    prompt = lm.embed_fn(prompt_ids)
    embeds = jnp.concatenate([prefix.astype(prompt.dtype), prompt], axis=1)
    valid = jnp.concatenate([valid, prompt_mask.astype(bool)], axis=1)
    last = last + jnp.sum(prompt_mask.astype(jnp.int32), axis=1)
  start = embeds.shape[1]
  base_valid = jnp.concatenate([valid, jnp.zeros((b, cfg.max_new_tokens), bool)], axis=1)
  caches = lm.init_cache_fn(b, start + cfg.max_new_tokens)
  positions = jnp.broadcast_to(jnp.arange(start, dtype=jnp.int32), (b, start))
  hidden, caches = lm.decode_fn(embeds, base_valid.astype(jnp.int32), caches,
                                jnp.asarray(0, jnp.int32), positions)
  first = lm.logits_fn(jnp.take_along_axis(hidden, last[:, None, None], axis=1))[:, 0]
  seen = jnp.zeros(first.shape, bool)
  if cfg.penalize_prompt and prompt_ids is not None:
    rows = jnp.broadcast_to(jnp.arange(b)[:, None], prompt_ids.shape)
    seen = seen.at[rows, prompt_ids].max(prompt_mask.astype(bool))
  return Prefilled(first.astype(jnp.float32), caches, base_valid, start, seen, last + 1)


def feed(lm: LanguageModel, tokens, caches, base_valid, start: int, step, position):
  """Writes tokens [R] at slot start + step, position [R] + step; returns (logits [R, V]
  for the next token, caches)."""
  slots = jnp.arange(base_valid.shape[1])
  written = (slots >= start) & (slots <= start + step)
  valid = (base_valid | written[None]).astype(jnp.int32)
  hidden, caches = lm.decode_fn(lm.embed_fn(tokens[:, None]), valid, caches,
                                jnp.asarray(start + step, jnp.int32), (position + step)[:, None])
  return lm.logits_fn(hidden)[:, 0].astype(jnp.float32), caches


def _mark_seen(seen, tokens):
  return seen.at[jnp.arange(seen.shape[0]), tokens].set(True)


# -- greedy and sampling -----------------------------------------------------------------------

def _sequential(lm, prefix, prefix_valid, cfg, prompt_ids, prompt_mask, choose) -> Generation:
  """One token per row per step; `choose(processed logits [B, V], step) -> ids [B]`."""
  pre = prefill(lm, prefix, prefix_valid, cfg, prompt_ids, prompt_mask)
  b, t_max = prefix.shape[0], cfg.max_new_tokens
  init = dict(
      step=jnp.asarray(0, jnp.int32), logits=pre.logits, caches=pre.caches, seen=pre.seen,
      tokens=jnp.full((b, t_max), cfg.pad_id, jnp.int32),
      lengths=jnp.full((b,), t_max, jnp.int32),
      scores=jnp.zeros((b,), jnp.float32), done=jnp.zeros((b,), bool))

  def cond(s):
    return (s["step"] < t_max) & ~jnp.all(s["done"])

  def body(s):
    step, done = s["step"], s["done"]
    token = choose(process(s["logits"], s["seen"], step, cfg), step).astype(jnp.int32)
    logp = jnp.take_along_axis(jax.nn.log_softmax(s["logits"]), token[:, None], axis=1)[:, 0]
    token = jnp.where(done, cfg.pad_id, token)
    ended = ~done & (token == cfg.eos_id)
    logits, caches = feed(lm, token, s["caches"], pre.base_valid, pre.start, step,
                          pre.position)
    return dict(
        step=step + 1, logits=logits, caches=caches, seen=_mark_seen(s["seen"], token),
        tokens=s["tokens"].at[:, step].set(token),
        lengths=jnp.where(ended, step, s["lengths"]),
        scores=s["scores"] + jnp.where(done, 0.0, logp), done=done | ended)

  out = jax.lax.while_loop(cond, body, init)
  return Generation(out["tokens"], out["lengths"], out["scores"])


def greedy(lm: LanguageModel, prefix, prefix_valid, cfg: DecodeConfig, prompt_ids=None,
           prompt_mask=None) -> Generation:
  """Argmax of the processed logits at every step (HF greedy search)."""
  return _sequential(lm, prefix, prefix_valid, cfg, prompt_ids, prompt_mask,
                     lambda logits, step: jnp.argmax(logits, axis=-1))


def nucleus_sample(rng, lm: LanguageModel, prefix, prefix_valid, cfg: DecodeConfig,
                   prompt_ids=None, prompt_mask=None) -> Generation:
  """HF sampling: processors, temperature, top-k, top-p; step t draws with fold_in(rng, t)."""
  def choose(logits, step):
    logits = top_p_filter(top_k_filter(logits / cfg.temperature, cfg.top_k), cfg.top_p)
    return jax.random.categorical(jax.random.fold_in(rng, step), logits, axis=-1)

  return _sequential(lm, prefix, prefix_valid, cfg, prompt_ids, prompt_mask, choose)


# -- beam search ---------------------------------------------------------------------------------

def _top_k(x, k: int):
  """jax.lax.top_k over the last axis as k passes of (max, first index holding it).

  The same values, indices and tie order (the lower index first) as jax.lax.top_k, which
  XLA:CPU lowers to a full sort of each row: for beam search's [B, num_beams * V] candidate
  scores that sort was over half of the decoding time at the paper's sizes
  (bench/RESULTS.md). k is small (2 * num_beams), so k linear passes are far cheaper.
  """
  positions = jnp.arange(x.shape[-1])
  taken = jnp.zeros(x.shape, bool)
  values, indices = [], []
  for _ in range(k):
    masked = jnp.where(taken, -jnp.inf, x)
    best = jnp.max(masked, axis=-1)
    index = jnp.argmax(~taken & (masked == best[..., None]), axis=-1).astype(jnp.int32)
    taken = taken | (positions == index[..., None])
    values.append(best)
    indices.append(index)
  return jnp.stack(values, axis=-1), jnp.stack(indices, axis=-1)


def _keep_best(scores, tokens, lengths, new_scores, new_tokens, new_lengths, k: int):
  """Top k of (kept + new) hypotheses by score; ties keep the earlier (kept first)."""
  all_scores = jnp.concatenate([scores, new_scores], axis=1)
  best, idx = jax.lax.top_k(all_scores, k)
  all_tokens = jnp.concatenate([tokens, new_tokens], axis=1)
  all_lengths = jnp.concatenate([lengths, new_lengths], axis=1)
  return (best, jnp.take_along_axis(all_tokens, idx[:, :, None], axis=1),
          jnp.take_along_axis(all_lengths, idx, axis=1))


def _pick_beams(x, beam):
  """x [b * k, ...] (rows b*k + beam) <- each sample's rows `beam` [b, k] of the same sample.

  Gathering within a sample (not by global row) keeps rows on their batch shard: a global
  row gather made XLA all-gather the KV cache on every chip (bench/RESULTS.md, AOT).
  """
  b, k = beam.shape
  grouped = x.reshape(b, k, *x.shape[1:])
  idx = beam.reshape(b, k, *([1] * (x.ndim - 1)))
  return jnp.take_along_axis(grouped, idx, axis=1).reshape(x.shape)


def _reorder_generated(cache, beam, start: int, slot_axis: int):
  """cache rows <- the chosen beams' rows, for the generated slots (start..) only: the
  prefix and prompt slots are equal across a sample's beams, and copying them every step
  was a third of beam search's time at the paper's sizes (bench/RESULTS.md)."""
  generated = jax.lax.slice_in_dim(cache, start, cache.shape[slot_axis], axis=slot_axis)
  return jax.lax.dynamic_update_slice_in_dim(cache, _pick_beams(generated, beam), start,
                                             axis=slot_axis)


def _length_norm(length, length_penalty: float):
  return jnp.asarray(length, jnp.float32) ** length_penalty


def beam_search(lm: LanguageModel, prefix, prefix_valid, cfg: DecodeConfig, prompt_ids=None,
                prompt_mask=None) -> Generation:
  """HF beam search (BeamSearchScorer, early_stopping=False); see the module docstring."""
  pre = prefill(lm, prefix, prefix_valid, cfg, prompt_ids, prompt_mask)
  b, k, t_max = prefix.shape[0], cfg.num_beams, cfg.max_new_tokens
  vocab = pre.logits.shape[-1]
  if vocab < 2:
    raise ValueError("beam search needs a vocabulary of at least 2 tokens")
  expand = lambda x: jnp.repeat(x, k, axis=0)  # noqa: E731  rows b*k + beam
  base_valid = expand(pre.base_valid)  # identical across a sample's beams: never reordered
  position = expand(pre.position)
  first_scores = jnp.full((k,), _BEAM_INIT_OFFSET, jnp.float32).at[0].set(0.0)
  init = dict(
      step=jnp.asarray(0, jnp.int32), logits=expand(pre.logits),
      caches=jax.tree.map(expand, pre.caches), seen=expand(pre.seen),
      seqs=jnp.full((b, k, t_max), cfg.pad_id, jnp.int32),
      beam_scores=jnp.broadcast_to(first_scores, (b, k)),
      fin_scores=jnp.full((b, k), -jnp.inf, jnp.float32),
      fin_tokens=jnp.full((b, k, t_max), cfg.pad_id, jnp.int32),
      fin_lengths=jnp.zeros((b, k), jnp.int32), done=jnp.zeros((b,), bool))

  def cond(s):
    return (s["step"] < t_max) & ~jnp.all(s["done"])

  def body(s):
    step, done, seqs = s["step"], s["done"], s["seqs"]
    logp = process(jax.nn.log_softmax(s["logits"]), s["seen"], step, cfg)
    total = logp.reshape(b, k, vocab) + s["beam_scores"][:, :, None]
    cand_scores, cand = _top_k(total.reshape(b, k * vocab), 2 * k)
    cand_beam, cand_token = cand // vocab, cand % vocab
    is_eos = cand_token == cfg.eos_id
    cur_len = step + 1

    # EOS among the top num_beams candidates: finished hypotheses (HF's rank rule).
    head = slice(0, k)
    add = (is_eos[:, head] & ~done[:, None] & jnp.isfinite(cand_scores[:, head]))
    new_scores = jnp.where(add, cand_scores[:, head] / _length_norm(cur_len, cfg.length_penalty),
                           -jnp.inf)
    new_tokens = jnp.take_along_axis(seqs, cand_beam[:, head, None], axis=1)
    new_tokens = new_tokens.at[:, :, step].set(cfg.eos_id)
    fin = _keep_best(s["fin_scores"], s["fin_tokens"], s["fin_lengths"], new_scores,
                     new_tokens, jnp.full((b, k), step, jnp.int32), k)

    # The first num_beams non-EOS candidates, in rank order, are the new beams.
    rank = jnp.arange(2 * k)
    pick = jnp.argsort(jnp.where(is_eos, rank + 2 * k, rank), axis=1)[:, :k]
    beam = jnp.take_along_axis(cand_beam, pick, axis=1)
    token = jnp.take_along_axis(cand_token, pick, axis=1)
    beam_scores = jnp.take_along_axis(cand_scores, pick, axis=1)
    seqs = jnp.take_along_axis(seqs, beam[:, :, None], axis=1).at[:, :, step].set(token)
    caches = jax.tree.map(
        lambda c: _reorder_generated(c, beam, pre.start, lm.slot_axis), s["caches"])
    seen = _mark_seen(_pick_beams(s["seen"], beam), token.reshape(-1))

    # HF is_done (early_stopping=False): num_beams finished and none can be beaten.
    full = jnp.sum(jnp.isfinite(fin[0]), axis=1) >= k
    best_possible = cand_scores[:, 0] / _length_norm(cur_len, cfg.length_penalty)
    done = done | (full & (jnp.min(fin[0], axis=1) >= best_possible))

    logits, caches = feed(lm, token.reshape(-1), caches, base_valid, pre.start, step,
                          position)
    return dict(step=step + 1, logits=logits, caches=caches, seen=seen, seqs=seqs,
                beam_scores=beam_scores, fin_scores=fin[0], fin_tokens=fin[1],
                fin_lengths=fin[2], done=done)

  s = jax.lax.while_loop(cond, body, init)
  # Samples not done by max_new_tokens add their running beams (HF finalize).
  add = ~s["done"][:, None] & jnp.isfinite(s["beam_scores"])
  open_scores = jnp.where(add, s["beam_scores"] / _length_norm(t_max, cfg.length_penalty),
                          -jnp.inf)
  scores, tokens, lengths = _keep_best(
      s["fin_scores"], s["fin_tokens"], s["fin_lengths"], open_scores, s["seqs"],
      jnp.full((b, k), t_max, jnp.int32), k)
  return Generation(tokens[:, 0], lengths[:, 0], scores[:, 0])


def run(lm: LanguageModel, prefix, prefix_valid, cfg: DecodeConfig, prompt_ids=None,
        prompt_mask=None, rng=None) -> Generation:
  """Dispatches on cfg.method (traceable; jit it with cfg static)."""
  if cfg.method == "beam":
    return beam_search(lm, prefix, prefix_valid, cfg, prompt_ids, prompt_mask)
  if cfg.method == "greedy":
    return greedy(lm, prefix, prefix_valid, cfg, prompt_ids, prompt_mask)
  if rng is None:
    raise ValueError("nucleus sampling needs rng")
  return nucleus_sample(rng, lm, prefix, prefix_valid, cfg, prompt_ids, prompt_mask)


# -- SS-ACL ----------------------------------------------------------------------------------------

def decoding_layout(model, variables):
  """(model, variables) to decode with: a model with scanned layers decodes through its
  unrolled twin (the KV cache is per block), its parameters unstacked once per call."""
  if not model.config.scan_layers:
    return model, variables
  config = model.config.as_configdict()
  config.scan_layers = False
  return (model.clone(config=ml_collections.FrozenConfigDict(config)),
          layers.unstack_layers(variables))


def ssacl_language_model(model, variables) -> LanguageModel:
  """The SS-ACL report decoder as a LanguageModel (its `decode` method with the KV cache)."""
  model, variables = decoding_layout(model, variables)

  def decode_fn(embeds, key_valid, caches, cache_index, positions):
    return model.apply(variables, embeds, key_valid, caches, cache_index, positions,
                       method=model.decode)

  def logits_fn(hidden):
    return model.apply(variables, hidden, method=model.decoder_logits)

  def embed_fn(ids):
    return model.apply(variables, ids, method=model.embed_report_tokens)

  def init_cache_fn(rows, size):
    return model.apply(variables, rows, size, method=model.init_decoder_cache)

  return LanguageModel(decode_fn, logits_fn, embed_fn, init_cache_fn,
                       slot_axis=model.decoder_cache_slot_axis)


def gathered_decoder_weights(model, variables):
  """variables with the report decoder's weights cast to the compute dtype (kernels and
  embeddings, which the modules cast anyway) and replicated over the current mesh: one
  all-gather per weight, outside the decoding loop. Without a mesh, unchanged."""
  if jax.sharding.get_abstract_mesh().empty:
    return variables
  params = dict(variables["params"])
  decoder = layers.cast_matmul_weights(params["report_decoder"], model.config.dtype)
  params["report_decoder"] = jax.lax.with_sharding_constraint(
      decoder, jax.sharding.PartitionSpec())
  return {**variables, "params": params}


def _generate_reports(model, cfg, variables, images, anatomy_ids, anatomy_mask, leaf_mask,
                      prompt_ids, prompt_mask, rng):
  TRACES[cfg.method] += 1
  prefix, prefix_valid = model.apply(variables, images, anatomy_ids, anatomy_mask, leaf_mask,
                                     method=model.generation_prefix)
  if cfg.gather_decoder_weights:
    variables = gathered_decoder_weights(model, variables)
  lm = ssacl_language_model(model, variables)
  return run(lm, prefix, prefix_valid, cfg, prompt_ids, prompt_mask, rng)


# jit caches one executable per (model, settings, input shapes); model and settings hash by value.
_generate_reports_jit = jax.jit(_generate_reports, static_argnums=(0, 1))


def lower_generate_reports(model, cfg: DecodeConfig, variables, images, anatomy_ids,
                           anatomy_mask, leaf_mask, prompt_ids=None, prompt_mask=None, rng=None):
  """generate_reports' jitted program lowered for these (abstract) inputs, e.g. to compile
  it ahead of time for devices that are not attached (ssacl_jax/aot.py)."""
  return _generate_reports_jit.lower(model, cfg, variables, images, anatomy_ids, anatomy_mask,
                                     leaf_mask, prompt_ids, prompt_mask, rng)


def generate_reports(model, variables, images, anatomy_ids, anatomy_mask, leaf_mask,
                     config: Any = None, *, prompt_ids=None, prompt_mask=None,
                     rng=None) -> Generation:
  """Images -> reports' decoder ids (SPEC 5), jitted once per shape and settings.

  images [B, S, S, C]; anatomy_ids/anatomy_mask [25, La] (the leaf names' text tokens);
  leaf_mask [B, 25]; config: DecodeConfig, dict or ConfigDict of decoding settings;
  prompt_ids/prompt_mask [B, Lp]: optional pathology prompt + newline, right-padded, put
  after the image prefix; rng: a key, for 'nucleus' only.
  """
  cfg = decode_config(config)
  if cfg.method == "nucleus" and rng is None:
    raise ValueError("nucleus sampling needs rng")
  if prompt_ids is not None and prompt_mask is None:
    prompt_mask = np.ones(np.shape(prompt_ids), np.int32)
  return _generate_reports_jit(model, cfg, variables, images, anatomy_ids, anatomy_mask,
                               leaf_mask, prompt_ids, prompt_mask,
                               rng if cfg.method == "nucleus" else None)
