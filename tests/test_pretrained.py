"""The paper config starts from pretrained GPT-2 and MAE, and the decoder speaks GPT-2's BPE.

configs/ssacl_vitb16.py needs init.gpt2 and init.mae; here they point at fixtures written
by the test with random weights: a GPT-2 folder (config.json, model.safetensors, and the
tiny byte-level BPE of test_tokenizers: 256 bytes + 8 merges + <|endoftext|> = 265 ids)
and an MAE .pth. ViT-B/16 and GPT-2 small are too slow for CI, so the paper config runs
with the model and data sizes of tests/tiny_config.py (and the fixtures have those sizes);
everything else is the paper config's. Needs the `convert` extra (torch, transformers).
"""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="writing the MAE .pth needs torch (the convert extra)")
transformers = pytest.importorskip("transformers", reason="the GPT-2 fixture needs transformers")

from configs import ssacl_vitb16, tpu_v5e_256  # noqa: E402
from input_pipeline import features, tokenizers as tok_lib, transforms  # noqa: E402
from ssacl_jax import config_lib, data as data_lib, evaluators, inference, train  # noqa: E402
from ssacl_jax.evaluators import _studies  # noqa: E402
from helpers import ReleaseLike, gpt2_config, hf_bpe_files, mae_file, randomise, tiny_config  # noqa: E402

BPE_VOCAB = 265


def paper_config(data_dir, gpt2="", mae=""):
  """configs/ssacl_vitb16.py at tiny sizes (the test data and fixtures' sizes)."""
  # The paper accumulates 2 micro-steps: 16 = 2 x 8 devices.
  c, tiny = ssacl_vitb16.get_config("batch=16,steps=2"), tiny_config()
  for k in ("image_size", "patch", "encoder", "image_decoder", "text"):
    c.model[k] = tiny.model[k]
  c.model.report = dict(tiny.model.report, vocab_size=BPE_VOCAB)
  for k in ("text_len", "report_len", "prompt_len", "decoder_len", "anatomy_len", "builder"):
    c.data[k] = tiny.data[k]
  c.data.data_dir = data_dir
  c.train.log_every_steps = c.train.checkpoint_every_steps = 2
  c.train.eval_every_steps = 0
  c.checkpoint.async_save = False
  c.eval.batch_size, c.eval.max_examples, c.eval.num_report_card = 8, 4, 1
  c.eval.pathology_source = _studies.ORACLE
  c.eval.decode = dict(c.eval.decode, method="greedy", max_new_tokens=4, min_new_tokens=2)
  c.init.gpt2, c.init.mae = str(gpt2), str(mae)
  return c


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
  """(GPT-2 folder, its torch model, MAE .pth, its torch state dict) at the tiny sizes."""
  folder = tmp_path_factory.mktemp("gpt2")
  config = paper_config("")
  torch.manual_seed(0)
  gpt = randomise(transformers.GPT2LMHeadModel(gpt2_config(config.model.report)), seed=3)
  gpt.config.bos_token_id = gpt.config.eos_token_id = BPE_VOCAB - 1
  gpt.save_pretrained(folder, safe_serialization=True)
  hf_bpe_files(folder)
  mae = tmp_path_factory.mktemp("mae") / "mae.pth"
  state = mae_file(randomise(ReleaseLike(config), seed=5), mae)
  return folder, gpt, mae, state


def test_paper_configs_stop_without_pretrained_weights(tiny_data_dir, tmp_path):
  workdir = tmp_path / "run"
  with pytest.raises(config_lib.ConfigError) as err:
    train.train_and_evaluate(paper_config(tiny_data_dir), str(workdir))
  msg = str(err.value)
  assert "--config.init.gpt2=" in msg and "GPT-2 folder" in msg
  assert "--config.init.mae=" in msg and ".pth" in msg
  assert ":from_scratch" in msg
  assert not workdir.exists()  # stopped before building anything
  config = paper_config(tiny_data_dir, gpt2="somewhere")
  with pytest.raises(config_lib.ConfigError, match="init.mae") as err:
    config_lib.check_required_init(config)
  assert "init.gpt2" not in str(err.value)
  for get in (ssacl_vitb16.get_config, tpu_v5e_256.get_config):
    assert get().init.required == "gpt2,mae"
    assert get("from_scratch").init.required == ""
    config_lib.check_required_init(get("from_scratch"))
  assert tiny_config().init.required == ""
  # The release's lengths, in decoder-tokenizer (GPT-2 BPE) tokens.
  paper = ssacl_vitb16.get_config()
  config_lib.validate(paper)
  assert (paper.data.report_len, paper.data.prompt_len, paper.data.decoder_len) == (100, 100, 202)
  assert (paper.eval.decode.min_new_tokens, paper.eval.decode.max_new_tokens) == (80, 100)


def test_decoder_vocabulary_mismatch_names_both_sizes_and_sources(tiny_data_dir, weights,
                                                                  tmp_path):
  folder, _, mae, _ = weights
  other = tmp_path / "gpt2_300"
  other.mkdir()
  hf = json.loads((folder / "config.json").read_text())
  (other / "config.json").write_text(json.dumps(dict(hf, vocab_size=300)))
  hf_bpe_files(other)
  config = paper_config(tiny_data_dir, other, mae)
  config.model.report.vocab_size = 300
  with pytest.raises(ValueError) as err:
    data_lib.load_tokenizers(config)
  msg = str(err.value)
  assert f"tokenizer ({other}) has 265 ids" in msg
  assert f"from the GPT-2 weights (init.gpt2={other / 'config.json'}), has 300 rows" in msg
  config = paper_config(tiny_data_dir, folder, mae)
  config.model.report.vocab_size = 512
  with pytest.raises(ValueError, match=r"config.model.report.vocab_size is 512 but .* has 265 "
                     r"rows; set --config.model.report.vocab_size=265"):
    data_lib.load_tokenizers(config)
  (other / "config.json").write_text(json.dumps(dict(hf, eos_token_id=0)))
  config = paper_config(tiny_data_dir, other, mae)
  with pytest.raises(ValueError, match=r"has eos id 264 but .* says eos_token_id 0"):
    data_lib.load_tokenizers(config)


def test_a_checkpoint_started_from_gpt2_brings_its_vocabulary(weights, tmp_path):
  folder = weights[0]
  out = tmp_path / "converted"
  config_lib.save_workdir_config(paper_config("", gpt2=folder), out)  # as convert.run writes
  config = paper_config("")
  config.init.checkpoint = str(out)
  assert data_lib.decoder_tokenizer_source(config) == str(folder)
  assert data_lib.embedding_table(config)[0] == BPE_VOCAB
  config.init.parts = "image_encoder,text_encoder"  # its decoder not taken: own vocabulary
  assert data_lib.decoder_tokenizer_source(config) == ""


@pytest.mark.slow
def test_paper_config_trains_and_evaluates_from_gpt2_and_mae(tiny_data_dir, weights,
                                                            tmp_path, monkeypatch):
  folder, gpt, mae, mae_state = weights
  config = paper_config(tiny_data_dir, folder, mae)
  config.optim.learning_rate = config.optim.init_learning_rate = 0.0  # weights stay as loaded
  workdir = tmp_path / "run"
  train.train_and_evaluate(config, str(workdir))

  # The workdir keeps the GPT-2 tokenizer files (not its weights) and restores with them.
  assert sorted(p.name for p in (workdir / "tokenizers" / "decoder").iterdir()) == [
      "merges.txt", "vocab.json"]
  r = inference.restore(config, str(workdir))
  bpe = r.tokenizers.decoder
  assert r.step == 2 and isinstance(bpe, tok_lib.Gpt2BpeTokenizer)
  assert (bpe.vocab_size, bpe.newline_id) == (BPE_VOCAB, 198)
  np.testing.assert_array_equal(r.params["report_decoder"]["wte"]["embedding"],
                                gpt.transformer.wte.weight.detach().numpy())
  np.testing.assert_array_equal(r.params["image_encoder"]["cls"].reshape(-1),
                                mae_state["cls_token"].numpy().reshape(-1))

  # The training pipeline's decoder targets are the BPE ids of the report.
  model_batch, local = next(inference.eval_batches(r, "test", batch_size=8))
  report = transforms.clean_text(features.as_text(local["report"][0]))
  want = bpe.encode(report)[:config.data.report_len] + [198]
  assert np.asarray(jax.device_get(model_batch["dec_ids"]))[0, :len(want)].tolist() == want

  # Evaluation decodes the generated ids with the same BPE.
  decoded = []
  original = inference.decode_reports

  def spy(tok, tokens, lengths):
    out = original(tok, tokens, lengths)
    decoded.append((tok, [bpe.decode([int(t) for t in row[:int(n)] if int(t) != 198]).strip()
                          for row, n in zip(np.asarray(tokens), np.asarray(lengths))], out))
    return out

  monkeypatch.setattr(inference, "decode_reports", spy)
  metrics = evaluators.evaluate_workdir(config, str(workdir))
  assert metrics["examples"] == 4
  assert decoded and all(isinstance(tok, tok_lib.Gpt2BpeTokenizer) and ours == out
                         for tok, ours, out in decoded)
  lines = (workdir / "eval" / "test" / "reports.jsonl").read_text().splitlines()
  rows = [json.loads(l) for l in lines]
  assert [row["generated"] for row in rows] == [t for _, _, out in decoded for t in out][:4]
