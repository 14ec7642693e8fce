"""Config helpers: the base config every configs/*.py starts from, variant parsing, checks.

A config file defines `get_config(arg=None)`; `arg` is a comma-separated list of variants
and `name=value` pairs (`--config configs/demo.py:steps=50,bf16`), parsed by `parse_arg`.
Single fields are overridden on the command line with `--config.train.num_steps=10`.
"""
from __future__ import annotations

import ast
import pathlib

import ml_collections

# Logical axis -> mesh axes. Parameters shard their 'embed' axis over fsdp (ZeRO-3 style)
# and their 'mlp'/'heads'/'vocab' axes over tensor; activations shard the batch over
# data x fsdp and their hidden axes over tensor.
DEFAULT_SHARDING_RULES = (
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


def parse_arg(arg: str | None, **defaults):
  """'a=1,b,c=x' -> ConfigDict of defaults updated; a bare name sets a bool to True."""
  values = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    name, _, raw = item.partition("=")
    if name not in values:
      raise ConfigError(f"unknown config variant {name!r} in {arg!r}; valid variants: "
                        f"{', '.join(sorted(values.keys()))} (e.g. configs/demo.py:steps=100)")
    if not raw:
      values[name] = True
      continue
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = raw
    try:
      values[name] = type(values[name])(value) if values[name] is not None else value
    except (TypeError, ValueError):
      raise ConfigError(f"config variant {name}={raw!r}: expected a "
                        f"{type(values[name]).__name__}, like {name}={values[name]!r}") from None
  return values


def base_config() -> ml_collections.ConfigDict:
  """The paper's model (SPEC 2) and the release's recipe (SPEC 6); configs edit this."""
  c = ml_collections.ConfigDict()
  c.task = "ssacl"             # what train.py trains: 'ssacl' (pretraining) or 'finetune'

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
  c.sharding_rules = DEFAULT_SHARDING_RULES

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
  i.required = ""              # comma list of the above that training needs (paper: gpt2,mae)

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

  # Evaluators (ssacl_jax/evaluators/<type>.py), sharing c.eval's settings. every_steps > 0:
  # inside training, on the validation split; 0: in --mode eval, on eval.split.
  c.evals = ml_collections.ConfigDict(dict(
      validation_loss=dict(type="validation_loss", every_steps=t.get_ref("eval_every_steps")),
      reports=dict(type="reports", every_steps=0),
      pathology_head=dict(type="pathology_head", every_steps=0),
      grounding=dict(type="grounding", every_steps=0),
      zero_shot=dict(type="zero_shot", every_steps=0)))

  c.head = h = ml_collections.ConfigDict()   # the pathology head (fitted by --mode head or eval)
  h.steps = 500
  h.learning_rate = 1e-2
  h.weight_decay = 1e-4
  h.max_train_examples = 0     # 0: the whole training split
  return c


class ConfigError(ValueError):
  pass


# The paper's pretrained starting points (SPEC 2): init field -> what it expects.
PRETRAINED_SOURCES = {
    "gpt2": "a local Hugging Face GPT-2 folder (config.json, model.safetensors or "
            "pytorch_model.bin, vocab.json + merges.txt or tokenizer.json): the report "
            "decoder and its BPE vocabulary",
    "mae": "an MAE-pretrained ViT-B/16 checkpoint (.pth, e.g. mae_pretrain_vit_base.pth): "
           "the image encoder",
}
PAPER_PRETRAINED = "gpt2,mae"


def check_required_init(config) -> None:
  """Training a config that names required init sources (config.init.required) stops,
  before anything is built, when one of them is not set."""
  init = config.get("init")
  required = [k.strip() for k in (init.get("required", "") if init else "").split(",") if k.strip()]
  unknown = [k for k in required if k not in PRETRAINED_SOURCES]
  if unknown:
    raise ConfigError(f"config.init.required names {', '.join(unknown)}; valid: "
                      f"{', '.join(PRETRAINED_SOURCES)}")
  missing = [k for k in required if not init[k]]
  if missing:
    raise ConfigError(
        "this config trains the paper's recipe, which starts from pretrained weights; set\n"
        + "".join(f"  --config.init.{k}=...  {PRETRAINED_SOURCES[k]}\n" for k in missing)
        + "or train from random initialisation, a different experiment from the paper, with "
        "the config's explicit :from_scratch variant (e.g. --config "
        "configs/ssacl_vitb16.py:from_scratch)")


def validate(config) -> None:
  """Fail early, naming the fields, when a config cannot work."""
  from ssacl_jax import anatomy
  m, d, t = config.model, config.data, config.train
  problems = []
  if m.image_size % m.patch:
    problems.append(f"model.image_size {m.image_size} is not a multiple of model.patch {m.patch}")
  if d.decoder_len < d.prompt_len + d.report_len + 2:
    problems.append(f"data.decoder_len {d.decoder_len} < prompt_len + report_len + 2 "
                    f"= {d.prompt_len + d.report_len + 2}")
  if d.text_len > m.text.max_len:
    problems.append(f"data.text_len {d.text_len} > model.text.max_len {m.text.max_len}")
  if d.anatomy_len > m.text.max_len:
    problems.append(f"data.anatomy_len {d.anatomy_len} > model.text.max_len {m.text.max_len}")
  prefix = anatomy.NUM_LEAVES + 1 + (m.image_size // m.patch) ** 2
  if prefix + d.decoder_len > m.report.max_positions:
    problems.append(f"prefix ({prefix}) + data.decoder_len ({d.decoder_len}) exceeds "
                    f"model.report.max_positions {m.report.max_positions}")
  if set(m.loss_weights.keys()) != {"ir", "cl", "lm", "ar", "ac"}:
    problems.append(f"model.loss_weights must have keys ir, cl, lm, ar, ac; got {sorted(m.loss_weights.keys())}")
  if t.grad_accum_steps < 1 or t.global_batch_size % t.grad_accum_steps:
    problems.append(f"train.global_batch_size {t.global_batch_size} is not a multiple of "
                    f"train.grad_accum_steps {t.grad_accum_steps}")
  if t.num_steps <= 0 and t.num_epochs <= 0:
    problems.append("train.num_steps and train.num_epochs are both 0: set one")
  from ssacl_jax import layers
  for part, formula in m.get("position_tables", {}).items():
    if formula not in layers.POSITION_FORMULAS:
      problems.append(f"model.position_tables.{part} {formula!r} must be one of "
                      f"{', '.join(layers.POSITION_FORMULAS)}")
  if not 0 < m.mask_ratio < 1:
    problems.append(f"model.mask_ratio {m.mask_ratio} must be in (0, 1)")
  problems += _labeler_problems(config.eval)
  if config.get("task", "ssacl") not in ("ssacl", "finetune"):
    problems.append(f"task {config.task!r} must be 'ssacl' or 'finetune'")
  if config.get("task") == "finetune":
    problems += _finetune_problems(config)
  problems += _eval_dataset_problems(config)
  if problems:
    raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


def _eval_dataset_problems(config) -> list[str]:
  from input_pipeline import builders
  dataset = config.get("eval", {}).get("dataset", "")
  if dataset in ("", config.data.dataset) or dataset in builders.PHRASE_GROUNDING:
    return []
  return [f"eval.dataset {dataset!r} must be '' (score data.dataset) or a phrase grounding "
          f"set ({', '.join(builders.PHRASE_GROUNDING)})"]


def _labeler_problems(e) -> list[str]:
  from input_pipeline import labeler as labeler_lib
  kind = e.get("labeler", labeler_lib.RULES)
  if kind not in labeler_lib.LABELERS:
    return [f"eval.labeler {kind!r} must be one of {', '.join(labeler_lib.LABELERS)}"]
  if kind == labeler_lib.CHEXBERT and not (e.get("chexbert_checkpoint") and e.get("chexbert_vocab")):
    return ["eval.labeler 'chexbert' needs eval.chexbert_checkpoint (the user's chexbert.pth) "
            "and eval.chexbert_vocab (the bert-base-uncased vocab.txt)"]
  return []


def _finetune_problems(config) -> list[str]:
  from input_pipeline import builders
  from input_pipeline.builders import downstream
  f, problems = config.get("finetune"), []
  if f is None:
    return ["task 'finetune' needs a finetune section (configs/finetune_*.py have one)"]
  if f.kind not in ("classification", "segmentation"):
    problems.append(f"finetune.kind {f.kind!r} must be 'classification' or 'segmentation'")
  try:
    downstream.split_for_fraction(f.label_fraction)
  except ValueError as e:
    problems.append(f"finetune.label_fraction: {e}")
  if config.data.dataset not in builders.DOWNSTREAM:
    problems.append(f"data.dataset {config.data.dataset!r} is not a downstream set "
                    f"({', '.join(builders.DOWNSTREAM)})")
  wanted = {"classification": "val_auroc_mean", "segmentation": "val_dice"}.get(f.kind)
  if config.checkpoint.best_metric != wanted or config.checkpoint.best_mode != "max":
    problems.append(f"checkpoint.best_metric/best_mode {config.checkpoint.best_metric!r}/"
                    f"{config.checkpoint.best_mode!r}: {f.kind} selects on {wanted!r}, 'max'")
  return problems


def finetune_config(arg, *, dataset: str, kind: str, base=None):
  """Fine-tuning a pretrained SS-ACL image encoder on a downstream set (ssacl_jax/finetune.py,
  scored by ssacl_jax/evaluators/downstream.py).

  base: the pretraining config whose model to use (default: the paper's, base_config()).
  Variants: label_fraction (1.0, 0.1, 0.01), linear_probe, init (the pretraining workdir
  or converted checkpoint; '' = random initialisation), steps, batch, lr, image_size.
  The recipe (AdamW, warm-up then cosine, random affine) is ours, not the paper's.
  """
  a = parse_arg(arg, label_fraction=1.0, linear_probe=False, init="", steps=5000, batch=64,
                lr=0.0, image_size=0)
  c = base if base is not None else base_config()
  c.task = "finetune"
  c.finetune = ml_collections.ConfigDict(dict(
      kind=kind, label_fraction=float(a.label_fraction),
      decoder_width=64,          # segmentation decoder: width after the 1x1 projection
      dice_weight=1.0))          # segmentation loss = BCE + dice_weight * soft Dice
  if a.image_size:
    c.model.image_size = a.image_size
  c.data.dataset = dataset
  c.data.builder = dict(image_size=256)
  c.data.affine_degrees = 10.0
  c.data.affine_scale = (0.9, 1.1)
  c.init.checkpoint = a.init
  c.init.parts = "image_encoder"
  c.init.required = ""  # the encoder comes from a pretraining run, not from GPT-2 / MAE
  c.optim.freeze = "image_encoder" if a.linear_probe else ""
  c.optim.learning_rate = a.lr or (1e-2 if a.linear_probe else 1e-4)
  c.optim.warmup_steps = max(1, a.steps // 20)
  c.optim.weight_decay = 0.05
  c.train.num_steps = a.steps
  c.train.global_batch_size = a.batch
  c.train.eval_every_steps = max(1, a.steps // 10)
  c.train.checkpoint_every_steps = c.train.eval_every_steps
  c.train.log_every_steps = max(1, min(50, a.steps // 20))
  c.evals = ml_collections.ConfigDict(dict(
      validation=dict(type="downstream", every_steps=c.train.get_ref("eval_every_steps")),
      test=dict(type="downstream", every_steps=0)))
  c.checkpoint.best_metric = "val_auroc_mean" if kind == "classification" else "val_dice"
  c.checkpoint.best_mode = "max"
  c.checkpoint.max_to_keep = 1
  c.eval.batch_size = a.batch
  return c


CONFIG_FILE = "config.json"


def save_workdir_config(config, workdir) -> None:
  """WORKDIR/config.json: what prediction and evaluation read back without --config."""
  path = pathlib.Path(workdir)
  path.mkdir(parents=True, exist_ok=True)
  (path / CONFIG_FILE).write_text(config.to_json_best_effort(indent=1))


def load_workdir_config(workdir) -> ml_collections.ConfigDict:
  import json

  path = pathlib.Path(workdir) / CONFIG_FILE
  if not path.is_file():
    raise FileNotFoundError(f"{path} is missing: not a training workdir of ssacl_jax "
                            "(train writes it), or pass the config explicitly")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def load_config_file(spec: str):
  """'path/to/config.py[:arg]' -> its get_config(arg), as --config does."""
  import importlib.util

  path, _, arg = spec.partition(":")
  if not pathlib.Path(path).is_file():
    raise ConfigError(f"config file {path} does not exist")
  module_spec = importlib.util.spec_from_file_location("_ssacl_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def check_overrides(argv, flag: str = "config") -> None:
  """Fail before anything runs on `--config.a.b=v` naming a key the config lacks."""
  spec = None
  for i, a in enumerate(argv):
    if a.startswith(f"--{flag}="):
      spec = a.split("=", 1)[1]
    elif a == f"--{flag}" and i + 1 < len(argv):
      spec = argv[i + 1]
  if spec is None:
    return
  config = load_config_file(spec)
  for arg in argv:
    if not arg.startswith(f"--{flag}."):
      continue
    path = arg[len(flag) + 3:].split("=", 1)[0].split(".")
    node = config
    for depth, key in enumerate(path):
      if not isinstance(node, ml_collections.ConfigDict) or key not in node:
        where = ".".join(path[:depth]) or "the top level"
        valid = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        raise ConfigError(f"unknown config key {'.'.join(path)!r} in {arg!r}: {where} has "
                          f"no {key!r}; valid keys there: {', '.join(valid) or '(none)'}")
      node = node[key]


def pod_config(arg, *, fsdp: int, num_workers: int, eval_batch_size: int):
  """The paper model on an accelerator slice: bf16 compute, float32 parameters, a
  (data, fsdp, tensor) mesh. Variants: batch, steps (0: the 51 epochs), fsdp, tensor,
  accum, remat, fp32, dataset, slices (`configs/tpu_v5e_256.py:batch=1024,remat`),
  from_scratch (no pretrained GPT-2 / MAE; otherwise training needs init.gpt2 and init.mae).
  slices=N: N such slices joined over DCN, the data axis across them (mesh.dcn_shape
  (N, 1, 1)); the batch is the global one over all slices."""
  a = parse_arg(arg, batch=256, steps=0, fsdp=fsdp, tensor=1, accum=1, remat=False,
                fp32=False, dataset="mimic_cxr", from_scratch=False, slices=1)
  c = base_config()
  c.init.required = "" if a.from_scratch else PAPER_PRETRAINED
  c.model.dtype = "float32" if a.fp32 else "bfloat16"
  c.model.param_dtype = "float32"
  c.model.remat = a.remat
  c.data.dataset = a.dataset
  c.data.num_workers = num_workers
  c.train.global_batch_size = a.batch
  c.train.grad_accum_steps = a.accum
  c.train.num_steps = a.steps
  c.mesh.shape = (-1, a.fsdp, a.tensor)
  c.mesh.dcn_shape = (a.slices, 1, 1) if a.slices > 1 else ()
  c.sharding_rules = DEFAULT_SHARDING_RULES   # embed->fsdp, mlp/heads/vocab->tensor
  c.eval.batch_size = eval_batch_size
  return c


def warm_start_configs(config, workdir):
  """[(config, workdir)] of the training stages: the warm start (if any), then the run."""
  ws = config.get("warm_start")
  if not ws or not ws.steps:
    return [(config, workdir)]
  stage0_dir = str(pathlib.Path(workdir) / ws.subdir)
  stage0 = config.copy_and_resolve_references()
  stage0.model.loss_weights = dict(ws.loss_weights)
  stage0.train.num_steps = ws.steps
  stage0.train.eval_every_steps = 0  # nothing to select: stage 1 takes the last step
  stage0.warm_start.steps = 0
  stage1 = config.copy_and_resolve_references()
  stage1.init.checkpoint, stage1.init.step, stage1.init.parts = stage0_dir, -1, ws.parts
  return [(stage0, stage0_dir), (stage1, workdir)]
