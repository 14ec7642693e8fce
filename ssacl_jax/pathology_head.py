"""The pathology head (SPEC 4): a 14-way multi-label classifier on the frozen encoder,
used at test time to predict the pathologies that prompt generation.

Fitting (`fit`; `--mode head`, or `load_or_fit` when WORKDIR has no head yet): extract
frozen features (CLS and mean patch token of an unmasked, query-free pass) for the
training and validation splits, fit a logistic-regression head on the labels
(1 = positive, all else negative), pick per-class thresholds that maximise F1 on
validation, and save both to WORKDIR/pathology_head/ (settings: config.head). At test
time its positive predictions give the pathology prompt and, through the anatomy table,
the decoder's leaf mask. Its evaluator is ssacl_jax/evaluators/pathology_head.py.
"""
from __future__ import annotations

import json
import logging
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ssacl_jax import anatomy, inference
from ssacl_jax.evaluation import classification

HEAD_DIR = "pathology_head"


def load_or_fit(config, ctx) -> dict:
  """WORKDIR's pathology head; fitted on ctx's model and saved first when there is none."""
  if (pathlib.Path(ctx.workdir) / HEAD_DIR / "head.npz").is_file():
    return load(ctx.workdir)
  return fit_on(config, ctx.restored(), ctx.workdir)[0]


def features_fn(model, images):
  cls, mean_patch, _ = model.image_features(images)
  return jnp.concatenate([cls, mean_patch], axis=-1).astype(jnp.float32)


def extract_features(r, split: str, max_examples=0):
  """(features [n, 2D], labels [n, 14]) over a split, bad records dropped."""
  fn = inference.jit_method(r, features_fn)
  feats, labels = [], []
  for batch, local in inference.eval_batches(r, split, max_examples=max_examples):
    f = inference.gather(fn(batch["image"]))
    valid = np.asarray(inference.gather(np.asarray(local["valid"], bool)))
    feats.append(np.asarray(f)[valid])
    labels.append(np.asarray(inference.gather(batch["labels"]))[valid])
  return np.concatenate(feats), np.concatenate(labels)


def fit_logistic(features, targets, *, steps: int, learning_rate: float, weight_decay: float,
                 seed: int = 0):
  """Full-batch AdamW logistic regression; features standardised. Returns the head dict."""
  mean, std = features.mean(0), features.std(0) + 1e-6
  x = jnp.asarray((features - mean) / std)
  y = jnp.asarray(targets, jnp.float32)
  params = {"w": jnp.zeros((x.shape[1], y.shape[1])), "b": jnp.zeros((y.shape[1],))}
  tx = optax.adamw(learning_rate, weight_decay=weight_decay)
  opt = tx.init(params)

  def loss(p):
    return optax.sigmoid_binary_cross_entropy(x @ p["w"] + p["b"], y).mean()

  @jax.jit
  def step(p, o):
    g = jax.grad(loss)(p)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o

  for _ in range(steps):
    params, opt = step(params, opt)
  return {"w": np.asarray(params["w"]), "b": np.asarray(params["b"]), "mean": mean, "std": std}


def predict_proba(head, features):
  z = (features - head["mean"]) / head["std"] @ head["w"] + head["b"]
  return 1.0 / (1.0 + np.exp(-z))


def positives(head, features) -> np.ndarray:
  """[n, 14] int8 labels in CheXpert coding: 1 where the head fires, else 0."""
  return (predict_proba(head, features) >= head["thresholds"]).astype(np.int8)


def fit(config, workdir) -> dict:
  """`--mode head`: fit on the checkpoint of config.eval.step (best on validation by
  default), select thresholds on validation, save; returns validation metrics."""
  return fit_on(config, inference.restore(config, workdir, step=str(config.eval.step)), workdir)[1]


def fit_on(config, r, workdir) -> tuple[dict, dict]:
  """Fit and save the head of restored model r (an inference.Restored or evaluators.Context);
  (the head, its validation metrics)."""
  h = config.head
  train_x, train_y = extract_features(r, config.data.train_split, h.max_train_examples)
  val_x, val_y = extract_features(r, config.data.eval_split)
  head = fit_logistic(train_x, train_y == 1, steps=h.steps, learning_rate=h.learning_rate,
                      weight_decay=h.weight_decay)
  val_p = predict_proba(head, val_x)
  head["thresholds"] = classification.pick_thresholds(val_p, val_y == 1)
  scores = {"val_auroc_mean": float(classification.mean_auroc(val_p, val_y == 1)),
            **{f"val_{k}": float(v) for k, v in classification.f1_at_thresholds(
                val_p, val_y == 1, head["thresholds"]).items()
               if np.ndim(v) == 0}}
  save(workdir, head, dict(step=r.step, step_rule=r.step_rule, **scores))
  logging.info("pathology head: %s", scores)
  print(json.dumps({"pathology_head": scores}), flush=True)
  return head, scores


def save(workdir, head: dict, info: dict) -> None:
  if jax.process_index() != 0:
    return
  out = pathlib.Path(workdir) / HEAD_DIR
  out.mkdir(parents=True, exist_ok=True)
  np.savez(out / "head.npz", **head)
  (out / "info.json").write_text(json.dumps(
      dict(info, pathologies=list(anatomy.PATHOLOGIES)), indent=1))


def load(workdir) -> dict:
  path = pathlib.Path(workdir) / HEAD_DIR / "head.npz"
  if not path.is_file():
    raise FileNotFoundError(
        f"{path} is missing: fit the pathology head first with --mode head (--mode eval "
        "fits it), or evaluate with --config.eval.pathology_source=oracle_reference_labels")
  with np.load(path) as f:
    return {k: f[k] for k in f.files}
