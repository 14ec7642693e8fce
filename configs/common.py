"""What every recipe in configs/ shares: the paper's model and the release's training recipe
(`base_config`), the sharding rules, and the fine-tuning recipe (`finetune_config`).

A recipe file starts from `base_config()` and changes what its experiment changes; reading
a recipe needs that file and this one.
"""
import ml_collections

# Logical axis -> mesh axes. Parameters shard their 'embed' axis over fsdp (ZeRO-3 style)
# and their 'mlp'/'heads'/'vocab' axes over tensor; activations shard the batch over
# data x fsdp and their hidden axes over tensor.
SHARDING_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv", None),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
    ("patch", None),
    ("positions", None),
    ("norm", None),
    ("layers", None),   # the stacked axis of model.scan_layers
)

# The pretrained starting points the paper's recipe needs (SPEC 2): config.init fields.
PAPER_PRETRAINED = "gpt2,mae"


def base_config() -> ml_collections.ConfigDict:
  """The paper's model (SPEC 2) and the release's recipe (SPEC 6); configs edit this."""
  c = ml_collections.ConfigDict()
  c.task = "ssacl"             # the module under ssacl_jax/tasks/ that train.py trains

  c.model = m = ml_collections.ConfigDict()
  m.image_size = 224
  m.patch = 16
  m.channels = 3
  m.dtype = "float32"          # compute dtype: 'bfloat16' for mixed precision
  m.param_dtype = "float32"
  m.remat = False
  m.scan_layers = False  # one nn.scan per block stack ([depth, ...] params); with remat: low memory
  m.encoder = dict(width=768, depth=12, num_heads=12, mlp_dim=3072)
  m.image_decoder = dict(width=768, depth=4, num_heads=6, mlp_dim=3072)
  m.text = dict(vocab_size=30000, max_len=100, width=384, depth=6, num_heads=6, mlp_dim=1536)
  m.report = dict(vocab_size=50257, max_positions=1024, width=768, depth=12, num_heads=12,
                  mlp_dim=3072)
  m.mask_ratio = 0.5
  m.norm_pix = False
  m.init_temperature = 0.03
  m.ac_lambda = 0.1
  m.ac_chunk_size = 0          # 0: no chunking of the [B, B, K, K] consistency logits
  m.share_unmasked_pass = True
  # Fixed sine-cosine formulas (layers.sincos_2d): the release's decoder always has its own
  # formula; its encoder has MAE's when it starts from MAE (python -m ssacl_jax.convert sets
  # both from what a release checkpoint holds).
  m.position_tables = dict(image_encoder="mae", image_decoder="release")
  m.dropout = 0.1              # text encoder and report decoder, in training only (SPEC 2)
  m.lm_anatomy_mask = True     # L_lm/generation: a leaf is visible only under the sample's
                               # regions (SPEC 3.6); False: every leaf visible (an ablation)
  m.loss_weights = dict(ir=1.0, cl=0.15, lm=1.0, ar=1.0, ac=1.0)

  c.data = d = ml_collections.ConfigDict()
  d.dataset = "synthetic_cxr"
  d.data_dir = "data"
  d.manual_dir = ""
  d.builder = ml_collections.ConfigDict()   # builder options (sizes, seed, image_size, ...)
  d.train_split = "train"
  d.eval_split = "validation"
  d.image_size = m.get_ref("image_size")
  d.channels = m.get_ref("channels")
  d.text_len = 100
  d.report_len = 100           # lengths count decoder-tokenizer tokens, as in the release
  d.prompt_len = 100
  d.decoder_len = 202          # prompt + newline + report + newline
  d.anatomy_len = 16
  d.prompt_prob = 0.5
  d.flip_prob = 0.0
  d.affine_degrees = 20.0
  d.affine_scale = (0.8, 1.2)
  d.max_skip_fraction = 0.01
  d.shuffle_seed = 0
  d.num_workers = 0
  d.prefetch_buffer = 2
  d.device_prefetch = 1        # batches put on the devices ahead of the running step
  # The report decoder's tokenizer follows its weights: init.gpt2's BPE, else SentencePiece.
  d.text_tokenizer = ""        # e.g. the release's WordPiece JSON (mimic_wordpiece.json)
  # Data choices of builders that have them (MIMIC-CXR); each choice is its own prepared set.
  d.views = ("PA", "AP")       # frontal; () keeps every view
  d.report_sections = ("findings", "impression")

  c.train = t = ml_collections.ConfigDict()
  t.num_epochs = 51            # the release's; the schedule counts full global batches
  t.num_steps = 0              # >0: this many optimizer steps instead of num_epochs
  t.global_batch_size = 256
  t.grad_accum_steps = 1
  t.checkpoint_every_steps = 1000
  t.log_every_steps = 50
  t.eval_every_steps = 5000
  t.seed = 0
  t.stop_at_step = 0           # >0: checkpoint and stop there (the schedule still spans num_steps)
  t.profile_steps = (0, 0)     # (start, stop): jax.profiler trace of those steps -> WORKDIR/profile
  t.peak_flops_per_device = 0.0  # for MFU; 0: ssacl_jax/hardware.py's table (none on CPU)
  t.compilation_cache_dir = "auto"  # 'auto': WORKDIR/../compilation_cache; '': none

  c.optim = o = ml_collections.ConfigDict()
  o.learning_rate = 2.5e-4
  o.init_learning_rate = 1e-6
  o.warmup_epochs = 2
  o.warmup_steps = 0           # >0: instead of warmup_epochs
  o.end_learning_rate = 0.0
  o.b1 = 0.9
  o.b2 = 0.95
  o.weight_decay = 0.05
  o.report_decoder_lr_mult = 0.25
  o.clip_grad_norm = 0.0       # 0: no clipping
  o.freeze = ""                # top-level parameter groups never updated ('image_encoder')

  c.mesh = ml_collections.ConfigDict()
  c.mesh.axes = ("data", "fsdp", "tensor")
  c.mesh.shape = (-1, 1, 1)    # -1 takes the devices the others leave
  # fsdp-sharded weights are all-gathered (in the compute dtype) once per step, not at
  # each use (3 encoder passes, forward and backward): bench/RESULTS.md "Collectives".
  c.mesh.gather_weights_once = True
  c.mesh.dcn_shape = ()        # multi-slice: slices per axis, e.g. (2, 1, 1); () = one slice
  c.sharding_rules = SHARDING_RULES

  c.checkpoint = ck = ml_collections.ConfigDict()
  ck.max_to_keep = 3
  ck.best_metric = "val_loss"  # keeps the best checkpoint by this validation metric too
  ck.best_mode = "min"
  ck.async_save = True
  ck.partial_restore = False   # allow restoring a checkpoint with missing/extra parameters

  # Pretrained starting point of a fresh run (ssacl_jax/pretrained.py; ignored on resume).
  c.init = i = ml_collections.ConfigDict()
  i.checkpoint = ""            # `python -m ssacl_jax.convert` --out, or a training workdir
  i.step = -1                  # its step; -1: latest
  i.parts = "auto"             # 'auto', 'all' or a comma list (ssacl_jax.models.ssacl.PARTS)
  i.gpt2 = ""                  # Hugging Face GPT-2 folder -> report_decoder
  i.mae = ""                   # MAE .pth -> image_encoder (+ image_decoder when present)
  i.required = ""              # comma list of the above that training needs (PAPER_PRETRAINED)

  c.eval = e = ml_collections.ConfigDict()
  e.split = "test"
  e.step = "best"              # checkpoint scored by eval and fitted by the head: 'best'
                               # (checkpoint.best_metric on validation), 'latest' or a step
  e.val_generate_examples = 0  # >0: validation also generates reports for this many
                               # examples (val_language/*, val_clinical/*; selectable)
  e.lowercase = False          # lower-case reports before language metrics (the release does not)
  e.bootstrap_resamples = 1000  # study-level bootstrap for metrics["ci95"]; 0: no intervals
  e.batch_size = 16
  e.max_examples = 0           # 0: whole split
  e.pathology_source = "head"  # or "oracle_reference_labels": the reference report's labels
  e.pathology_prompt = True    # prompt generation with those pathologies (False: no prompt)
  e.num_report_card = 0        # studies in report_card.html's browser (0: every one)
  e.labeler = "rules"          # clinical-efficacy labeler: "rules" or "chexbert" (SPEC 5)
  e.chexbert_checkpoint = ""   # the user's chexbert.pth, for labeler "chexbert"
  e.chexbert_vocab = ""        # the bert-base-uncased vocab.txt it was trained with
  e.chexbert_batch_size = 64   # reports per CheXbert batch (a multiple of the batch shards)
  e.decode = dict(method="beam", num_beams=3, max_new_tokens=100, min_new_tokens=80,
                  repetition_penalty=2.0, length_penalty=2.0, top_p=0.9, temperature=1.0,
                  gather_decoder_weights=True)   # on a mesh: once, not every step
  # A phrase grounding set to score instead of the report metrics (builders.PHRASE_GROUNDING,
  # e.g. 'ms_cxr'; '' scores data.dataset), its builder options and its files.
  e.dataset = ""
  e.builder = ml_collections.ConfigDict(dict(annotations=""))  # ms_cxr: the MS-CXR JSON
  e.manual_dir = ""            # '' = data.manual_dir (ms_cxr: the MIMIC-CXR-JPG root)

  c.head = h = ml_collections.ConfigDict()   # the pathology head stage (--mode head)
  h.steps = 500
  h.learning_rate = 1e-2
  h.weight_decay = 1e-4
  h.max_train_examples = 0     # 0: the whole training split

  # Evaluators (ssacl_jax/evaluators/<type>.py), sharing c.eval's settings. every_steps > 0:
  # inside training, on the validation split; 0: in --mode eval, on eval.split.
  c.evals = ml_collections.ConfigDict(dict(
      validation_loss=dict(type="validation_loss", every_steps=t.get_ref("eval_every_steps")),
      reports=dict(type="reports", every_steps=0),
      pathology_head=dict(type="pathology_head", every_steps=0),
      grounding=dict(type="grounding", every_steps=0),
      zero_shot=dict(type="zero_shot", every_steps=0)))
  return c


# The variants of every fine-tuning config (configs/finetune_*.py) and their defaults.
FINETUNE_VARIANTS = dict(label_fraction=1.0, linear_probe=False, init="", steps=5000, batch=64,
                         lr=0.0, image_size=0)


def finetune_config(c, *, dataset, kind, label_fraction, linear_probe, init, steps, batch, lr,
                    image_size=0):
  """Config c (a pretraining recipe: its model) fine-tuning its image encoder on a downstream
  set (config.task 'finetune'): `kind` 'classification' or 'segmentation', on
  `label_fraction` of the training labels (1.0, 0.1, 0.01); `linear_probe` freezes the
  encoder; `init` is the pretraining workdir or converted checkpoint ('' = random
  initialisation); lr 0 takes 1e-2 for a linear probe, else 1e-4; image_size 0 keeps c's.
  The recipe (AdamW, warm-up then cosine, random affine) is ours, not the paper's."""
  c.task = "finetune"
  c.finetune = ml_collections.ConfigDict(dict(
      kind=kind, label_fraction=float(label_fraction),
      decoder_width=64,          # segmentation decoder: width after the 1x1 projection
      dice_weight=1.0))          # segmentation loss = BCE + dice_weight * soft Dice
  if image_size:
    c.model.image_size = image_size
  c.data.dataset = dataset
  c.data.builder = dict(image_size=256)
  c.data.affine_degrees = 10.0
  c.data.affine_scale = (0.9, 1.1)
  c.init.checkpoint = init
  c.init.parts = "image_encoder"
  c.init.required = ""  # the encoder comes from a pretraining run, not from GPT-2 / MAE
  c.optim.freeze = "image_encoder" if linear_probe else ""
  c.optim.learning_rate = lr or (1e-2 if linear_probe else 1e-4)
  c.optim.warmup_steps = max(1, steps // 20)
  c.optim.weight_decay = 0.05
  c.train.num_steps = steps
  c.train.global_batch_size = batch
  c.train.eval_every_steps = max(1, steps // 10)
  c.train.checkpoint_every_steps = c.train.eval_every_steps
  c.train.log_every_steps = max(1, min(50, steps // 20))
  c.evals = ml_collections.ConfigDict(dict(
      validation=dict(type="downstream", every_steps=c.train.get_ref("eval_every_steps")),
      test=dict(type="downstream", every_steps=0)))
  c.checkpoint.best_metric = "val_auroc_mean" if kind == "classification" else "val_dice"
  c.checkpoint.best_mode = "max"
  c.checkpoint.max_to_keep = 1
  c.eval.batch_size = batch
  return c
