"""Configs: variant parsing, validation, and the config a workdir keeps.

A config file (configs/*.py, its recipe; configs/common.py the pieces they share) defines
`get_config(arg=None)`; `arg` is a comma-separated list of variants and `name=value` pairs
(`--config configs/demo.py:steps=50,warm_steps=0`), parsed by `parse_arg`. Single fields are
overridden on the command line with `--config.train.num_steps=10`.
"""
from __future__ import annotations

import ast
import pathlib

import ml_collections


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


def pop_variant(arg: str | None, name: str) -> tuple[str, str]:
  """('target=x,a=1', 'target') -> ('x', 'a=1'): one variant's value ('' if absent) and the
  others, for a config whose other variants depend on it."""
  items = [item for item in (arg or "").split(",") if item]
  taken = [item for item in items if item.partition("=")[0] == name]
  rest = ",".join(item for item in items if item not in taken)
  return (taken[-1].partition("=")[2] if taken else ""), rest


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


def validate(config, task_problems=()) -> None:
  """Fail early, naming the fields, when a config cannot work; task_problems: the task's
  own (ssacl_jax.tasks.validate passes them), listed in the same error."""
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
  problems += list(task_problems)
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




# The tasks config.task may name, and the checks of a task's own config section.


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

