"""Training-transform throughput of the Grain input pipeline, per core.

  python bench/input_pipeline.py [--records N] [--batches N] [--encoded]

Synthetic-like grey chest images (256 x 312 px, short side 256 as the builders store
them) and radiology-style reports in an in-memory source go through the full training
path at the paper's sizes (224 px, 3 channels, random affine, sentence-shuffled text,
prompt + report decoder ids, batch 32), single process, no reader threads, so CPU time
is one core's. `--encoded` stores PNG bytes instead of decoded arrays, adding the PNG
decode an array_record source does on read. Prints one JSON line with records/s per
core and the per-stage cost of one example.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import flags  # noqa: E402

flags.FLAGS(sys.argv[:1], known_only=True)

import ml_collections  # noqa: E402

from input_pipeline import features, pipeline, tokenizers, transforms  # noqa: E402
from ssacl_jax import anatomy  # noqa: E402

SENTENCES = [
    "The heart size is normal", "The mediastinal and hilar contours are unremarkable",
    "There is a small left pleural effusion", "No focal consolidation is seen",
    "Mild pulmonary vascular congestion", "There is no pneumothorax",
    "Right lower lobe opacity may reflect atelectasis or pneumonia",
    "Endotracheal tube terminates 4 cm above the carina", "Degenerative changes of the spine",
    "Moderate cardiomegaly is stable", "Lungs are clear bilaterally",
]


def chest_like(seed: int, h: int = 256, w: int = 312) -> np.ndarray:
  """uint8 [h, w]: dark lungs in a brighter body, a heart, a spine, noise."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[:h, :w] / np.array([h, w])[:, None, None]
  img = 0.55 + 0.1 * rng.standard_normal((h, w)) * 0.2
  for cx in (0.3, 0.7):
    lung = ((x - cx) / 0.17) ** 2 + ((y - 0.5) / 0.35) ** 2 < 1
    img[lung] -= 0.3
  img[((x - 0.55) / 0.15) ** 2 + ((y - 0.65) / 0.15) ** 2 < 1] += 0.25
  img[np.abs(x - 0.5) < 0.03] += 0.2
  return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)


def make_source(n: int, encoded: bool) -> list[dict]:
  rng = np.random.default_rng(0)
  out = []
  for i in range(n):
    k = int(rng.integers(3, 8))
    report = ". ".join(rng.choice(SENTENCES, k, replace=False)) + "."
    labels = rng.choice(np.array([1, 0, -1, -2], np.int8), anatomy.NUM_PATHOLOGIES)
    grey = chest_like(i)
    image = _png(grey) if encoded else grey[..., None]
    out.append({"image": image, "report": report.encode(), "study_id": f"b{i}".encode(),
                **features.label_fields(labels)})
  return out


def _png(grey: np.ndarray) -> bytes:
  import io

  from PIL import Image
  buf = io.BytesIO()
  Image.fromarray(grey).save(buf, format="PNG", compress_level=1)
  return buf.getvalue()


def make_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "data": dict(image_size=224, channels=3, text_len=100, report_len=100, prompt_len=16,
                   decoder_len=118, prompt_prob=0.5, flip_prob=0.0, affine_degrees=20.0,
                   affine_scale=(0.8, 1.2), max_skip_fraction=0.01, shuffle_seed=0,
                   num_workers=0, prefetch_buffer=2, read_threads=0),
      "train": {"global_batch_size": 32}})


def stage_costs(source, toks, opts, repeats: int = 50) -> dict:
  """Seconds per example of each training stage, on one core."""
  rng = np.random.default_rng(0)
  rec = source[0]
  t = {}

  def timed(name, fn):
    start = time.process_time()
    for _ in range(repeats):
      value = fn()
    t[name] = (time.process_time() - start) / repeats
    return value

  prepared = timed("prepare_record", lambda: pipeline.prepare_record(rec))
  grey = timed("resize", lambda: transforms.resize_grey(prepared["grey"], 224))
  timed("affine", lambda: transforms.affine_grey(grey, 13.0, 1.1))
  timed("normalise", lambda: transforms.normalise(grey, 3))
  timed("text_ids", lambda: transforms.text_sequence(
      transforms.contrastive_text(prepared["report"], rng), toks.text, 100))
  timed("decoder_ids", lambda: transforms.decoder_sequence(
      prepared["report"], prepared["prompt"], True, toks.decoder, 118, 16, 100))
  return {k: round(v * 1e3, 4) for k, v in t.items()}


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--records", type=int, default=256)
  parser.add_argument("--batches", type=int, default=24)
  parser.add_argument("--encoded", action="store_true")
  args = parser.parse_args()

  source = make_source(args.records, args.encoded)
  reports = [features.as_text(r["report"]) for r in source]
  with tempfile.TemporaryDirectory() as tmp:
    text_path, dec_path = tokenizers.ensure_tokenizers(tmp, "bench", reports, 1000, 1000)
    toks = tokenizers.TokenizerPair(tokenizers.load_tokenizer(text_path),
                                    tokenizers.load_tokenizer(dec_path))
  config = make_config()
  it = pipeline.make_train_iterator(source, config, toks)
  next(it)  # warm up
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in range(args.batches):
    next(it)
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  n = args.batches * 32
  print(json.dumps({
      "records_per_second_per_core": round(n / cpu, 1),
      "records_per_second_wall": round(n / wall, 1),
      "records": n, "cpu_seconds": round(cpu, 3), "wall_seconds": round(wall, 3),
      "stored_image": [256, 312], "image_size": 224, "source": "png" if args.encoded
      else "arrays", "ms_per_example": stage_costs(source, toks,
                                                  pipeline.DataOptions.from_config(config)),
  }))


if __name__ == "__main__":
  main()
