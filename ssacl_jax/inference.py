"""Restore a trained SS-ACL and run it: its inputs, grounding maps and generated reports.

Shared by the evaluators (ssacl_jax/evaluators/) and prediction (predict.py): one place that turns
(config, workdir) into a mesh, tokenizers, the model and its restored parameters.
"""
from __future__ import annotations

import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding

from input_pipeline import pipeline, tokenizers as tok_lib
from ssacl_jax import (anatomy, checkpointing, data as data_lib, generate, pretrained, sharding,
                       state as state_lib)
from ssacl_jax.models import ssacl


@dataclasses.dataclass
class Restored:
  config: object
  mesh: object
  model: ssacl.SSACL
  params: dict
  tokenizers: tok_lib.TokenizerPair
  anatomy_tokens: tuple
  step: int
  batch_sharding: NamedSharding
  step_rule: str = "latest"   # how `step` was chosen (checkpointing.select_step)


def restore(config, workdir, *, step: int | str | None = None) -> Restored:
  """The model of `config` with parameters from WORKDIR/checkpoints.

  step: None or a negative number: the latest; a number: that step; "best", "latest" or
  a number as text: as config.eval.step (checkpointing.select_step).
  """
  mesh = sharding.make_mesh(config)
  jax.set_mesh(mesh)
  tokenizers = data_lib.load_tokenizers(config, workdir=workdir)
  anatomy_tokens = tok_lib.anatomy_tokens(tokenizers.text, config.data.anatomy_len)
  model = ssacl.build_model(config.model)
  setup = state_lib.setup_state(config, model, mesh, anatomy_tokens, ssacl.dummy_batch(config, 1))
  ckpt = checkpointing.Checkpointer(workdir, config, read_only=True)
  steps = ckpt.all_steps()
  if not steps and pretrained.requested(config):  # evaluate imported weights directly
    fresh = setup.init_fn(jax.random.key(config.train.seed))["params"]
    params = pretrained.load_initial_params(config, setup.abstract_state["params"], fresh)
    return Restored(config, mesh, model, params, tokenizers, anatomy_tokens, 0,
                    NamedSharding(mesh, sharding.batch_spec(config)),
                    f"imported weights ({config.init.checkpoint or 'config.init'})")
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {ckpt.directory}: train first "
                            f"(python -m ssacl_jax.main --config ... --workdir {workdir})")
  if isinstance(step, str):
    step, rule = checkpointing.select_step(config, workdir, steps, step)
  else:
    step, rule = (max(steps), "latest") if step is None or step < 0 else (step, f"step {step}")
  if step not in steps:
    raise FileNotFoundError(f"no checkpoint for step {step} in {ckpt.directory}; "
                            f"available: {sorted(steps)}")
  params = ckpt.restore(step, setup.abstract_state, params_only=True)["params"]
  logging.info("restored parameters of step %d from %s", step, ckpt.directory)
  return Restored(config, mesh, model, params, tokenizers, anatomy_tokens, step,
                  NamedSharding(mesh, sharding.batch_spec(config)), rule)


def provenance(r: Restored) -> dict:
  """What every output of a model says about it: its training data set and step."""
  from input_pipeline import build
  dataset = r.config.data.dataset
  return {"trained on": dataset, "synthetic": build.is_synthetic(dataset),
          "checkpoint step": r.step}


def gather(tree):
  """Per-process outputs -> the same full arrays on every process (numpy)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def jit_method(r: Restored, fn):
  """jit `fn(model, *args)` applied with the restored parameters."""
  def run(params, *args):
    return r.model.apply({"params": params}, *args, method=lambda m, *a: fn(m, *a))
  jitted = jax.jit(run)
  return lambda *args: jitted(r.params, *args)


# ----------------------------------------------------------------------------- model inputs
def encode_batch(tok, texts, length: int, cls: bool = True):
  """Texts -> (ids [n, length], mask [n, length]) for the text encoder; cls False for
  grounding phrases, which are encoded like the leaf names they stand in for."""
  pairs = [tok_lib.encode_text(tok, t, length, cls) for t in texts]
  return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def prompt_batch(tok, prompts, prompt_len: int):
  """Pathology prompts -> right-padded decoder ids [n, prompt_len + 1] ending in newline."""
  ids = np.full((len(prompts), prompt_len + 1), tok.pad_id, np.int32)
  mask = np.zeros_like(ids)
  for i, text in enumerate(prompts):
    if text:
      row = tok.encode(text)[:prompt_len] + [tok.newline_id]
      ids[i, :len(row)], mask[i, :len(row)] = row, 1
  return ids, mask


def labels_to_prompt_and_mask(labels, prompt: bool = True):
  """Pathology prompts ('' for all with prompt False: `eval.pathology_prompt`) and leaf masks."""
  prompts = [anatomy.prompt_text(l) if prompt else "" for l in labels]
  masks = np.stack([anatomy.leaf_mask_from_labels(l) for l in labels]).astype(np.int32)
  return prompts, masks


def decode_reports(tok, tokens, lengths) -> list[str]:
  out = []
  for row, n in zip(np.asarray(tokens), np.asarray(lengths)):
    # Ids past the tokenizer's vocabulary (the model's table may be larger) are dropped.
    row = [int(t) for t in row[:int(n)] if int(t) != tok.newline_id and int(t) < tok.vocab_size]
    out.append(tok.decode(row).strip())
  return out


# ----------------------------------------------------------------------------- model outputs
def grounding_maps(model, images, anatomy_ids, anatomy_mask, phrase_ids, phrase_mask):
  """The maps every grounding output is drawn from, and the image features:
  (anatomy maps [B, G+1, N], maps of each image's phrases [B, F+1, N] (phrase_ids
  [B * F, L], F per image), image embedding [B, Dt], CLS + mean patch features [B, 2D])."""
  b = images.shape[0]
  anat = model.anatomy_attention(images, anatomy_ids, anatomy_mask)
  phrase_q = model.phrase_queries(phrase_ids, phrase_mask).reshape(b, -1, model.config.encoder.width)
  phrase = model.query_attention(images, phrase_q)
  cls, mean_patch, image_emb = model.image_features(images)
  feats = jnp.concatenate([cls, mean_patch], axis=-1).astype(jnp.float32)
  return anat, phrase, image_emb.astype(jnp.float32), feats


def text_embeddings(model, ids, mask):
  return model.encode_text(ids, mask).astype(jnp.float32)


def decode_config(r: Restored):
  """config.eval.decode with the report tokenizer's end and padding ids."""
  dec_tok = r.tokenizers.decoder
  return generate.decode_config(r.config.eval.decode, eos_id=dec_tok.newline_id,
                                pad_id=dec_tok.pad_id)


def generate_reports(r: Restored, images, predicted, decode_cfg) -> list[str]:
  """Reports for a batch of images, prompted by the positive pathologies in `predicted`
  (config.eval.pathology_prompt) and masked to their leaves."""
  dec_tok = r.tokenizers.decoder
  prompts, leaf_masks = labels_to_prompt_and_mask(predicted,
                                                  r.config.eval.get("pathology_prompt", True))
  prompt_ids, prompt_mask = prompt_batch(dec_tok, prompts, r.config.data.prompt_len)
  gen = generate.generate_reports(r.model, {"params": r.params}, images, *r.anatomy_tokens,
                                  jnp.asarray(leaf_masks), decode_cfg,
                                  prompt_ids=prompt_ids, prompt_mask=prompt_mask)
  return decode_reports(dec_tok, gather(gen.tokens), gather(gen.lengths))


def eval_batches(r, split: str, *, batch_size: int = 0, max_examples: int = 0):
  """(global model batch, local batch with the studies' texts and boxes) over an SS-ACL
  split; r: an inference.Restored or evaluators.Context."""
  source = data_lib.load_source(r.config, split)
  if max_examples:
    source = data_lib.first_records(source, max_examples)

  def local_batches(source, process_index, process_count, per_process):
    return pipeline.make_eval_iterator(source, r.config, r.tokenizers, process_index,
                                       process_count, per_process)

  return data_lib.eval_batches(source, local_batches, r.mesh, r.batch_sharding,
                               pipeline.TRAIN_KEYS, batch_size or r.config.eval.batch_size)
