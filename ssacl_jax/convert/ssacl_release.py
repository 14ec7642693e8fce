"""The authors' released `.pth` -> every part of the model.

Its image encoder and decoder are MAE's (mae.py), its report decoder a GPT2LMHeadModel
(gpt2.py) under RELEASE_GPT2, its text encoder a Hugging Face BertModel under RELEASE_BERT
(mapped here: no other source has one), and its projections and scalars RELEASE_NAMES.
"""
from __future__ import annotations

from ssacl_jax.convert import gpt2, mae
from ssacl_jax.convert.tensors import Leaf, Report, Tensors, embedding, linear, norm, stack

# Our top-level projections/scalars -> the release's module names (model_ssacl.py of the
# authors' repository): `img_mlp = nn.Linear(embed_dim, 384)` projects image tokens for the
# global contrast, `bert_proj = nn.Linear(384, embed_dim)` turns pooled leaf text into
# queries, `opt_proj` feeds GPT-2, `pos_weight_img = nn.Linear(num_patches, 1)` gives the
# visible-patch scale, `Tpar` is the learned logit scale (`logit_scale` there is unused).
# Each entry lists accepted names, first match wins: extend a tuple to accept a variant.
RELEASE_NAMES = {
    "image_to_text": ("img_mlp",),
    "text_to_query": ("bert_proj",),
    "to_decoder": ("opt_proj",),
    "visible": ("pos_weight_img",),
    "logit_scale": ("Tpar",),
}
RELEASE_BERT = "bert_encoder.model.bert."
RELEASE_GPT2 = "opt_model.transformer."


def bert_block(t: Tensors, prefix: str) -> dict:
  """A Hugging Face BertLayer (post-norm) -> our Block with pre_norm=False."""
  a = f"{prefix}.attention"
  return {"attn": {"query": linear(t, f"{a}.self.query"), "key": linear(t, f"{a}.self.key"),
                   "value": linear(t, f"{a}.self.value"), "out": linear(t, f"{a}.output.dense")},
          "norm1": norm(t, f"{a}.output.LayerNorm"),
          "mlp": {"fc1": linear(t, f"{prefix}.intermediate.dense"),
                  "fc2": linear(t, f"{prefix}.output.dense")},
          "norm2": norm(t, f"{prefix}.output.LayerNorm")}


def text_encoder(t: Tensors, prefix: str) -> dict:
  e = f"{prefix}embeddings"
  for buf in ("position_ids", "token_type_ids"):
    t.skip(f"{e}.{buf}", "index buffer, not a parameter")
  return {"word_embed": embedding(t, f"{e}.word_embeddings"),
          "pos_embed": embedding(t, f"{e}.position_embeddings"),
          "type_embed": embedding(t, f"{e}.token_type_embeddings"),
          "embed_norm": norm(t, f"{e}.LayerNorm"),
          "blocks": stack(t, f"{prefix}encoder.layer", bert_block),
          "pooler": linear(t, f"{prefix}pooler.dense")}


def release_heads(t: Tensors) -> dict:
  """The release's projections and scalars -> our top-level parameters (RELEASE_NAMES)."""
  pick = lambda key: t.first(RELEASE_NAMES[key], ".weight" if key != "logit_scale" else "")
  vis = pick("visible")
  w, b = t.get(f"{vis}.weight"), t.get(f"{vis}.bias")
  scale_name = pick("logit_scale")
  scale = t.get(scale_name)
  if "logit_scale" in t and scale_name != "logit_scale":
    t.skip("logit_scale", f"unused by the release's losses (the learned scale is {scale_name})")
  return {"image_to_text": linear(t, pick("image_to_text")),
          "text_to_query": linear(t, pick("text_to_query")),
          "to_decoder": linear(t, pick("to_decoder")),
          "visible_w": Leaf(w.reshape(-1), (f"{vis}.weight",), f"reshape {list(w.shape)}->[{w.size}]"),
          "visible_b": Leaf(b.reshape(()), (f"{vis}.bias",), "reshape [1]->[]"),
          "logit_scale": Leaf(scale.reshape(()), (scale_name,), "reshape ->[]")}


read = mae.read  # a `.pth` state dict too


def to_parts(t: Tensors, model_cfg, report: Report) -> dict:
  gpt2.skip_tied_head(t, "opt_model.lm_head.weight", RELEASE_GPT2 + "wte.weight", report)
  t.skip_matching(r"bert_encoder\.model\.cls\..*",
                  "the masked-LM head the release evaluates but never uses in a loss")
  return {"image_encoder": mae.image_encoder(t, report),
          "image_decoder": mae.image_decoder(t, report, model_cfg),
          "text_encoder": text_encoder(t, RELEASE_BERT),
          "report_decoder": gpt2.report_decoder(t, RELEASE_GPT2),
          **release_heads(t)}
