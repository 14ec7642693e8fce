"""Model-independent evaluation (SPEC section 5).

Everything here works on numpy arrays and strings, so it can score any model's output:

  language        BLEU-1..4, METEOR, ROUGE-L, CIDEr-D (coco-caption scorers)
  clinical        clinical efficacy from CheXpert-coded label arrays (named conventions)
  classification  per-class AUROC, F1-optimal thresholds
  grounding       heat-map smoothing / resizing, CNR, mIoU, pointing game
  retrieval       image-to-report Recall@K, MRR, label-based precision@K
  zero_shot       prompt-based zero-shot pathology scores
  bootstrap       study-level bootstrap intervals and paired comparison of two runs
  report_card     heat-map overlays and an HTML report card
"""
