"""Ablations at demo scale (issue 20): the demo recipe once per ablation of configs/demo.py.

  python -m ssacl_jax.ablate --workdir runs/ablate [--variants full,ac,ar,ar_ac,cl,mask,prompt]
      [--config configs/demo.py] [--config.a.b=value ...]

Variant NAME is `configs/demo.py:ablate=NAME` (`configs.demo.ABLATIONS`: the fields it sets):
the `--config` with its overrides, then the ablation's fields, run by `ssacl_jax.demo.run`
into WORKDIR/NAME. So every variant has the same data, seeds, steps and decoding. A variant
whose eval metrics.json exists is reused, not rerun; an interrupted one resumes (training
from its last checkpoint; the head and eval are redone).

Writes WORKDIR/ablation.json and WORKDIR/ablation.md: a row per variant, the `COLUMNS`
below, each with its study-level 95% interval when metrics.json has "ci95", and each
ablation's paired comparison with the full model (`paired_with_full`: variant minus full,
by `ssacl_jax.compare` where that module is importable).
"""
from __future__ import annotations

import json
import logging
import pathlib
import shutil

from ssacl_jax import demo  # first: sets XLA_FLAGS before anything imports jax

from absl import app, flags

from configs import demo as demo_configs
from ssacl_jax import checkpointing, tasks

# (table header, metrics.json key); the keys are those the evaluators write (ssacl_jax/evaluators/).
COLUMNS = (
    ("BLEU-4", "language/BLEU_4"),
    ("CIDEr", "language/CIDEr"),
    ("CE-F1 micro-5", "clinical/micro5/f1"),
    ("leaves CNR", "grounding/leaves/ours/cnr"),
    ("leaves mIoU", "grounding/leaves/ours/miou"),
    ("leaves pointing", "grounding/leaves/ours/pointing_game"),
    ("findings CNR", "grounding/findings/ours/cnr"),
    ("findings mIoU", "grounding/findings/ours/miou"),
    ("findings pointing", "grounding/findings/ours/pointing_game"),
    ("zero-shot AUROC", "zero_shot/auroc_mean"),
    ("R@10", "retrieval/recall@10"),
)
# The grounding targets are relative to the random map, which is the same for every
# variant (same test split, boxes and seed): shown once under the table.
RANDOM_MAP = (("leaves", "grounding/leaves/random/pointing_game"),
              ("findings", "grounding/findings/random/pointing_game"))
FULL = "full"


def variant_config(base, name: str):
  """configs/demo.py:ablate=NAME on top of base (a resolved copy; base is unchanged)."""
  config = base.copy_and_resolve_references()
  demo_configs.apply_ablation(config, name)
  return config


def shared_warm_start(config, workdir: pathlib.Path, full_config, full_workdir: pathlib.Path):
  """The full model's finished warm start, copied into workdir when this variant's warm-start
  config is the same (ablations of L_ar, L_ac leave stage 0 unchanged): the resume then finds
  its last step and trains nothing. Returns the copied directory, or None."""
  if full_config is None:
    return None
  (stage0, dst), *_ = demo.warm_start_configs(config, str(workdir))
  (full_stage0, src), *_ = demo.warm_start_configs(full_config, str(full_workdir))
  src, dst = pathlib.Path(src), pathlib.Path(dst)
  if (not config.warm_start.steps or dst.exists() or stage0.to_json() != full_stage0.to_json()
      or stage0.train.num_steps not in checkpointing.finished_steps(src)):
    return None
  shutil.copytree(src, dst)
  return dst


def run_variant(config, workdir: pathlib.Path, name: str, full_config=None,
                full_workdir: pathlib.Path | None = None) -> None:
  """The demo recipe into workdir, unless its eval metrics.json is already there."""
  metrics = demo.eval_dir(config, workdir) / "metrics.json"
  if metrics.is_file():
    print(f"[ablate:{name}] reusing {metrics}", flush=True)
    return
  if shared_warm_start(config, workdir, full_config, full_workdir):
    print(f"[ablate:{name}] warm start: the same config as {FULL}'s, copied from it", flush=True)
  times = demo.run(config, str(workdir), tag=f"ablate:{name}")
  (workdir / "demo_times.json").write_text(json.dumps(times, indent=1))


def paired_with_full(full_eval: pathlib.Path, variant_eval: pathlib.Path):
  """{metric: {"a", "b", "difference", "ci95", "p_value"}} of the variant (a) against the
  full model (b) by the paired study-level bootstrap, `ssacl_jax.compare.compare` (issue 11),
  over the table's columns; None where that module is not importable or an eval has no
  per-study scores (one written before issue 11)."""
  try:
    from ssacl_jax import compare
    rows = compare.compare(variant_eval, full_eval)
  except (ImportError, FileNotFoundError) as e:
    logging.warning("no paired comparison with the full model: %s", e)
    return None
  return {k: rows[k] for _, k in COLUMNS if k in rows}


def read_row(config, workdir: pathlib.Path, name: str) -> dict:
  """One table row from a variant's eval metrics.json (its "ci95" when present)."""
  metrics = json.loads((demo.eval_dir(config, workdir) / "metrics.json").read_text())
  keys = [k for _, k in COLUMNS] + [k for _, k in RANDOM_MAP]
  ci95 = metrics.get("ci95", {})
  times = workdir / "demo_times.json"
  return {"variant": name, "what": demo_configs.ABLATIONS[name][0],
          "fields": demo_configs.ABLATIONS[name][1], "workdir": str(workdir),
          "values": {k: metrics.get(k) for k in keys},
          "ci95": {k: ci95[k] for k in keys if k in ci95},
          "times_s": json.loads(times.read_text()) if times.is_file() else None}


def format_cell(value, interval=None) -> str:
  if value is None:
    return "n/a"
  cell = f"{value:.3f}"
  if interval is not None:
    cell += f" [{interval[0]:.3f}, {interval[1]:.3f}]"
  return cell


def markdown(rows: list[dict]) -> str:
  lines = ["| variant | " + " | ".join(h for h, _ in COLUMNS) + " |",
           "|---|" + "---:|" * len(COLUMNS)]
  for row in rows:
    cells = [format_cell(row["values"][k], row["ci95"].get(k)) for _, k in COLUMNS]
    lines.append(f"| {row['variant']} ({row['what']}) | " + " | ".join(cells) + " |")
  if rows:
    random = ", ".join(f"{name} {format_cell(rows[0]['values'][k])}" for name, k in RANDOM_MAP)
    lines += ["", f"Random map pointing game (the same for every variant): {random}."]
  compared = [r for r in rows if r["variant"] != FULL]
  if any(r["paired_with_full"] is None for r in compared):
    lines += ["", "Paired comparison with the full model: not available (needs the full "
                  "variant and `ssacl_jax.compare`)."]
  paired = [r for r in compared if r["paired_with_full"] is not None]
  if paired:
    lines += ["", "Variant minus full, with the paired bootstrap's 95% interval:", "",
              lines[0], lines[1]]
    for r in paired:
      d = r["paired_with_full"]
      cells = [format_cell(d[k]["difference"], d[k]["ci95"]) if k in d else "n/a"
               for _, k in COLUMNS]
      lines.append(f"| {r['variant']} - full | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def run_ablations(base, workdir, variants=tuple(demo_configs.ABLATIONS)) -> list[dict]:
  """Runs (or reuses) each variant, then writes WORKDIR/ablation.json and ablation.md."""
  workdir = pathlib.Path(workdir)
  configs = {name: variant_config(base, name) for name in variants}  # unknown names fail here
  for name, config in configs.items():
    run_variant(config, workdir / name, name, configs.get(FULL), workdir / FULL)
  rows = [read_row(config, workdir / name, name) for name, config in configs.items()]
  for row in rows:
    name = row["variant"]
    row["paired_with_full"] = (
        paired_with_full(demo.eval_dir(configs[FULL], workdir / FULL),
                         demo.eval_dir(configs[name], workdir / name))
        if FULL in configs and name != FULL else None)
  (workdir / "ablation.json").write_text(json.dumps(
      {"columns": dict(COLUMNS), "random_map": dict(RANDOM_MAP), "rows": rows}, indent=1))
  (workdir / "ablation.md").write_text(markdown(rows))
  return rows


def main(argv):
  del argv
  f = flags.FLAGS
  if "ablate=" in str(f["config"].config_filename):
    raise app.UsageError("--config must be the full model (no ablate=...): the runner "
                         "applies each variant itself; choose them with --variants", exitcode=2)
  variants = [v for v in f.variants.split(",") if v]
  unknown = [v for v in variants if v not in demo_configs.ABLATIONS]
  if unknown or not variants:
    raise app.UsageError(f"--variants {f.variants!r}: unknown {unknown}; choose from "
                         f"{', '.join(demo_configs.ABLATIONS)}", exitcode=2)
  tasks.validate(f.config)
  print(markdown(run_ablations(f.config, f.workdir, variants)), flush=True)


if __name__ == "__main__":
  from ssacl_jax import cli
  demo.define_flags("runs/ablate")
  flags.DEFINE_string("variants", ",".join(demo_configs.ABLATIONS),
                      f"Comma list of ablations to run, of: {', '.join(demo_configs.ABLATIONS)}.")
  cli.run_app(main)
