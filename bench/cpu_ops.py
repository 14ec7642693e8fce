"""Per-op CPU use of XLA:CPU at the paper's shapes: does an op keep both cores busy?

  python bench/cpu_ops.py [--xla_flags "..."] [--batch 4] [--json OUT]

Each op is jitted and timed (median of --reps calls after a warm-up); `cores` is this
process's CPU time over the wall time of those calls (2.0 = both cores of this machine
busy the whole time). Ops (batch B = --batch, the unmasked graph-query pass: T = 229
tokens, width 768, 12 heads; GPT-2 logits on 118 x 50257):
  dense_fc1          x[B*T, 768] @ W[768, 3072] + b
  dense_fc1_grad     its value-and-grad (x and W)
  gelu               erf GELU on [B*T, 3072]
  layernorm          LayerNorm on [B*T, 768]
  attention_einsum   softmax(q k^T / 8 + bias) v, as ssacl_jax.layers does it
  attention_dpa      jax.nn.dot_product_attention(q, k, v, bias) (implementation='xla')
  vit_block_grad     value-and-grad of one ssacl_jax.layers.Block (pre-norm, 3072 MLP)
  lm_logits_grad     value-and-grad of log_softmax([B*118, 768] @ E^T[768, 50257]) NLL
XLA flags must be set before JAX starts, so compare flag settings by running this script
once per setting (--xla_flags is appended to XLA_FLAGS). Prints JSON.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--xla_flags", default="")
p.add_argument("--batch", type=int, default=4)
p.add_argument("--reps", type=int, default=10)
p.add_argument("--ops", default="")
p.add_argument("--json", default="")
ARGS = p.parse_args()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if ARGS.xla_flags:
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + ARGS.xla_flags).strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from bench import benchlib  # noqa: E402
from ssacl_jax import layers  # noqa: E402


def timeit(fn, *args, reps: int):
  out = fn(*args)
  jax.block_until_ready(out)
  times = []
  cpu0, wall0 = benchlib.own_cpu_s(), time.perf_counter()
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  cores = (benchlib.own_cpu_s() - cpu0) / (time.perf_counter() - wall0)
  return statistics.median(times), cores


def build(batch: int):
  key = iter(jax.random.split(jax.random.key(0), 32))
  rnd = lambda *s: jax.random.normal(next(key), s, jnp.float32)
  t, d, h, m, v, ld = 229, 768, 12, 3072, 50257, 118
  n = batch * t
  x, w, b = rnd(n, d), rnd(d, m) * 0.02, rnd(m)
  hid = rnd(n, m)
  q, k, vv = rnd(batch, t, h, d // h), rnd(batch, t, h, d // h), rnd(batch, t, h, d // h)
  bias = jnp.zeros((1, 1, t, t), jnp.float32)
  xs = rnd(batch, t, d)
  emb, hs = rnd(v, d) * 0.02, rnd(batch * ld, d)
  targets = jax.random.randint(next(key), (batch * ld,), 0, v)

  def attention_einsum(q, k, v, bias):
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / 8.0 + bias
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v)

  def attention_dpa(q, k, v, bias):
    return jax.nn.dot_product_attention(q, k, v, bias=bias, implementation="xla")

  block = layers.Block(h, m, 1e-6)
  params = block.init(jax.random.key(1), xs)

  def block_loss(params, xs):
    y, _, _ = block.apply(params, xs)
    return jnp.mean(y * y)

  def lm_loss(emb, hs):
    logp = jax.nn.log_softmax(hs @ emb.T, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, targets[:, None], axis=-1))

  dense = lambda x, w, b: x @ w + b
  ln = layers.layer_norm(1e-6, dtype=jnp.float32, param_dtype=jnp.float32)
  ln_params = ln.init(jax.random.key(2), x)
  flops_block = 3 * batch * layers_block_flops(t, d, m)
  return {
      "dense_fc1": (jax.jit(dense), (x, w, b), 2 * n * d * m),
      "dense_fc1_grad": (jax.jit(jax.grad(lambda x, w, b: jnp.sum(dense(x, w, b)), (0, 1))),
                         (x, w, b), 3 * 2 * n * d * m),
      "gelu": (jax.jit(lambda h: jax.nn.gelu(h, approximate=False)), (hid,), 0),
      "layernorm": (jax.jit(lambda p, x: ln.apply(p, x)), (ln_params, x), 0),
      "attention_einsum": (jax.jit(attention_einsum), (q, k, vv, bias), 4 * batch * t * t * d),
      "attention_dpa": (jax.jit(attention_dpa), (q, k, vv, bias), 4 * batch * t * t * d),
      "vit_block_grad": (jax.jit(jax.value_and_grad(block_loss)), (params, xs), flops_block),
      "lm_logits_grad": (jax.jit(jax.value_and_grad(lm_loss, (0, 1))), (emb, hs),
                         3 * 2 * batch * ld * d * v),
  }


def layers_block_flops(t, d, m):
  return 8 * t * d * d + 4 * t * d * m + 4 * t * t * d


def main():
  ops = build(ARGS.batch)
  wanted = [o for o in ARGS.ops.split(",") if o] or list(ops)
  results = {}
  for name in wanted:
    fn, args, flops = ops[name]
    sec, cores = timeit(fn, *args, reps=ARGS.reps)
    results[name] = {"ms": round(sec * 1e3, 3), "cores": round(cores, 2)}
    if flops:
      results[name]["gflops_per_s"] = round(flops / sec / 1e9, 1)
    print(name, results[name], file=sys.stderr, flush=True)
  report = {"bench": "cpu_ops", "batch": ARGS.batch, "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "load1_at_start": round(os.getloadavg()[0], 2), "jax": jax.__version__,
            "results": results}
  print(benchlib.write_json(ARGS.json, report))


if __name__ == "__main__":
  main()
