"""SS-ACL's validation losses during training: the mean of each loss term over the
validation split (full batches of train.global_batch_size, a fixed masking key), and,
with config.eval.val_generate_examples > 0, scores of reports generated for that many
validation studies (val_language/*, val_clinical/*), so that checkpoint.best_metric can
choose the checkpoint by them. The prompts are the reference labels: the pathology head
is fitted after training.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from input_pipeline import labeler as labeler_lib
from ssacl_jax import inference, layers, sharding, state as state_lib
from ssacl_jax.evaluation import clinical, language
from ssacl_jax.models import ssacl

GENERATION_METRICS = ("micro14/f1", "micro5/f1", "macro14/f1", "example/f1")


def run(config, ctx, settings) -> dict:
  del settings
  ctx.restored()
  scores = validation_losses(config, ctx)
  if config.eval.val_generate_examples:
    scores.update({f"val_{k}": v for k, v in generation_scores(
        ctx, config.data.eval_split, config.eval.val_generate_examples).items()})
  return scores


def make_eval_step(config, model):
  """eval_step(params, batch, *consts, key) -> the model's metrics, without dropout."""
  rules = sharding.rules(config)
  compute_dtype = ssacl.dtype_from_name(config.model.dtype)

  def eval_step(params, batch, *args):
    consts, key = args[:-1], args[-1]
    params = layers.cast_matmul_weights(params, compute_dtype)
    with nn.logical_axis_rules(rules):
      _, metrics = model.apply({"params": params}, batch, *consts, rngs={"mask": key})
    return metrics

  return eval_step


def validation_losses(config, ctx) -> dict:
  """Mean validation losses (fixed masking key) over the validation split's full batches."""
  if "eval_step" not in ctx.compiled:  # compiled once per run
    ctx.compiled["eval_step"] = jax.jit(make_eval_step(config, ctx.model),
                                     out_shardings=NamedSharding(ctx.mesh, P()),
                                     compiler_options=state_lib.compiler_options())
  eval_step, key = ctx.compiled["eval_step"], jax.random.key(config.train.seed + 1)
  totals, count = {}, 0
  for batch, local in inference.eval_batches(ctx, config.data.eval_split,
                                            batch_size=config.train.global_batch_size,
                                            max_examples=config.eval.max_examples):
    if count and not np.all(local["valid"]):  # padded rows would weigh in the mean
      continue
    metrics = eval_step(ctx.params, batch, *ctx.anatomy_tokens, key)
    for k, v in metrics.items():
      if k.startswith("loss"):
        totals[k] = totals.get(k, 0.0) + float(v)
    count += 1
  return {f"val_{k}": v / max(count, 1) for k, v in totals.items()}


def generation_scores(r, split: str, num_examples: int) -> dict:
  """Generation scores on the first `num_examples` of a split: BLEU, ROUGE-L, CIDEr (no
  METEOR) and clinical F1, prompted by the reference labels."""
  generated, references, decode_cfg = [], [], inference.decode_config(r)
  for batch, local in inference.eval_batches(r, split, max_examples=num_examples):
    valid = np.asarray(local["valid"], bool)
    reports = inference.generate_reports(r, batch["image"], np.asarray(local["labels"]), decode_cfg)
    generated += [g for g, ok in zip(reports, valid) if ok]
    references += [str(t) for t, ok in zip(local["report"], valid) if ok]
  labeler = labeler_lib.default_labeler()
  lang = language.language_metrics(generated, references, with_meteor=False,
                                   lowercase=r.config.eval.lowercase)
  ce = clinical.clinical_efficacy(labeler.label_many(generated), labeler.label_many(references))
  return {**{f"language/{k}": v for k, v in lang.items()},
          **{f"clinical/{k}": ce[k] for k in GENERATION_METRICS}}

