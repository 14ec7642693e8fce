"""ssacl_jax.losses against independent float64 NumPy statements of SPEC section 3."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssacl_jax import anatomy, losses

RTOL = 1e-5


def _rng(seed):
  return np.random.default_rng(seed)


# ----------------------------------------------------------------------------- NumPy refs

def np_l2n(x, eps=1e-12):
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def np_log_softmax(x):
  x = np.asarray(x, np.float64)
  m = x.max()
  return x - m - np.log(np.sum(np.exp(x - m)))


def np_softplus(x):
  return np.log1p(np.exp(-abs(x))) + max(x, 0.0)


def np_masked_recon(pred, target, mask, norm_pix):
  b, n, _ = pred.shape
  num = den = 0.0
  for i in range(b):
    for j in range(n):
      t = np.asarray(target[i, j], np.float64)
      if norm_pix:
        mean = t.sum() / t.size
        var = ((t - mean) ** 2).sum() / (t.size - 1)
        t = (t - mean) / np.sqrt(var + 1e-6)
      l = np.mean((np.asarray(pred[i, j], np.float64) - t) ** 2)
      num += l * mask[i, j]
      den += mask[i, j]
  return num / den


def np_ce(logits_row, target):
  return -np_log_softmax(logits_row)[target]


def np_contrastive(img, txt, scale, visible, pos_w, pos_b):
  b = img.shape[0]
  a, t = np_l2n(img), np_l2n(txt)
  l_it = np.array([[scale * a[i] @ t[j] for j in range(b)] for i in range(b)])
  l_ti = np.array([[scale * t[i] @ a[j] for j in range(b)] for i in range(b)])
  s = np.array([np_softplus(float(visible[i] @ pos_w + pos_b)) for i in range(b)])
  c1 = np.mean([np_ce(l_it[i] * s[i], i) for i in range(b)])
  c2 = np.mean([np_ce(l_ti[i] * s[i], i) for i in range(b)])
  c3 = sum(s[i] * np_ce(l_it[i], i) for i in range(b)) / s.sum()
  c4 = sum(s[i] * np_ce(l_ti[i], i) for i in range(b)) / s.sum()
  return (c1 + c2 + c3 + c4) / 4, (c1, c2, c3, c4, s)


def np_consistency(anat, txt, scale, lam):
  b, k, _ = anat.shape
  a, t = np_l2n(anat), np_l2n(txt)
  p = np.zeros((b, b))
  for i in range(b):
    p[i] = np.exp(np_log_softmax(scale * t @ t[i]))
  total = 0.0
  for i in range(b):
    for j in range(b):
      for q in range(k):
        logsm = np_log_softmax([scale * a[i, q] @ a[j, r] for r in range(k)])
        y = lam * p[i, j] * np.ones(k)
        y[q] += 1.0 - lam
        total += -np.sum(logsm * y)
  return total / (b * b * k)


def np_lm(logits, targets, weights):
  num = den = 0.0
  for i in range(logits.shape[0]):
    for j in range(logits.shape[1]):
      if weights[i, j]:
        num += weights[i, j] * -np_log_softmax(logits[i, j])[targets[i, j]]
        den += weights[i, j]
  return num / den


# ----------------------------------------------------------------------------- l2 / patchify

def test_l2_normalize_matches_torch_definition():
  x = _rng(0).normal(size=(4, 7)).astype(np.float32)
  x[1] = 0.0
  np.testing.assert_allclose(losses.l2_normalize(x), np_l2n(x), rtol=RTOL, atol=1e-7)
  tiny = np.full((1, 3), 1e-14, np.float32)
  np.testing.assert_allclose(losses.l2_normalize(tiny), tiny / 1e-12, rtol=1e-5)
  g = jax.grad(lambda v: losses.l2_normalize(v).sum())(jnp.zeros((2, 3)))
  assert np.all(np.isfinite(g))


def test_patchify_order_loop_conv_and_reference_layout():
  rng = _rng(1)
  b, h, w, c, p, d = 2, 8, 12, 3, 4, 5
  img = rng.normal(size=(b, h, w, c)).astype(np.float32)
  out = np.asarray(losses.patchify(img, p))
  gw = w // p
  assert out.shape == (b, (h // p) * gw, p * p * c)
  for n in range(out.shape[1]):
    gy, gx = divmod(n, gw)
    for dy in range(p):
      for dx in range(p):
        for ch in range(c):
          assert out[1, n, (dy * p + dx) * c + ch] == img[1, gy * p + dy, gx * p + dx, ch]
  # The ViT patch embedding: a stride-p conv with an HWIO kernel.
  kernel = rng.normal(size=(p, p, c, d)).astype(np.float32)
  conv = jax.lax.conv_general_dilated(img, kernel, (p, p), "VALID",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      precision="highest")
  np.testing.assert_allclose(conv.reshape(b, -1, d), out @ kernel.reshape(-1, d),
                             rtol=1e-4, atol=1e-4)
  # The reference's target layout for NCHW images.
  nchw = img.transpose(0, 3, 1, 2)
  ref = nchw.reshape(b, c, h // p, p, gw, p).transpose(0, 2, 4, 3, 5, 1).reshape(b, -1, p * p * c)
  np.testing.assert_array_equal(out, ref)
  with pytest.raises(ValueError):
    losses.patchify(img, 5)


# ----------------------------------------------------------------------------- L_ir

@pytest.mark.parametrize("norm_pix", [False, True])
def test_masked_reconstruction_loss(norm_pix):
  rng = _rng(2)
  pred = rng.normal(size=(3, 10, 12)).astype(np.float32)
  target = (rng.normal(size=(3, 10, 12)) * 2 + 1).astype(np.float32)
  mask = (rng.random((3, 10)) < 0.5).astype(np.float32)
  mask[0, 0] = 1
  got = losses.masked_reconstruction_loss(pred, target, mask, norm_pix=norm_pix)
  assert got.dtype == jnp.float32 and got.shape == ()
  np.testing.assert_allclose(got, np_masked_recon(pred, target, mask, norm_pix), rtol=RTOL)
  # Unmasked patches do not count.
  pred2 = np.where(mask[..., None] == 0, pred + 100.0, pred)
  np.testing.assert_allclose(losses.masked_reconstruction_loss(pred2, target, mask, norm_pix),
                             got, rtol=1e-6)
  assert losses.masked_reconstruction_loss(pred, target, 0 * mask, norm_pix) == 0.0


def test_masked_reconstruction_loss_bf16_inputs_computed_in_f32():
  rng = _rng(3)
  pred = jnp.asarray(rng.normal(size=(2, 4, 6)), jnp.bfloat16)
  target = jnp.asarray(rng.normal(size=(2, 4, 6)), jnp.bfloat16)
  mask = jnp.ones((2, 4))
  got = losses.masked_reconstruction_loss(pred, target, mask)
  assert got.dtype == jnp.float32
  ref = np_masked_recon(np.asarray(pred, np.float64), np.asarray(target, np.float64),
                        np.ones((2, 4)), False)
  np.testing.assert_allclose(got, ref, rtol=RTOL)


# ----------------------------------------------------------------------------- L_cl

def _contrastive_inputs(seed=4, b=6, d=16, n=20):
  rng = _rng(seed)
  img = rng.normal(size=(b, d)).astype(np.float32)
  txt = rng.normal(size=(b, d)).astype(np.float32)
  visible = (rng.random((b, n)) < 0.5).astype(np.float32)
  pos_w = (rng.normal(size=(n,)) * 0.3).astype(np.float32)
  pos_b = np.float32(0.4)
  return img, txt, np.float32(1 / 0.03), visible, pos_w, pos_b


def test_global_contrastive_loss_matches_numpy():
  args = _contrastive_inputs()
  ref, (c1, c2, c3, c4, s) = np_contrastive(*[np.asarray(a, np.float64) for a in args])
  np.testing.assert_allclose(losses.global_contrastive_loss(*args), ref, rtol=RTOL)
  terms = losses.global_contrastive_terms(*args)
  for key, val in zip(("it_scaled", "ti_scaled", "it_weighted", "ti_weighted"),
                      (c1, c2, c3, c4)):
    np.testing.assert_allclose(terms[key], val, rtol=RTOL)
  np.testing.assert_allclose(terms["sample_scale"], s, rtol=RTOL)
  # Zero-initialised w, b: every s_b = softplus(0) = log 2.
  img, txt, scale, visible, _, _ = args
  zero = (img, txt, scale, visible, np.zeros(visible.shape[1], np.float32), np.float32(0))
  ref0, _ = np_contrastive(*[np.asarray(a, np.float64) for a in zero])
  np.testing.assert_allclose(losses.global_contrastive_loss(*zero), ref0, rtol=RTOL)


def test_global_contrastive_weights_are_stop_gradient():
  img, txt, scale, visible, pos_w, pos_b = _contrastive_inputs(seed=5)

  def reference(pw, w_fn):
    """The same loss written out with jnp; w_fn(s) gives the CE weights."""
    a, t = losses.l2_normalize(img), losses.l2_normalize(txt)
    l_it = scale * jnp.matmul(a, t.T, precision="highest")
    l_ti = scale * jnp.matmul(t, a.T, precision="highest")
    s = jax.nn.softplus(jnp.matmul(visible, pw, precision="highest") + pos_b)
    w = w_fn(s)
    ce = lambda l: -jnp.diagonal(jax.nn.log_softmax(l, axis=-1))
    return (jnp.mean(ce(l_it * s[:, None])) + jnp.mean(ce(l_ti * s[:, None]))
            + jnp.sum(w * ce(l_it)) / jnp.sum(w) + jnp.sum(w * ce(l_ti)) / jnp.sum(w)) / 4

  w_const = jax.nn.softplus(visible @ pos_w + pos_b)   # computed outside: a constant
  g = jax.grad(lambda pw: losses.global_contrastive_loss(img, txt, scale, visible, pw,
                                                        pos_b))(jnp.asarray(pos_w))
  g_sg = jax.grad(reference)(jnp.asarray(pos_w), lambda s: w_const)
  g_live = jax.grad(reference)(jnp.asarray(pos_w), lambda s: s)
  np.testing.assert_allclose(g, g_sg, rtol=1e-4, atol=1e-6)
  assert np.max(np.abs(g_live - g_sg)) > 1e-3 * np.max(np.abs(g_sg))
  assert not np.allclose(g, g_live, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- L_ar

def test_anatomy_reconstruction_inputs_match_loop():
  rng = _rng(6)
  b, d = 2, 5
  nodes = rng.normal(size=(b, anatomy.NUM_NODES, d)).astype(np.float32)
  full = rng.normal(size=(b, anatomy.NUM_NODES, d)).astype(np.float32)
  seqs, valid, par = losses.anatomy_reconstruction_inputs(jnp.asarray(nodes))
  _, _, par_full = losses.anatomy_reconstruction_inputs(jnp.asarray(nodes), jnp.asarray(full))
  mc = anatomy.MAX_CHILDREN
  assert seqs.shape == (b, anatomy.NUM_PARENTS, 1 + mc, d)
  assert valid.shape == (anatomy.NUM_PARENTS, 1 + mc) and valid.dtype == jnp.bool_
  assert par.shape == (b, anatomy.NUM_PARENTS, 1, d)
  seqs, valid, par, par_full = map(np.asarray, (seqs, valid, par, par_full))
  for pi, parent in enumerate(anatomy.PARENTS):
    kids = [anatomy.NODE_INDEX[k] for k in anatomy.CHILDREN[parent]]
    exp_valid = [True] * (1 + len(kids)) + [False] * (mc - len(kids))
    assert list(valid[pi]) == exp_valid, parent
    for bi in range(b):
      mean = np.mean(nodes[bi, kids].astype(np.float64), axis=0)
      np.testing.assert_allclose(seqs[bi, pi, 0], mean, rtol=RTOL, atol=1e-6)
      np.testing.assert_array_equal(seqs[bi, pi, 1:1 + len(kids)], nodes[bi, kids])
      np.testing.assert_array_equal(seqs[bi, pi, 1 + len(kids):], 0.0)
      np.testing.assert_array_equal(par[bi, pi, 0], nodes[bi, anatomy.NODE_INDEX[parent]])
      np.testing.assert_array_equal(par_full[bi, pi, 0], full[bi, anatomy.NODE_INDEX[parent]])


def test_anatomy_reconstruction_loss_value_and_stop_gradient():
  rng = _rng(7)
  ch = rng.normal(size=(3, anatomy.NUM_PARENTS, 12)).astype(np.float32)
  pa = rng.normal(size=(3, anatomy.NUM_PARENTS, 12)).astype(np.float32)
  per_parent = [np.mean((ch[:, p].astype(np.float64) - pa[:, p]) ** 2)
                for p in range(anatomy.NUM_PARENTS)]
  np.testing.assert_allclose(losses.anatomy_reconstruction_loss(ch, pa),
                             np.mean(per_parent), rtol=RTOL)
  g_ch, g_pa = jax.grad(losses.anatomy_reconstruction_loss, argnums=(0, 1))(
      jnp.asarray(ch), jnp.asarray(pa))
  np.testing.assert_array_equal(g_pa, 0.0)
  np.testing.assert_allclose(g_ch, 2 * (ch - pa) / ch.size, rtol=1e-5, atol=1e-8)


# ----------------------------------------------------------------------------- L_ac

def _consistency_inputs(seed=8, b=5, k=7, d=12, dt=9):
  rng = _rng(seed)
  return (rng.normal(size=(b, k, d)).astype(np.float32),
          rng.normal(size=(b, dt)).astype(np.float32), np.float32(1 / 0.03))


@pytest.mark.parametrize("lam", [0.1, 0.35])
def test_anatomical_consistency_loss_matches_numpy(lam):
  anat, txt, scale = _consistency_inputs()
  ref = np_consistency(anat, txt, float(scale), lam)
  got = losses.anatomical_consistency_loss(anat, txt, scale, lam)
  np.testing.assert_allclose(got, ref, rtol=RTOL)
  for chunk in (1, 2, 3, 5, 8):
    np.testing.assert_allclose(
        losses.anatomical_consistency_loss(anat, txt, scale, lam, chunk_size=chunk), got,
        rtol=1e-6)


def test_anatomical_consistency_real_leaf_count():
  anat, txt, scale = _consistency_inputs(seed=9, b=3, k=anatomy.NUM_LEAVES, d=8, dt=6)
  np.testing.assert_allclose(losses.anatomical_consistency_loss(anat, txt, scale),
                             np_consistency(anat, txt, float(scale), 0.1), rtol=RTOL)


def _jnp_consistency_ref(a_live, a_frozen, txt, scale, lam, affinity=None):
  """Y materialised; S uses a separately passed 'all' side; affinity constant if given."""
  a, af = losses.l2_normalize(a_live), losses.l2_normalize(a_frozen)
  t = losses.l2_normalize(txt)
  k = a.shape[1]
  sim = scale * jnp.einsum("ikd,jld->ijkl", a, af, precision="highest")
  if affinity is None:
    affinity = jax.nn.softmax(scale * jnp.matmul(t, t.T, precision="highest"), axis=-1)
  y = (1 - lam) * jnp.eye(k)[None, None] + lam * affinity[:, :, None, None]
  return -jnp.mean(jnp.sum(jax.nn.log_softmax(sim, axis=-1) * y, axis=-1))


@pytest.mark.parametrize("chunk", [None, 2])
def test_anatomical_consistency_gradients(chunk):
  anat, txt, scale = _consistency_inputs(seed=10)
  anat, txt, scale = jnp.asarray(anat), jnp.asarray(txt), jnp.asarray(scale)
  lam = 0.1
  loss = lambda a, t, s: losses.anatomical_consistency_loss(a, t, s, lam, chunk_size=chunk)
  g_a, g_t, g_s = jax.grad(loss, argnums=(0, 1, 2))(anat, txt, scale)
  t_n = losses.l2_normalize(txt)
  p_const = jax.nn.softmax(scale * t_n @ t_n.T, axis=-1)
  # Frozen 'all' side and constant P: reference gradient.
  ref_a, ref_s = jax.grad(
      lambda a, s: _jnp_consistency_ref(a, anat, txt, s, lam, p_const), argnums=(0, 1))(
          anat, scale)
  np.testing.assert_allclose(g_a, ref_a, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(g_s, ref_s, rtol=1e-4, atol=1e-8)
  # The test can fail: the gradient through both sides is different.
  live_a = jax.grad(lambda a: _jnp_consistency_ref(a, a, txt, scale, lam, p_const))(anat)
  assert np.max(np.abs(live_a - ref_a)) > 1e-2 * np.max(np.abs(ref_a))
  # P carries no gradient: nothing reaches the text embeddings...
  np.testing.assert_array_equal(g_t, 0.0)
  # ...whereas a live P would send some.
  g_t_live = jax.grad(lambda t: _jnp_consistency_ref(anat, anat, t, scale, lam))(txt)
  assert np.max(np.abs(g_t_live)) > 0


# ----------------------------------------------------------------------------- L_lm

def test_report_lm_loss_matches_numpy_and_ignores_weight_zero():
  rng = _rng(11)
  b, t, v = 3, 6, 11
  logits = (rng.normal(size=(b, t, v)) * 3).astype(np.float32)
  targets = rng.integers(0, v, size=(b, t))
  weights = (rng.random((b, t)) < 0.6).astype(np.float32)
  weights[0, 0] = 1
  got = losses.report_lm_loss(logits, targets, weights)
  np.testing.assert_allclose(got, np_lm(logits, targets, weights), rtol=RTOL)
  logits2 = np.where(weights[..., None] == 0, rng.normal(size=logits.shape) * 50, logits)
  np.testing.assert_array_equal(losses.report_lm_loss(logits2.astype(np.float32), targets,
                                                      weights), got)
  g = jax.grad(losses.report_lm_loss)(jnp.asarray(logits), targets, weights)
  np.testing.assert_array_equal(np.asarray(g)[weights == 0], 0.0)
  assert losses.report_lm_loss(logits, targets, 0 * weights) == 0.0
  got_bf16 = losses.report_lm_loss(jnp.asarray(logits, jnp.bfloat16), targets, weights)
  assert got_bf16.dtype == jnp.float32


def test_losses_jit():
  anat, txt, scale = _consistency_inputs(seed=12)
  f = jax.jit(lambda a, t, s: losses.anatomical_consistency_loss(a, t, s, chunk_size=2))
  np.testing.assert_allclose(f(anat, txt, scale),
                             losses.anatomical_consistency_loss(anat, txt, scale), rtol=1e-6)
  args = _contrastive_inputs(seed=13)
  np.testing.assert_allclose(jax.jit(losses.global_contrastive_loss)(*args),
                             losses.global_contrastive_loss(*args), rtol=1e-6)
