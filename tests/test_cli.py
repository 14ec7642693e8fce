"""What a user sees: pages that work from anywhere, one-line errors, damaged checkpoints."""
import errno
import html.parser
import os
import pathlib
import shutil
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from ssacl_jax import (anatomy, checkpointing, cli, config_lib, evaluators, inference,
                       pathology_head, predict, train)
from ssacl_jax.evaluators import _outputs, _studies
from ssacl_jax.evaluation import chromium, report_card

from helpers import ROOT, assert_links_resolve, natural_widths


# ----------------------------------------------------------------------------- pages
def fake_results(n=3, grid=4, image=32, findings=2):
  """_studies.collect's output for n studies (random maps), with the labeler's labels."""
  rng = np.random.default_rng(0)
  labels = rng.choice([1, 0, -1, -2], size=(n, anatomy.NUM_PATHOLOGIES))
  sentences = np.array([["There is a small left effusion.", ""]] * n, object)
  return dict(
      study_id=np.array([f"s{i}" for i in range(n)], object),
      generated=np.array(["No effusion."] * n, object), reference=np.array(["Effusion."] * n, object),
      predicted=(labels == 1).astype(np.int8), labels=labels, gen_labels=labels[::-1].copy(),
      ref_labels=labels, raw_image=rng.integers(0, 255, (n, image, image), np.uint8),
      anatomy_maps=rng.random((n, len(anatomy.NODES) + 1, grid * grid)),
      phrase_maps=rng.random((n, findings, grid * grid)), finding_sentences=sentences,
      finding_valid=sentences != "")


@pytest.fixture
def card(tmp_path, monkeypatch):
  """A report card written from another directory with a relative output path."""
  (tmp_path / "elsewhere").mkdir()
  monkeypatch.chdir(tmp_path / "elsewhere")
  cfg = ml_collections.ConfigDict(dict(num_report_card=0, split="test"))
  metrics = {"language/BLEU_4": 0.25, "baseline_most_frequent/language/BLEU_4": 0.125,
             "grounding/leaves/ours/cnr": 1.5, "grounding/leaves/random/cnr": 0.0,
             "grounding/leaves/cls_attention/cnr": 0.5,
             "ci95": {"language/BLEU_4": [0.2, 0.3]}, "protocol": {"dataset": "synthetic_cxr"}}
  _outputs.write_outputs(pathlib.Path("../work/eval/test"), fake_results(), metrics,
                         _studies.Scores(), 4, cfg,
                         {"trained on": "synthetic_cxr", "synthetic": True})
  monkeypatch.chdir(tmp_path)
  return tmp_path / "work" / "eval" / "test" / "report_card.html"


def test_report_card_links_resolve_after_the_folder_moves(card, tmp_path):
  moved = tmp_path / "moved"
  shutil.move(card.parent.parent.parent, moved)
  page = moved / "eval" / "test" / "report_card.html"
  # 3 studies x (image + 4 regions + 1 finding), each a thumbnail and a toggle target,
  # plus each study's main image.
  assert assert_links_resolve(page) == 3 * (2 * (1 + len(anatomy.REGIONS) + 1) + 1)
  text = page.read_text(encoding="utf-8")
  assert "http" not in text.replace("http-equiv", "")  # nothing from the network
  assert "Synthetic data" in text and "[0.200, 0.300]" in text
  assert "most frequent report: 0.125" in text and "CLS attention: 0.500" in text
  assert "<details>" in text and text.count("class='study'") == 3
  assert "finding: There is a small left effusion." in text


def test_report_card_images_decode_in_chromium(card):
  if chromium.find_chromium() is None:
    pytest.skip("Chromium is not installed (apt-get install chromium): the headless check "
                "of decoded heat maps needs it")
  widths = natural_widths(card)
  heat = [(src, w) for src, w in widths if "heatmaps/" in src]
  assert len(heat) == len(widths) == 3 * (1 + 1 + len(anatomy.REGIONS) + 1)  # main + thumbnails
  assert all(w == 256 for _, w in heat), [x for x in heat if x[1] != 256]


def test_predict_page_links_resolve_and_no_finding_is_exclusive(tmp_path):
  labels = np.zeros((2, anatomy.NUM_PATHOLOGIES), np.int8)
  labels[0, anatomy.PATHOLOGY_INDEX["No Finding"]] = 1
  labels[0, anatomy.PATHOLOGY_INDEX["Edema"]] = 1
  labels[1, anatomy.PATHOLOGY_INDEX["Support Devices"]] = 1
  fixed = anatomy.no_finding_exclusive(labels)
  assert anatomy.positive_pathologies(fixed[0]) == ("Edema",)
  assert anatomy.positive_pathologies(fixed[1]) == ("No Finding", "Support Devices")
  assert predict.output_dirs(["a/x.png", "b/x.png", "y.dcm"], "out") == [
      pathlib.Path("out/x"), pathlib.Path("out/x_2"), pathlib.Path("out/y")]


def test_quiet_logs_keep_library_info_and_known_chatter_out():
  import logging
  names = ("", "absl", "orbax", "tensorflow_datasets")
  levels = {n: logging.getLogger(n).level for n in names}
  try:
    cli.quiet_logs(verbose=False)
    assert not any(logging.getLogger(n).isEnabledFor(logging.INFO) for n in names)
    chatter = logging.LogRecord("absl", logging.WARNING, "", 0,
                                "Using custom data configuration: %s", ("x",), None)
    real = logging.LogRecord("absl", logging.WARNING, "", 0, "disk full", (), None)
    handler = logging.getLogger().handlers[0] if logging.getLogger().handlers else None
    from absl import logging as absl_logging
    for h in filter(None, (handler, absl_logging.get_absl_handler())):
      assert not h.filter(chatter) and h.filter(real)
    cli.quiet_logs(verbose=True)
    assert logging.getLogger("orbax").isEnabledFor(logging.INFO)
  finally:
    for n, level in levels.items():
      logging.getLogger(n).setLevel(level)


# ----------------------------------------------------------------------------- errors
def one_error_line(e: BaseException) -> str:
  lines = cli.error_line(e).splitlines()
  assert lines[-1].startswith("error: ") and "Traceback" not in cli.error_line(e)
  return lines[-1]


def test_config_errors_are_one_line():
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.load_config_file("configs/demo.py:bogus=1")
  assert one_error_line(e.value) == ("error: unknown config variant 'bogus' in 'bogus=1'; valid "
                                     "variants: ablate, batch, steps, warm_steps (e.g. configs/demo.py:steps=100)")
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.load_config_file("configs/demo.py:steps=many")
  assert "expected a int, like steps=" in one_error_line(e.value)
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.check_overrides(["x", "--config=configs/demo.py", "--config.train.bogus=1"])
  assert one_error_line(e.value).startswith("error: unknown config key 'train.bogus'")
  c = config_lib.load_config_file("configs/demo.py")
  c.model.patch = 7
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(c)
  assert "not a multiple of model.patch 7" in cli.error_line(e.value)


def test_path_and_image_errors_are_one_line(tmp_path):
  missing = tmp_path / "nowhere"
  with pytest.raises(FileNotFoundError) as e:
    config_lib.load_workdir_config(missing)
  assert one_error_line(e.value).endswith("or pass the config explicitly")
  unwritable = PermissionError(errno.EACCES, "Permission denied", str(missing))
  assert cli.error_line(unwritable) == (
      f"error: Permission denied: {missing}. Check the path exists and is writable, or pick "
      "another (--workdir, --out, --config.data.data_dir)")
  with pytest.raises(FileNotFoundError) as e:
    pathology_head.load(tmp_path)
  assert "fit the pathology head first with --mode head" in one_error_line(e.value)
  text, good = tmp_path / "notes.png", tmp_path / "good.png"
  text.write_text("not an image")
  report_card.save_grey_png(np.zeros((4, 6), np.uint8), good)
  images, errors = predict.read_images([str(text), str(missing), str(good)])
  assert [p for p, _ in images] == [str(good)] and images[0][1].shape == (4, 6)
  assert errors == [f"error: skipping {text}: unreadable image (12 bytes): not a PNG, JPEG "
                    "or DICOM file", f"error: skipping {missing} does not exist"]
  assert predict.aspect_note(images[0][1], 32).startswith("the 6x4 image was resized to 32x32")


def test_non_finite_loss_is_one_line():
  # The step's device-side record of its first non-finite step, as the host reads it.
  record = {"step": 5, "losses": np.array([1.0, np.inf]), "grad_norm": np.nan}
  with pytest.raises(train.NonFiniteLossError) as e:
    train.check_finite(record, ("ir", "cl"))
  line = one_error_line(e.value)
  assert line.startswith("error: non-finite cl, gradient norm at step 5") and "clip" in line
  assert cli.call(lambda argv: train.check_finite(record, ("ir", "cl")), []) == 2


def test_damaged_checkpoint_is_named_with_the_intact_steps(uninterrupted, tmp_path):
  workdir = tmp_path / "work"
  shutil.copytree(uninterrupted, workdir)
  steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  damaged = workdir / "checkpoints" / str(steps[-1]) / "state" / "ocdbt.process_0" / "d"
  for f in damaged.iterdir():
    f.write_bytes(f.read_bytes()[:100])
  config = config_lib.load_workdir_config(workdir)
  with pytest.raises(checkpointing.DamagedCheckpointError) as e:
    inference.restore(config, workdir)
  line = one_error_line(e.value)
  assert line.startswith(f"error: checkpoint step {steps[-1]} in {workdir / 'checkpoints'} is damaged")
  assert f"Other steps: {', '.join(map(str, steps[:-1]))}." in line
  assert "--config.eval.checkpoint_step=N" in line


def test_cli_bad_variant_exits_2_with_one_line(tmp_path):
  out = subprocess.run([sys.executable, "-m", "ssacl_jax.main", "--config", "configs/demo.py:bogus=1",
                        "--workdir", str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
                       timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
  assert out.returncode == 2
  assert out.stderr.strip().splitlines() == [
      "error: unknown config variant 'bogus' in 'bogus=1'; valid variants: ablate, batch, "
      "steps, warm_steps (e.g. configs/demo.py:steps=100)"]


# ----------------------------------------------------------------------------- demo
def test_demo_announces_each_stage_with_the_time_left(monkeypatch, capsys, tmp_path):
  from ssacl_jax import demo
  plan = [("warm start", 1500), ("training", 600), ("head", 1), ("eval", 1)]
  assert demo.eta_seconds(plan, 0, 0.0) == pytest.approx(199 + 403 + 6 + 30)
  assert demo.eta_seconds(plan, 1, 398.0) == pytest.approx(2 * (403 + 6 + 30))  # 2x slower
  ran = []
  monkeypatch.setattr(train, "train_and_evaluate", lambda c, w: ran.append(("train", w)))
  monkeypatch.setattr(pathology_head, "fit", lambda c, w: ran.append(("head", w)))
  monkeypatch.setattr(evaluators, "evaluate_workdir", lambda c, w: ran.append(("eval", w)))
  demo.run(config_lib.load_config_file("configs/demo.py"), str(tmp_path))
  assert [k for k, _ in ran] == ["train", "train", "head", "eval"]
  printed = capsys.readouterr().out.splitlines()
  stages = [l.split(":")[0] for l in printed if l.startswith("[demo] stage")]
  assert stages == [f"[demo] stage {k} of 4" for k in (1, 2, 3, 4)]
  assert printed[0].startswith(f"[demo] data: synthetic_cxr in {os.path.abspath('data')}")
  assert printed[-1].endswith((tmp_path / "eval" / "test" / "report_card.html").as_uri())


# ----------------------------------------------------------------------------- configs
RECIPES = sorted(p.stem for p in (ROOT / "configs").glob("*.py")
                 if p.stem not in ("__init__", "common"))


@pytest.mark.parametrize("name", RECIPES)
def test_each_recipe_is_valid_and_its_docstring_launches_it(name):
  import importlib
  path = f"configs/{name}.py"
  config_lib.validate(config_lib.load_config_file(path))
  doc = importlib.import_module(f"configs.{name}").__doc__
  assert "python -m ssacl_jax.main" in doc and f"--config {path}" in doc


def test_pod_targets_are_variants_of_the_paper_config():
  from configs import ssacl_vitb16
  assert set(ssacl_vitb16.TARGETS) == {n for n in RECIPES if n.startswith(("tpu_", "gpu_"))}
  for name in ssacl_vitb16.TARGETS:
    for arg in ("", ",batch=512,slices=2,fp32"):
      pod = config_lib.load_config_file(f"configs/{name}.py:{arg[1:]}")
      variant = config_lib.load_config_file(f"configs/ssacl_vitb16.py:target={name}{arg}")
      assert pod.to_json(sort_keys=True) == variant.to_json(sort_keys=True)
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.load_config_file("configs/ssacl_vitb16.py:target=tpu_v9")
  assert one_error_line(e.value).startswith("error: unknown pod target 'tpu_v9'; valid: tpu_v4_64")
