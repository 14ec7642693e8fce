"""Report-generation throughput: beam search (SPEC 5 settings) and greedy, per batch size.

  python bench/generate.py --config configs/demo.py --batches 1,4,8 [--json OUT]

Random-init weights (generation cost does not depend on their values, except that EOS
may come earlier or later; with min_new_tokens 80 and max 100 most of the 100 steps run).
Each (method, batch) is compiled once, then timed over --repeats calls of the whole jitted
path (image encoder, prefix, prefill, decoding loop). A right-padded prompt block of
data.prompt_len + 1 tokens follows the image prefix, as at test time. Prints one JSON
document; --json also writes it to a file.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402

from bench import benchlib  # noqa: E402
from ssacl_jax import generate as gen  # noqa: E402
from ssacl_jax.models import ssacl  # noqa: E402


def load_config(spec: str):
  """'configs/x.py[:variant args]' -> the file's get_config(args)."""
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("bench_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def default_ids(vocab_size: int) -> tuple[int, int]:
  """(eos = newline, pad): GPT-2's 198 / 50256, else the SentencePiece decoder's 4 / 0."""
  return (198, 50256) if vocab_size >= 50257 else (4, 0)


def inputs(config, batch: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  m, d = config.model, config.data
  images = rng.standard_normal((batch, m.image_size, m.image_size, m.channels)).astype(np.float32)
  leaf_mask = (rng.random((batch, 25)) < 0.5).astype(np.int32)
  prompt_len = d.prompt_len + 1
  prompt_ids = rng.integers(5, m.report.vocab_size, (batch, prompt_len)).astype(np.int32)
  lengths = rng.integers(1, prompt_len + 1, batch)
  prompt_mask = (np.arange(prompt_len)[None] < lengths[:, None]).astype(np.int32)
  return images, leaf_mask, prompt_ids, prompt_mask


def time_one(model, variables, anatomy_tokens, config, settings, batch: int, repeats: int):
  images, leaf_mask, prompt_ids, prompt_mask = inputs(config, batch)

  def call(imgs):
    out = gen.generate_reports(model, variables, imgs, *anatomy_tokens, leaf_mask, settings,
                               prompt_ids=prompt_ids, prompt_mask=prompt_mask)
    return jax.block_until_ready(out)

  start = time.perf_counter()
  out = call(images)
  first = time.perf_counter() - start
  times, utils, others = [], [], []
  for i in range(repeats):
    s0, start = benchlib.cpu_snapshot(), time.perf_counter()
    out = call(images + 0.01 * (i + 1))
    wall = time.perf_counter() - start
    s1 = benchlib.cpu_snapshot()
    times.append(wall)
    utils.append((s1[1] - s0[1]) / wall)
    others.append(benchlib.other_cores(s0, s1, wall))
  per_batch = float(np.median(times))
  return {
      "method": settings.method, "num_beams": settings.num_beams if settings.method == "beam"
      else 1, "batch": batch, "first_call_s": round(first, 3),
      "seconds_per_batch": round(per_batch, 4), "reports_per_s": round(batch / per_batch, 3),
      "seconds_per_report": round(per_batch / batch, 4),
      "mean_new_tokens": float(np.mean(np.minimum(np.asarray(out.lengths) + 1,
                                                  settings.max_new_tokens))),
      "cpu_util": round(float(np.median(utils)), 2),
      "other_processes_cores": round(float(np.max(others)), 2),
  }


def prefill_breakdown(row: dict, prefill_row: dict, max_new_tokens: int) -> dict:
  """Splits a batch's time into the image encoder + prefill (a run of one new token) and
  the per-token decoding steps."""
  prefill = prefill_row["seconds_per_batch"]
  step = (row["seconds_per_batch"] - prefill) / max(max_new_tokens - 1, 1)
  return {"encoder_and_prefill_s": round(prefill, 4), "decode_step_ms": round(1e3 * step, 2),
          "prefill_cpu_util": prefill_row["cpu_util"]}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/demo.py")
  parser.add_argument("--batches", default="1,4,8")
  parser.add_argument("--methods", default="beam,greedy")
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--max_new_tokens", type=int, default=100)
  parser.add_argument("--min_new_tokens", type=int, default=80)
  parser.add_argument("--breakdown", type=int, default=1,
                      help="1: also time one-token runs, to split encoder + prefill from the "
                           "per-token steps")
  parser.add_argument("--json", default="")
  args = parser.parse_args(argv)

  config = load_config(args.config)
  model = ssacl.build_model(config.model)
  anatomy_tokens = ssacl.dummy_anatomy_tokens(config)
  variables = jax.jit(model.init)({"params": jax.random.key(0), "mask": jax.random.key(1)},
                                  ssacl.dummy_batch(config, 1), *anatomy_tokens)
  eos, pad = default_ids(config.model.report.vocab_size)
  results = []
  for method in args.methods.split(","):
    settings = gen.DecodeConfig(method=method, num_beams=3, max_new_tokens=args.max_new_tokens,
                                min_new_tokens=args.min_new_tokens, repetition_penalty=2.0,
                                length_penalty=2.0, eos_id=eos, pad_id=pad)
    for batch in (int(b) for b in args.batches.split(",")):
      row = time_one(model, variables, anatomy_tokens, config, settings, batch, args.repeats)
      if args.breakdown:
        one = dataclasses.replace(settings, max_new_tokens=1, min_new_tokens=0)
        row.update(prefill_breakdown(row, time_one(model, variables, anatomy_tokens, config,
                                                   one, batch, args.repeats),
                                     args.max_new_tokens))
      results.append(row)
      print(json.dumps(results[-1]), file=sys.stderr, flush=True)
  report = {
      "config": args.config, "backend": jax.default_backend(),
      "devices": [str(d) for d in jax.devices()][:1], "max_new_tokens": args.max_new_tokens,
      "min_new_tokens": args.min_new_tokens, "prompt_block": config.data.prompt_len + 1,
      "results": results,
  }
  text = json.dumps(report, indent=1)
  print(text)
  if args.json:
    pathlib.Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
  main()
