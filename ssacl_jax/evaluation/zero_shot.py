"""Zero-shot pathology scores from image and text embeddings (SPEC 5).

For class c the positive prompt is "There is {c}." and the negative prompts are
"the lung is clear.", "There is no {c}.", "no {c}.", "no evidence of {c}.". With cosine
similarities of l2-normalised embeddings, the score is the softmax over
[sim(positive), mean sim(negatives)] (divided by `temperature`), i.e. the probability
given to the positive. The class names are used verbatim (pass them in the case the
text encoder expects). All prompts go through `encode_text` in one call.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ssacl_jax.losses import l2_normalize

NEGATIVE_TEMPLATES = ("the lung is clear.", "There is no {c}.", "no {c}.",
                      "no evidence of {c}.")
POSITIVE_TEMPLATE = "There is {c}."


def class_prompts(c: str) -> list[str]:
  """[positive, *negatives] prompts of one class."""
  return [POSITIVE_TEMPLATE.format(c=c)] + [t.format(c=c) for t in NEGATIVE_TEMPLATES]


def zero_shot_scores(image_emb, encode_text: Callable[[list[str]], np.ndarray],
                     classes: Sequence[str], temperature: float = 1.0) -> np.ndarray:
  """float64 [n, C]: probability of the positive prompt for each image and class."""
  image = l2_normalize(np.asarray(image_emb))
  per_class = len(NEGATIVE_TEMPLATES) + 1
  prompts = [p for c in classes for p in class_prompts(c)]
  text = l2_normalize(np.asarray(encode_text(prompts)))
  if text.shape != (len(prompts), image.shape[-1]):
    raise ValueError(f"encode_text returned {text.shape}, expected "
                     f"({len(prompts)}, {image.shape[-1]})")
  sims = (image @ text.T).reshape(image.shape[0], len(classes), per_class)
  pos, neg = sims[..., 0], sims[..., 1:].mean(-1)
  # softmax over two logits -> probability of the first = sigmoid of their difference.
  return 1.0 / (1.0 + np.exp(-(pos - neg) / temperature))
