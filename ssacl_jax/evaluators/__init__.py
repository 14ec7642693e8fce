"""Evaluators chosen by config: `config.evals` = {name: {type, every_steps, its settings}}.

Each type is a module of this package with `run(config, ctx, settings) -> {metric: value}`
(it may write files under the workdir); `get(type)` finds it by name. An entry with
every_steps > 0 runs inside training at that interval (validation_loss and downstream score
the validation split there, so that checkpoint.best_metric can choose among the
checkpoints); every_steps 0: in `--mode eval` (`evaluate_workdir`), on config.eval.split.
config.eval holds what they share (split, checkpoint step, batch size, decoding,
labeler, ...).

  validation_loss  the SS-ACL losses on the validation split (and, with
                   eval.val_generate_examples, scores of reports generated for it)
  reports          generated reports: language and clinical scores against the references
  pathology_head   AUROC/F1 of the pathology head (fitted and saved first when missing)
  grounding        leaf and finding maps: CNR, mIoU, pointing game; MS-CXR phrase grounding
                   when eval.dataset is a phrase grounding set
  zero_shot        zero-shot AUROC and image-report retrieval
  downstream       AUROC or Dice of a fine-tuned encoder

The per-study evaluators (reports, pathology_head, grounding, zero_shot) share one pass
over the split (_studies.py); `evaluate_workdir` then writes WORKDIR/eval/<split>/
(_outputs.py: metrics.json, reports.jsonl, per_study.npz, heatmaps, report_card.html).
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil

from ssacl_jax import inference


@dataclasses.dataclass
class Context:
  """What the evaluators of one evaluation score: the model and its parameters, either
  of the live train state (`Context(config, workdir, mesh=..., model=..., tokenizers=...,
  anatomy_tokens=...).at(state)` at each evaluation) or restored from the workdir by the
  first evaluator that needs them (`restored`). `cache` holds what the evaluators of one
  evaluation share (the per-study pass); `compiled`, the jitted functions of a run."""
  config: object
  workdir: str
  during_training: bool = False
  mesh: object = None
  batch_sharding: object = None
  model: object = None
  params: object = None
  tokenizers: object = None
  anatomy_tokens: tuple = ()
  step: int = 0
  step_rule: str = "latest"
  cache: dict = dataclasses.field(default_factory=dict)
  compiled: dict = dataclasses.field(default_factory=dict)

  def at(self, state) -> "Context":
    """A fresh evaluation of the parameters and step of a train state (compiled kept)."""
    return dataclasses.replace(self, params=state["params"], step=int(state["step"]), cache={})

  def restored(self, restore=None) -> "Context":
    """This context, with the checkpoint of config.eval.step restored into it first when it
    has no parameters. restore(config, workdir, step=...) -> inference.Restored; default
    inference.restore (SS-ACL)."""
    if self.params is None:
      r = (restore or inference.restore)(self.config, self.workdir,
                                         step=str(self.config.eval.step))
      for field in dataclasses.fields(r):
        setattr(self, field.name, getattr(r, field.name))
    return self


def types() -> list[str]:
  """The evaluator types: the public modules of this package."""
  return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def get(kind: str):
  """The evaluator module of a config.evals entry's type."""
  if kind in types():
    return importlib.import_module(f"{__name__}.{kind}")
  raise ValueError(f"config.evals type {kind!r}: expected one of {', '.join(types())}")


def check(config) -> None:
  """Fails before any work when a config.evals entry names no evaluator type."""
  for name, settings in config.evals.items():
    try:
      get(settings.type)
    except ValueError as e:
      raise ValueError(f"config.evals.{name}: {e}") from None


def due(config, during_training: bool, step: int | None = None) -> list[str]:
  """Names of the config.evals entries to run: inside training, those whose every_steps
  divides `step` (or that have one and `step` is the last); otherwise those with none."""
  names = []
  for name, settings in config.evals.items():
    every = settings.get("every_steps", 0)
    if during_training:
      if every and (step % every == 0 or step == config.train.num_steps):
        names.append(name)
    elif not every:
      names.append(name)
  return names


def run_all(config, ctx: Context, during_training: bool, step: int | None = None) -> dict:
  """Run the evaluators due (see `due`) on ctx; their metrics, merged."""
  ctx.during_training = during_training
  metrics = {}
  for name in due(config, during_training, step):
    settings = config.evals[name]
    metrics.update(get(settings.type).run(config, ctx, settings))
  return metrics


def evaluate_workdir(config, workdir) -> dict:
  """`--mode eval`: every evaluator of config.evals with no interval, on the checkpoint of
  config.eval.step; the per-study ones' outputs written to WORKDIR/eval/<split>/.
  Returns the metrics (those of metrics.json)."""
  from ssacl_jax.evaluators import _outputs
  check(config)
  ctx = Context(config, str(workdir))
  metrics = run_all(config, ctx, during_training=False)
  if _outputs.studies_scored(ctx):
    metrics = _outputs.write(config, ctx)
  return metrics
