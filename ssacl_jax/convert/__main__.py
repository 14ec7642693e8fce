"""Import pretrained PyTorch / Hugging Face weights into our parameter tree.

  python -m ssacl_jax.convert --kind gpt2 --src hf/gpt2 --config configs/ssacl_vitb16.py --out ckpt/gpt2
  python -m ssacl_jax.convert --kind mae --src mae_pretrain_vit_base.pth --config ... --out ckpt/mae
  python -m ssacl_jax.convert --kind ssacl_release --src ssacl-best.pth --config ... --out ckpt/release

Kinds:
  gpt2           a local Hugging Face GPT-2 folder (config.json and model.safetensors,
                 flax_model.msgpack or pytorch_model.bin; any size) -> report_decoder.
  mae            an MAE `.pth` ('model' holds the state dict): the ViT encoder ->
                 image_encoder, and its decoder, when present -> image_decoder.
  ssacl_release  the authors' released `.pth` -> every component (see
                 ssacl_release.RELEASE_NAMES).

Output: OUT/checkpoints/0/ is a full train state at step 0 written by
ssacl_jax.checkpointing.Checkpointer (parameters the source does not provide keep the
config's fresh initialisation; the meta records which top-level parts were converted),
plus OUT/config.json (with config.model.position_tables set to the formulas of the
source's fixed position tables) and OUT/conversion_report.txt. So `--workdir OUT --mode eval` and
`inference.restore(config, OUT)` read it as they read a training workdir, and training
starts from it with `--config.init.checkpoint=OUT` (ssacl_jax/pretrained.py takes the
converted parts only, unless --config.init.parts says otherwise).

The mapping report lists every source tensor as mapped (to which parameter, how),
skipped (with the reason) or unmapped (an error unless --allow_unmapped), and every
model parameter of the converted parts that the source does not provide (an error
unless --allow_missing, except the documented cases kept at their fresh value).

torch and safetensors (the `convert` extra) are imported only by the readers that need
them; the mapping itself is numpy.
"""
from __future__ import annotations

import sys

from absl import flags
from ml_collections import config_flags

from ssacl_jax import cli
from ssacl_jax.convert import ConversionError, KINDS, run
from ssacl_jax.models import ssacl


def main() -> None:
  """Flags are defined here, not at import, so importing this module defines none."""
  config_flag = config_flags.DEFINE_config_file("config", None, "configs/X.py[:variants]; "
                                                "fields overridden with --config.a.b=v")
  kind = flags.DEFINE_enum("kind", None, KINDS, "What --src holds.")
  src = flags.DEFINE_string("src", None, "HF GPT-2 folder (gpt2) or .pth file (mae, ssacl_release).")
  out = flags.DEFINE_string("out", None, "Output directory (a new converted workdir).")
  parts = flags.DEFINE_string("parts", "", "Comma list of parts to convert (default: all the "
                              f"source provides): {', '.join(ssacl.PARTS)}.")
  allow_missing = flags.DEFINE_bool("allow_missing", False, "Keep model parameters the source "
                                    "lacks at their fresh initialisation.")
  allow_unmapped = flags.DEFINE_bool("allow_unmapped", False,
                                     "Ignore source tensors that map to nothing.")
  dry_run = flags.DEFINE_bool("dry_run", False, "Print the report, write nothing.")
  flags.mark_flags_as_required(["config", "kind", "src"])

  def convert_main(argv):
    del argv
    try:
      run(kind.value, src.value, config_flag.value, out.value, parts=parts.value,
          allow_missing=allow_missing.value, allow_unmapped=allow_unmapped.value,
          dry_run=dry_run.value)
    except (ConversionError, FileNotFoundError, FileExistsError) as e:
      print(f"error: {e}", file=sys.stderr)
      raise SystemExit(1)

  cli.run_app(convert_main)


if __name__ == "__main__":
  main()
