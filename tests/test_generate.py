"""ssacl_jax.generate: exactness against brute force and a plain port of HF's beam scorer,
cache vs. full recomputation on the tiny SS-ACL, method equivalences, batching, tracing."""
from __future__ import annotations

import dataclasses
import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssacl_jax import generate as gen
from ssacl_jax.models import ssacl
from helpers import teacher_forced_logits, tiny_config


# ----------------------------------------------------------------------------- a toy LM

class ToyLM:
  """Deterministic order- and position-sensitive LM with a cache of raw embeddings.

  logits(q) = tanh(sum_{k <= q, valid k} 0.7^(q-k) e_k M) O + pos[position of q], k and q
  cache slots; the same function serves incremental (cache_index > 0) and full (fresh
  cache, index 0) evaluation. Its "hidden state" is already the logits.
  """

  def __init__(self, vocab=4, width=6, max_len=40, seed=0, scale=1.5):
    r = np.random.default_rng(seed)
    self.vocab, self.width = vocab, width
    self.table = jnp.asarray(r.normal(size=(vocab, width)), jnp.float32)
    self.mix = jnp.asarray(r.normal(size=(width, width)) / np.sqrt(width), jnp.float32)
    self.out = jnp.asarray(r.normal(size=(width, vocab)) * scale, jnp.float32)
    self.pos = jnp.asarray(r.normal(size=(max_len, vocab)) * 0.5, jnp.float32)

  def decode_fn(self, embeds, key_valid, cache, cache_index, positions):
    cache = jax.lax.dynamic_update_slice_in_dim(cache, embeds.astype(cache.dtype), cache_index,
                                                axis=1)
    q = cache_index + jnp.arange(embeds.shape[1])
    dist = q[:, None] - jnp.arange(cache.shape[1])[None]
    allowed = (dist >= 0)[None] & key_valid[:, None, :].astype(bool)
    w = jnp.where(allowed, 0.7 ** jnp.maximum(dist, 0), 0.0)
    h = jnp.tanh(jnp.einsum("bls,bsw->blw", w, cache @ self.mix))
    return h @ self.out + self.pos[positions], cache

  def embed_fn(self, ids):
    return self.table[ids]

  def init_cache_fn(self, rows, size):
    return jnp.zeros((rows, size, self.width), jnp.float32)

  @property
  def lm(self):
    return gen.LanguageModel(self.decode_fn, lambda hidden: hidden, self.embed_fn,
                             self.init_cache_fn, slot_axis=1)

  def full_logits(self, prefix, prefix_valid, ids):
    """No cache: logits [N, T, V]; row t scores ids[:, t] from the prefix and ids[:, :t]."""
    ids = np.asarray(ids, np.int32).reshape(len(ids), -1)
    prefix = jnp.broadcast_to(prefix, (len(ids),) + prefix.shape[1:])
    valid = jnp.broadcast_to(prefix_valid, (len(ids), prefix_valid.shape[-1]))
    seq = jnp.concatenate([prefix, self.embed_fn(ids)], axis=1)
    valid = jnp.concatenate([valid, jnp.ones(ids.shape, jnp.int32)], axis=1)
    positions = jnp.broadcast_to(jnp.arange(seq.shape[1]), seq.shape[:2])
    logits, _ = self.decode_fn(seq, valid, jnp.zeros(seq.shape, jnp.float32), 0, positions)
    p = prefix.shape[1]
    return np.asarray(logits[:, p - 1:p - 1 + ids.shape[1]], np.float64)


def toy_prefix(batch, length=3, width=6, seed=1):
  r = np.random.default_rng(seed)
  prefix = jnp.asarray(r.normal(size=(batch, length, width)), jnp.float32)
  valid = np.ones((batch, length), np.int32)
  valid[:, 1] = 0  # a hidden prefix slot, like SS-ACL's CLS
  return prefix, jnp.asarray(valid)


def run_toy(toy, prefix, valid, cfg, prompt_ids=None, prompt_mask=None, rng=None):
  fn = jax.jit(lambda p, v, pi, pm, r: gen.run(toy.lm, p, v, cfg, pi, pm, r))
  return jax.tree.map(np.asarray, fn(prefix, valid, prompt_ids, prompt_mask, rng))


def sequence(out, row, cfg):
  n = int(out.lengths[row])
  ids = list(out.tokens[row, :n])
  if n < cfg.max_new_tokens:
    assert out.tokens[row, n] == cfg.eos_id
    ids.append(cfg.eos_id)
    assert np.all(out.tokens[row, n + 1:] == cfg.pad_id)
  return ids


# ----------------------------------------------------------------------------- references

def np_log_softmax(x):
  x = np.asarray(x, np.float64)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True))


def processed(logp_or_logits, previous, step, cfg):
  s = np.array(logp_or_logits, np.float64)
  for tok in set(previous):
    s[tok] = s[tok] * cfg.repetition_penalty if s[tok] < 0 else s[tok] / cfg.repetition_penalty
  if step < cfg.min_new_tokens:
    s[cfg.eos_id] = -np.inf
  return s


def brute_force(toy, prefix, valid, cfg):
  """All sequences (ending at the first EOS, or T long), scored with beam search's rules."""
  t_max, eos = cfg.max_new_tokens, cfg.eos_id
  seqs = list(itertools.product(range(toy.vocab), repeat=t_max))
  logits = toy.full_logits(prefix, valid, seqs)
  best = {}
  for row, seq in enumerate(seqs):
    total, out = 0.0, []
    for t, tok in enumerate(seq):
      total += processed(np_log_softmax(logits[row, t]), out, t, cfg)[tok]
      out.append(tok)
      if tok == eos:
        break
    if np.isfinite(total):
      best[tuple(out)] = total / len(out) ** cfg.length_penalty
  return sorted(best.items(), key=lambda kv: -kv[1])


def hf_beam_reference(toy, prefix, valid, cfg):
  """transformers' BeamSearchScorer/BeamHypotheses loop, restated plainly (one sample)."""
  k, t_max, lp, eos = cfg.num_beams, cfg.max_new_tokens, cfg.length_penalty, cfg.eos_id
  beams = [([], 0.0 if i == 0 else -1e9) for i in range(k)]
  hyps, worst = [], 1e9

  def add(tokens, score, length):
    nonlocal worst
    score = score / length ** lp
    if len(hyps) < k or score > worst:
      hyps.append((score, tokens))
      if len(hyps) > k:
        order = sorted((s, i) for i, (s, _) in enumerate(hyps))
        del hyps[order[0][1]]
        worst = order[1][0]
      else:
        worst = min(score, worst)

  for t in range(t_max):
    logits = toy.full_logits(prefix, valid, [b[0] + [0] for b in beams])  # row t: next
    cands = []
    for i, (tokens, score) in enumerate(beams):
      logp = processed(np_log_softmax(logits[i, t]), tokens, t, cfg)
      cands += [(score + logp[v], i * toy.vocab + v) for v in range(toy.vocab)]
    top = sorted(cands, key=lambda c: (-c[0], c[1]))[:2 * k]
    new = []
    for rank, (score, flat) in enumerate(top):
      i, v = divmod(flat, toy.vocab)
      if v == eos:
        if rank < k and np.isfinite(score):
          add(beams[i][0] + [eos], score, t + 1)
      else:
        new.append((beams[i][0] + [v], score))
      if len(new) == k:
        break
    beams = new
    if len(hyps) >= k and worst >= top[0][0] / (t + 1) ** lp:
      break
  else:
    for tokens, score in beams:
      add(tokens, score, t_max)
  return max(hyps, key=lambda h: h[0])


# ----------------------------------------------------------------------------- processors

def test_repetition_penalty_rule():
  scores = jnp.array([[2.0, -1.0, 0.5, -3.0, 0.0]])
  seen = jnp.array([[True, True, False, False, True]])
  out = gen.apply_repetition_penalty(scores, seen, 2.0)
  np.testing.assert_allclose(out, [[1.0, -2.0, 0.5, -3.0, 0.0]])


def test_top_p_keeps_the_smallest_head_reaching_p():
  probs = np.array([[0.5, 0.05, 0.3, 0.15]])
  logits = jnp.log(jnp.asarray(probs, jnp.float32))
  kept = np.isfinite(np.asarray(gen.top_p_filter(logits, 0.7)))
  np.testing.assert_array_equal(kept, [[True, False, True, False]])
  kept = np.isfinite(np.asarray(gen.top_p_filter(logits, 0.85)))
  np.testing.assert_array_equal(kept, [[True, False, True, True]])
  kept = np.isfinite(np.asarray(gen.top_p_filter(logits, 1e-9)))
  np.testing.assert_array_equal(kept, [[True, False, False, False]])


# ----------------------------------------------------------------------------- beam search

@pytest.mark.parametrize("rep,min_new,lp", [(1.0, 0, 2.0), (2.0, 2, 2.0), (2.0, 1, 0.5)])
def test_beam_search_is_exact_with_enough_beams(rep, min_new, lp):
  # V=4, T=4: at most 4 * 3^3 = 108 live candidates and 121 complete hypotheses, so with
  # 128 beams nothing is ever pruned and the heap never fills: beam search is exhaustive.
  toy = ToyLM(vocab=4, seed=3)
  cfg = gen.DecodeConfig(method="beam", num_beams=128, max_new_tokens=4,
                         min_new_tokens=min_new, repetition_penalty=rep, length_penalty=lp,
                         eos_id=2, pad_id=0)
  prefix, valid = toy_prefix(2)
  out = run_toy(toy, prefix, valid, cfg)
  for row in range(2):
    ranked = brute_force(toy, prefix[row:row + 1], valid[row:row + 1], cfg)
    (best, best_score), (_, second) = ranked[:2]
    assert best_score - second > 1e-4  # a clear winner
    assert sequence(out, row, cfg) == list(best)
    np.testing.assert_allclose(out.scores[row], best_score, rtol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_beam_search_matches_hf_scorer(seed):
  # Three beams, so pruning and HF's early stop (is_done) actually happen.
  toy = ToyLM(vocab=5, seed=10 + seed, scale=2.5)
  cfg = gen.DecodeConfig(method="beam", num_beams=3, max_new_tokens=7, min_new_tokens=2,
                         repetition_penalty=2.0, length_penalty=2.0, eos_id=1, pad_id=0)
  prefix, valid = toy_prefix(3, seed=seed)
  out = run_toy(toy, prefix, valid, cfg)
  for row in range(3):
    score, tokens = hf_beam_reference(toy, prefix[row:row + 1], valid[row:row + 1], cfg)
    assert sequence(out, row, cfg) == tokens
    np.testing.assert_allclose(out.scores[row], score, rtol=1e-5)


def test_greedy_follows_hf_processors():
  # Greedy applies the repetition penalty to logits and blocks EOS below min length.
  toy = ToyLM(vocab=5, seed=7, scale=2.5)
  prefix, valid = toy_prefix(3, seed=4)
  for rep, min_new in [(1.0, 0), (2.0, 0), (2.0, 3), (1.5, 6)]:
    cfg = gen.DecodeConfig(method="greedy", max_new_tokens=6, min_new_tokens=min_new,
                           repetition_penalty=rep, eos_id=1, pad_id=0)
    out = run_toy(toy, prefix, valid, cfg)
    for row in range(3):
      tokens, logp_sum = [], 0.0
      for t in range(cfg.max_new_tokens):
        logits = toy.full_logits(prefix[row:row + 1], valid[row:row + 1],
                                 [tokens + [0]])[0, t]
        tok = int(np.argmax(processed(logits, tokens, t, cfg)))
        logp_sum += np_log_softmax(logits)[tok]
        tokens.append(tok)
        if tok == cfg.eos_id:
          break
      assert sequence(out, row, cfg) == tokens, (rep, min_new, row)
      np.testing.assert_allclose(out.scores[row], logp_sum, rtol=1e-5)
      if min_new:
        assert out.lengths[row] >= min_new


def test_penalize_prompt_counts_prompt_tokens_as_seen():
  toy = ToyLM(vocab=5, seed=9, scale=2.5)
  prefix, valid = toy_prefix(1, seed=3)
  prompt = [4, 2, 3]
  cfg = gen.DecodeConfig(method="greedy", max_new_tokens=5, min_new_tokens=5,
                         repetition_penalty=3.0, eos_id=1, pad_id=0, penalize_prompt=True)
  out = run_toy(toy, prefix, valid, cfg, jnp.asarray([prompt], jnp.int32))
  tokens = []
  for t in range(cfg.max_new_tokens):
    logits = toy.full_logits(prefix, valid, [prompt + tokens + [0]])[0, len(prompt) + t]
    tokens.append(int(np.argmax(processed(logits, prompt + tokens, t, cfg))))
  assert sequence(out, 0, cfg) == tokens
  plain = run_toy(toy, prefix, valid, dataclasses.replace(cfg, penalize_prompt=False),
                  jnp.asarray([prompt], jnp.int32))
  assert not np.array_equal(plain.tokens, out.tokens)  # the setting matters here


def test_top_k_filter():
  logits = jnp.array([[0.1, 3.0, -1.0, 2.0, 2.5]])
  kept = np.isfinite(np.asarray(gen.top_k_filter(logits, 2)))
  np.testing.assert_array_equal(kept, [[False, True, False, False, True]])
  np.testing.assert_array_equal(gen.top_k_filter(logits, 0), logits)


def test_min_new_tokens_places_the_first_possible_eos():
  toy = ToyLM(vocab=4, seed=5)
  toy.pos = toy.pos.at[:, 3].add(50.0)  # EOS (3) dominates every step
  prefix, valid = toy_prefix(2)
  for method in ("greedy", "beam"):
    for min_new in (0, 2, 5):
      cfg = gen.DecodeConfig(method=method, max_new_tokens=5, min_new_tokens=min_new,
                             eos_id=3, pad_id=0, repetition_penalty=1.0,
                             length_penalty=0.0)  # > 0 would favour longer hypotheses
      out = run_toy(toy, prefix, valid, cfg)
      assert list(out.lengths) == [min(min_new, 5)] * 2, (method, min_new)
      if min_new < 5:
        assert np.all(out.tokens[:, min_new] == 3)


# ----------------------------------------------------------------------------- equivalences

def test_greedy_equals_one_beam():
  # With no length penalty and penalty 1, one beam is greedy (HF: penalties act on log-probs
  # in beam search but on logits in greedy, so they differ otherwise).
  toy = ToyLM(vocab=6, seed=2, scale=2.0)
  prefix, valid = toy_prefix(4, seed=5)
  for min_new in (0, 3):
    kw = dict(max_new_tokens=8, min_new_tokens=min_new, repetition_penalty=1.0,
              length_penalty=0.0, eos_id=3, pad_id=0)
    g = run_toy(toy, prefix, valid, gen.DecodeConfig(method="greedy", **kw))
    b = run_toy(toy, prefix, valid, gen.DecodeConfig(method="beam", num_beams=1, **kw))
    np.testing.assert_array_equal(g.tokens, b.tokens)
    np.testing.assert_array_equal(g.lengths, b.lengths)
    np.testing.assert_allclose(g.scores, b.scores, rtol=1e-5)
    assert np.any(g.lengths < 8)  # EOS is exercised


def test_nucleus_with_tiny_top_p_is_greedy_and_deterministic():
  toy = ToyLM(vocab=16, seed=4, scale=1.0)
  prefix, valid = toy_prefix(3, seed=6)
  kw = dict(max_new_tokens=8, min_new_tokens=2, repetition_penalty=2.0, eos_id=1, pad_id=0)
  g = run_toy(toy, prefix, valid, gen.DecodeConfig(method="greedy", **kw))
  tiny = gen.DecodeConfig(method="nucleus", top_p=1e-9, temperature=0.7, **kw)
  s = run_toy(toy, prefix, valid, tiny, rng=jax.random.key(0))
  np.testing.assert_array_equal(s.tokens, g.tokens)
  full = gen.DecodeConfig(method="nucleus", top_p=1.0, temperature=1.5, **kw)
  a = run_toy(toy, prefix, valid, full, rng=jax.random.key(1))
  a2 = run_toy(toy, prefix, valid, full, rng=jax.random.key(1))
  c = run_toy(toy, prefix, valid, full, rng=jax.random.key(2))
  np.testing.assert_array_equal(a.tokens, a2.tokens)
  np.testing.assert_array_equal(a.scores, a2.scores)
  assert not np.array_equal(a.tokens, c.tokens)


def test_toy_batched_equals_per_example_with_prompts():
  toy = ToyLM(vocab=5, seed=8, scale=2.5)
  prefix, valid = toy_prefix(3, seed=7)
  prompt = jnp.array([[3, 4, 0], [2, 0, 0], [4, 4, 3]], jnp.int32)
  mask = jnp.array([[1, 1, 0], [1, 0, 0], [1, 1, 1]], jnp.int32)
  for method in ("beam", "greedy"):
    cfg = gen.DecodeConfig(method=method, num_beams=3, max_new_tokens=6, min_new_tokens=2,
                           eos_id=1, pad_id=0)
    out = run_toy(toy, prefix, valid, cfg, prompt, mask)
    for row in range(3):
      one = run_toy(toy, prefix[row:row + 1], valid[row:row + 1], cfg, prompt[row:row + 1],
                    mask[row:row + 1])
      np.testing.assert_array_equal(one.tokens[0], out.tokens[row])
      np.testing.assert_allclose(one.scores[0], out.scores[row], rtol=1e-6)


# ----------------------------------------------------------------------------- tiny SS-ACL

@pytest.fixture(scope="module")
def tiny():
  c = tiny_config()
  model = ssacl.build_model(c.model)
  batch = ssacl.dummy_batch(c, 3)
  ids, mask = ssacl.dummy_anatomy_tokens(c)
  variables = nn.meta.unbox(model.init({"params": jax.random.key(0), "mask": jax.random.key(1)},
                                       batch, ids, mask))
  # At init the logits are nearly flat (std ~0.1): near-ties would make argmax comparisons
  # hinge on rounding. A larger (tied) token embedding makes them peaked (std ~3).
  wte = variables["params"]["report_decoder"]["wte"]
  wte["embedding"] = wte["embedding"] * 30.0
  r = np.random.default_rng(0)
  images = r.normal(size=batch["image"].shape).astype(np.float32)
  leaf_mask = (r.random((3, batch["leaf_mask"].shape[1])) < 0.5).astype(np.int32)
  t = dict(model=model, variables=variables, images=images, ids=ids, mask=mask,
           leaf_mask=leaf_mask, vocab=c.model.report.vocab_size)
  # EOS := a token greedy decoding emits at step 2 of row 0, so EOS handling is exercised.
  probe = gen.DecodeConfig(method="greedy", max_new_tokens=3, min_new_tokens=0,
                           repetition_penalty=1.0, eos_id=t["vocab"] - 1, pad_id=0)
  out = gen.generate_reports(model, variables, images, ids, mask, leaf_mask, probe)
  t["eos"] = int(out.tokens[0, 2])
  return t


def tiny_prefix(t):
  m = t["model"]
  return m.apply(t["variables"], t["images"], t["ids"], t["mask"], t["leaf_mask"],
                 method=m.generation_prefix)


def full_report_logits(t, prefix, valid, dec_ids, dec_mask):
  m = t["model"]
  return np.asarray(m.apply(t["variables"], prefix, valid, dec_ids, dec_mask,
                            method=m.report_logits))


def test_cached_decoding_matches_full_recomputation(tiny):
  m, v = tiny["model"], tiny["variables"]
  lm = gen.ssacl_language_model(m, v)
  prefix, valid = tiny_prefix(tiny)
  r = np.random.default_rng(1)
  ids = jnp.asarray(r.integers(0, tiny["vocab"], size=(3, 7)), jnp.int32)
  cfg = gen.DecodeConfig(max_new_tokens=7)
  cached = jax.jit(lambda p, pv, i: teacher_forced_logits(lm, p, pv, i, cfg))(
      prefix, valid, ids)
  full = full_report_logits(tiny, prefix, valid, ids, jnp.ones(ids.shape, jnp.int32))
  np.testing.assert_allclose(cached, full, atol=1e-5, rtol=1e-5)

  # Right-padded prompts of different lengths: each row decodes as the training sequence
  # [prefix | its prompt | report] without the padding (same logits, same positions).
  prompt = jnp.asarray(r.integers(0, tiny["vocab"], size=(3, 4)), jnp.int32)
  pmask = jnp.array([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]], jnp.int32)
  cached = jax.jit(lambda p, pv, i, pi, pm: teacher_forced_logits(lm, p, pv, i, cfg, pi, pm))(
      prefix, valid, ids, prompt, pmask)
  for row, n in enumerate(np.asarray(pmask.sum(1))):
    seq = jnp.concatenate([prompt[row:row + 1, :n], ids[row:row + 1]], axis=1)
    full = full_report_logits(tiny, prefix[row:row + 1], valid[row:row + 1], seq,
                              jnp.ones(seq.shape, jnp.int32))
    np.testing.assert_allclose(cached[row], full[0, n:], atol=1e-5, rtol=1e-5)


def test_ssacl_greedy_matches_recomputed_argmax(tiny):
  prefix, valid = tiny_prefix(tiny)
  cfg = gen.DecodeConfig(method="greedy", max_new_tokens=6, min_new_tokens=0,
                         repetition_penalty=1.0, eos_id=tiny["eos"], pad_id=0)
  out = gen.generate_reports(tiny["model"], tiny["variables"], tiny["images"], tiny["ids"],
                             tiny["mask"], tiny["leaf_mask"], cfg)
  for row in range(3):
    tokens = []
    for t in range(cfg.max_new_tokens):
      dec = jnp.asarray([tokens + [0]], jnp.int32)
      logits = full_report_logits(tiny, prefix[row:row + 1], valid[row:row + 1], dec,
                                  jnp.ones(dec.shape, jnp.int32))[0, t]
      tokens.append(int(np.argmax(logits)))
      if tokens[-1] == cfg.eos_id:
        break
    assert sequence(jax.tree.map(np.asarray, out), row, cfg) == tokens
  assert np.min(out.lengths) < cfg.max_new_tokens  # EOS is exercised


def test_ssacl_batched_equals_per_example_and_one_trace_per_shape(tiny):
  call = functools.partial(gen.generate_reports, tiny["model"], tiny["variables"])
  cfg = gen.DecodeConfig(method="beam", num_beams=3, max_new_tokens=8, min_new_tokens=3,
                         repetition_penalty=2.0, length_penalty=2.0, eos_id=tiny["eos"], pad_id=0)
  prompt = np.array([[7, 8, 9], [10, 0, 0], [11, 12, 0]], np.int32)
  pmask = (prompt > 0).astype(np.int32)
  before = gen.TRACES["beam"]
  out = call(tiny["images"], tiny["ids"], tiny["mask"], tiny["leaf_mask"], cfg,
             prompt_ids=prompt, prompt_mask=pmask)
  assert gen.TRACES["beam"] == before + 1
  for row in range(3):
    sl = slice(row, row + 1)
    one = call(tiny["images"][sl], tiny["ids"], tiny["mask"], tiny["leaf_mask"][sl], cfg,
               prompt_ids=prompt[sl], prompt_mask=pmask[sl])
    np.testing.assert_array_equal(one.tokens[0], out.tokens[row])
    np.testing.assert_array_equal(one.lengths[0], out.lengths[row])
    np.testing.assert_allclose(one.scores[0], out.scores[row], rtol=1e-5)
  assert gen.TRACES["beam"] == before + 2  # batch 1 traced once for three calls
  call(tiny["images"] * 0.5, tiny["ids"], tiny["mask"], tiny["leaf_mask"], cfg,
       prompt_ids=prompt, prompt_mask=pmask)
  assert gen.TRACES["beam"] == before + 2  # same shapes and settings: no retrace

  # One beam with no length penalty is greedy on the real model too.
  kw = dict(max_new_tokens=6, min_new_tokens=2, repetition_penalty=1.0, length_penalty=0.0,
            eos_id=tiny["eos"], pad_id=0)
  g = call(tiny["images"], tiny["ids"], tiny["mask"], tiny["leaf_mask"],
           dict(method="greedy", **kw))
  b = call(tiny["images"], tiny["ids"], tiny["mask"], tiny["leaf_mask"],
           dict(method="beam", num_beams=1, **kw))
  np.testing.assert_array_equal(g.tokens, b.tokens)
  np.testing.assert_allclose(g.scores, b.scores, rtol=1e-5)


@pytest.mark.parametrize("method", ["beam", "greedy"])
def test_ssacl_padded_prompts_decode_as_unpadded(tiny, method):
  """A batch whose prompts are right-padded to a common block gives each row what that
  row's unpadded prompt alone gives (generated tokens keep their training positions)."""
  call = functools.partial(gen.generate_reports, tiny["model"], tiny["variables"])
  cfg = gen.DecodeConfig(method=method, num_beams=3, max_new_tokens=6, min_new_tokens=2,
                         eos_id=tiny["eos"], pad_id=0)
  prompt = np.array([[7, 8, 9, 5], [10, 0, 0, 0], [11, 12, 0, 0]], np.int32)
  pmask = (prompt > 0).astype(np.int32)
  out = call(tiny["images"], tiny["ids"], tiny["mask"], tiny["leaf_mask"], cfg,
             prompt_ids=prompt, prompt_mask=pmask)
  for row, n in enumerate(pmask.sum(1)):
    sl = slice(row, row + 1)
    one = call(tiny["images"][sl], tiny["ids"], tiny["mask"], tiny["leaf_mask"][sl], cfg,
               prompt_ids=prompt[sl, :n], prompt_mask=pmask[sl, :n])
    np.testing.assert_array_equal(one.tokens[0], out.tokens[row])
    np.testing.assert_allclose(one.scores[0], out.scores[row], rtol=1e-5)


def test_beam_reorder_moves_only_generated_slots_within_each_sample():
  cache = jnp.arange(4 * 3 * 5, dtype=jnp.float32).reshape(4, 3, 5)  # [rows b*k+beam, x, slots]
  beam = jnp.array([[1, 1], [1, 0]])  # 2 samples x 2 beams: which beam of the same sample
  out = np.asarray(gen._reorder_generated(cache, beam, 3, slot_axis=2))
  c = np.asarray(cache)
  np.testing.assert_array_equal(out[:, :, :3], c[:, :, :3])
  for row, src in enumerate([1, 1, 3, 2]):
    np.testing.assert_array_equal(out[row, :, 3:], c[src, :, 3:], err_msg=f"row {row}")


def test_decode_config_rejects_unknown_and_bad_settings():
  with pytest.raises(KeyError):
    gen.decode_config({"beams": 3})
  with pytest.raises(ValueError):
    gen.decode_config(method="topk")
  c = gen.decode_config(None, num_beams=5)
  assert c.num_beams == 5 and c.max_new_tokens == 100 and c.min_new_tokens == 80


def test_kv_cache_rows_follow_the_batch_sharding(tiny):
  from ssacl_jax import sharding
  config = tiny_config()
  config.mesh.shape = (4, 2, 1)
  mesh = sharding.make_mesh(config)
  m, v = tiny["model"], tiny["variables"]
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.rules(config)):
    caches = jax.jit(lambda: m.apply(v, 8, 16, method=m.init_decoder_cache))()
  keys = caches[0][0]
  assert keys.shape[0] == 8
  assert keys.sharding.spec[0] == ("data", "fsdp")  # rows split over all 8 devices
  assert keys.addressable_shards[0].data.shape[0] == 1


def test_gathering_decoder_weights_once_gives_the_same_reports_on_a_mesh(tiny):
  """fsdp-sharded weights on 8 devices: gathering the decoder once before the loop (in
  the compute dtype) decodes exactly as gathering at every step, and as one device does."""
  from jax.sharding import NamedSharding, PartitionSpec as P
  from ssacl_jax import sharding
  config = tiny_config()
  config.mesh.shape = (1, 8, 1)
  mesh = sharding.make_mesh(config)
  m = tiny["model"]
  boxed = jax.eval_shape(lambda r: m.init({"params": r, "mask": r},
                                          ssacl.dummy_batch(config, 1), tiny["ids"],
                                          tiny["mask"]), jax.random.key(0))["params"]
  shardings = sharding.logical_shardings(boxed, mesh, config)
  assert shardings["report_decoder"]["wte"]["embedding"].spec[1] == "fsdp"
  params = jax.device_put(tiny["variables"]["params"], shardings)
  rows = NamedSharding(mesh, P())
  cfg = gen.DecodeConfig(method="beam", num_beams=2, max_new_tokens=4, min_new_tokens=1,
                         eos_id=tiny["eos"], pad_id=0)
  args = (tiny["images"], tiny["ids"], tiny["mask"], tiny["leaf_mask"])
  out = {}
  for gather in (False, True):
    c = dataclasses.replace(cfg, gather_decoder_weights=gather)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.rules(config)):
      out[gather] = gen.generate_reports(m, {"params": params},
                                         *jax.device_put(args, rows), c)
  alone = gen.generate_reports(m, tiny["variables"], *args, cfg)
  for field in ("tokens", "lengths"):
    np.testing.assert_array_equal(getattr(out[True], field), getattr(out[False], field))
    np.testing.assert_array_equal(getattr(out[True], field), getattr(alone, field))
  np.testing.assert_allclose(out[True].scores, out[False].scores, rtol=1e-6)
