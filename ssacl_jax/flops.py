"""FLOPs of one training step, counted by hand from the shapes (train MFU and bench/).

XLA's `cost_analysis()` counts a `lax.scan` body once rather than once per iteration
(model.scan_layers, gradient accumulation), so MFU uses the matmul FLOPs counted here from
the config. One implementation for the trainer's logged MFU and bench/train_step.py.
"""
from __future__ import annotations

from ssacl_jax import anatomy


def block_flops(tokens: int, width: int, mlp: int) -> int:
  """Matmul FLOPs of one transformer block on one sequence (forward).

  q, k, v, out projections 4 x 2TD^2; MLP 2 x 2TDM; scores QK^T 2T^2D; weights x V 2T^2D.
  """
  t, d, m = tokens, width, mlp
  return 8 * t * d * d + 4 * t * d * m + 4 * t * t * d


def stack_flops(n_seqs: int, tokens: int, cfg) -> int:
  return n_seqs * cfg.depth * block_flops(tokens, cfg.width, cfg.mlp_dim)


def hand_flops(config, batch: int, *, release: bool = False, release_prompt_frac: float = 0.5,
               release_dead_mlm: bool = False) -> dict:
  """Matmul FLOPs of one SS-ACL training step, counted from the shapes.

  Forward pieces (per step, B = batch), in FLOPs (2 per multiply-add):
    encoder: 3 passes (MAE 1 + n_keep tokens; unmasked with G graph queries G + 1 + N;
      masked with graph queries G + 1 + n_keep) + 3 patch embeddings of N patches
      (a 4th pass K + 1 + N when model.share_unmasked_pass is False);
    image decoder: MAE on 1 + N tokens (embed on 1 + n_keep, head on 1 + N); L_ar on
      P = 7 sequences of 1 + MAX_CHILDREN tokens and 7 of 1 token (head on token 0);
    text encoder: B reports x text_len tokens + K leaf names x anatomy_len, pooler,
      the leaf-query and image->text projections;
    report decoder: the K + 1 + N prefix projection, GPT-2 blocks on
      K + 1 + N + decoder_len tokens, logits on decoder_len x vocab;
    losses: the [B, B, K, K] consistency similarities and the [B, B] contrast.
  The step is counted as 3x the forward (backward = 2x forward), the usual convention,
  except for work no gradient reaches (the stop-gradient parent branch of L_ar), counted
  once; elementwise work (softmax, norms, GELU, AdamW) is not counted.

  release=True counts the official code's shapes instead (what the PyTorch peer runs): 4
  encoder passes, anatomy names padded to 100 tokens, the GPT-2 sequence K + 1 + N +
  100 report tokens (+ a 15-token prompt with probability release_prompt_frac) with
  logits on every position, the unmasked graph-query pass forward only (it feeds only the
  detached parent branch), and optionally the dead MLM head (30000 words) on every
  text-encoder call (forward only). This reproduces the peer's stated 2,611 GFLOP at
  batch 4 (with the MLM head) within 1%.
  """
  m, d = config.model, config.data
  b = batch
  n = (m.image_size // m.patch) ** 2
  n_keep = int(n * (1 - m.mask_ratio))
  patch_dim = m.patch * m.patch * m.channels
  g, k, p = anatomy.NUM_NODES, anatomy.NUM_LEAVES, anatomy.NUM_PARENTS
  e, dec, txt, rep = m.encoder, m.image_decoder, m.text, m.report
  out = {}

  # Image encoder.
  passes = [1 + n_keep, g + 1 + n, g + 1 + n_keep]
  if release or not m.share_unmasked_pass:
    passes.append(k + 1 + n)
  out["encoder"] = (len(passes) * b * 2 * n * patch_dim * e.width
                    + sum(stack_flops(b, t, e) for t in passes))
  # Work no gradient flows through (forward only): the parent branch of L_ar, and in the
  # release the whole unmasked graph-query pass, which feeds only that detached branch.
  no_grad = 0
  if release:
    no_grad += b * 2 * n * patch_dim * e.width + stack_flops(b, g + 1 + n, e)

  # Image decoder: MAE reconstruction and anatomy reconstruction (token 0 only at the head).
  mae = (b * 2 * (1 + n_keep) * e.width * dec.width + stack_flops(b, 1 + n, dec)
         + b * 2 * (1 + n) * dec.width * patch_dim)
  seq = 1 + anatomy.MAX_CHILDREN
  ar = (b * p * 2 * seq * e.width * dec.width + stack_flops(b * p, seq, dec)
        + b * p * 2 * dec.width * patch_dim)
  parent = b * p * 2 * e.width * dec.width + stack_flops(b * p, 1, dec) + b * p * 2 * dec.width * patch_dim
  no_grad += parent
  out["image_decoder"] = mae + ar + parent

  # Text encoder (+ projections around it).
  anat_len = 100 if release else d.anatomy_len
  text = stack_flops(b, d.text_len, txt) + stack_flops(k, anat_len, txt)
  text += (b + k) * 2 * txt.width * txt.width                   # pooler
  text += k * 2 * txt.width * e.width + b * 2 * e.width * txt.width
  out["text_encoder"] = text
  dead_mlm = 0
  if release and release_dead_mlm:
    tokens = b * d.text_len + k * anat_len
    dead_mlm = tokens * (2 * txt.width * txt.width + 2 * txt.width * txt.vocab_size)

  # Report decoder.
  prefix = k + 1 + n
  if release:
    report_tokens = 100
    lens = [(prefix + report_tokens + 15, release_prompt_frac),
            (prefix + report_tokens, 1 - release_prompt_frac)]
    lm = sum(w * (stack_flops(b, t, rep) + b * 2 * t * rep.width * rep.vocab_size)
             for t, w in lens)
  else:
    t = prefix + d.decoder_len
    lm = stack_flops(b, t, rep) + b * 2 * d.decoder_len * rep.width * rep.vocab_size
  out["report_decoder"] = int(b * 2 * prefix * e.width * rep.width + lm)

  out["losses"] = 2 * b * b * k * k * e.width + 2 * b * b * txt.width
  forward = sum(out.values())
  result = {f"{name}_fwd": v for name, v in out.items()}
  result["forward"] = forward
  result["no_grad_fwd"] = no_grad
  result["step"] = 3 * forward - 2 * no_grad + dead_mlm
  if dead_mlm:
    result["dead_mlm_fwd"] = dead_mlm
  return result


def compiled_flops(compiled, num_devices: int = 1) -> float | None:
  """XLA's FLOPs of a compiled step over all devices (its count is per device), or None
  when the compiler gives none. For tasks without a hand count (fine-tuning)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = (cost or {}).get("flops")
  return float(flops) * num_devices if flops else None
