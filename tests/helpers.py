"""What several test modules share: the tiny configs, random batches, training-run readers,
subprocess commands, file fixtures (DICOM, tokenizer files, pages) and a PyTorch copy of
the release's module layout. Test modules import from here, never from each other."""
from __future__ import annotations

import functools
import html.parser
import json
import math
import os
import pathlib
import re
import sys
import urllib.parse

import numpy as np

from ssacl_jax import anatomy

ROOT = pathlib.Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- configs
def tiny_config():
  """The smallest SS-ACL config, for fast tests (tests/tiny_config.py on the command line)."""
  from configs import demo
  c = demo.get_config("steps=4,batch=8")
  m = c.model
  m.image_size, m.patch = 32, 8
  m.encoder = dict(width=32, depth=2, num_heads=4, mlp_dim=64)
  m.image_decoder = dict(width=32, depth=1, num_heads=4, mlp_dim=64)
  m.text = dict(vocab_size=512, max_len=24, width=32, depth=1, num_heads=4, mlp_dim=64)
  m.report = dict(vocab_size=512, max_positions=96, width=32, depth=2, num_heads=4, mlp_dim=64)
  d = c.data
  d.text_len, d.report_len, d.prompt_len, d.decoder_len, d.anatomy_len = 24, 20, 6, 28, 6
  d.builder = dict(train_size=32, validation_size=8, test_size=8, image_size=48, seed=0)
  return c


def tiny_finetune_config(kind="classification", arg=None):
  """Fine-tuning on the synthetic downstream set: tiny_config's model at 64 px with 16 px
  patches (the same 16 tokens, findings more visible)."""
  from configs import common
  from configs.finetune_synthetic import synthetic_finetune_config
  from ssacl_jax import config_lib
  variants = config_lib.parse_arg(arg or "steps=40,batch=16", **common.FINETUNE_VARIANTS)
  c = synthetic_finetune_config(tiny_config(), kind, **variants)
  c.model.image_size, c.model.patch = 64, 16
  c.checkpoint.async_save = False
  return c


PEAK = 1e9   # a made-up per-device peak, so the CPU runs log MFU


def config_for(data_dir, **train_fields):
  """tiny_config for a 6-step run on data_dir: logs every step, checkpoints every 2."""
  c = tiny_config()
  c.data.data_dir = data_dir
  c.train.num_steps = 6
  c.train.log_every_steps = 1
  c.train.checkpoint_every_steps = 2
  c.train.eval_every_steps = 0
  c.checkpoint.async_save = False
  c.train.peak_flops_per_device = PEAK
  for k, v in train_fields.items():
    c.train[k] = v
  return c


def eval_config(data_dir):
  """config_for with validation that generates reports and keeps the best BLEU-4."""
  c = config_for(data_dir, num_steps=4, eval_every_steps=2)
  c.eval.val_generate_examples = 4
  c.checkpoint.best_metric, c.checkpoint.best_mode = "val_language/BLEU_4", "max"
  c.eval.decode.max_new_tokens = 10
  c.eval.decode.min_new_tokens = 2
  c.eval.batch_size = 8
  c.eval.num_report_card = 3
  c.head.steps = 30
  return c


# ----------------------------------------------------------------------------- batches
def random_batch(config, batch_size, seed=0):
  """An SS-ACL batch of random images and ids with padded tails, and anatomy tokens."""
  from ssacl_jax.models import ssacl
  rng = np.random.default_rng(seed)
  b = ssacl.dummy_batch(config, batch_size)
  v_text, v_dec = config.model.text.vocab_size, config.model.report.vocab_size
  b["image"] = rng.normal(size=b["image"].shape).astype(np.float32)
  b["text_ids"] = rng.integers(3, v_text, size=b["text_ids"].shape).astype(np.int32)
  b["text_mask"][:, config.data.text_len // 2:] = 0
  b["dec_ids"] = rng.integers(3, v_dec, size=b["dec_ids"].shape).astype(np.int32)
  b["dec_mask"][:, -5:] = 0
  b["dec_loss_mask"] = b["dec_mask"].astype(np.float32)
  b["dec_loss_mask"][:, :3] = 0
  b["leaf_mask"] = rng.integers(0, 2, size=b["leaf_mask"].shape).astype(np.int32)
  ids, mask = ssacl.dummy_anatomy_tokens(config)
  ids = rng.integers(3, v_text, size=ids.shape).astype(np.int32)
  return b, (ids, mask)


# ----------------------------------------------------------------------------- training runs
def read_records(workdir):
  return [json.loads(x) for x in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def read_metrics(workdir):
  """{step: record} of the training records (those with a loss)."""
  return {r["step"]: r for r in read_records(workdir) if "loss" in r}


# ----------------------------------------------------------------------------- command line
def main_command(workdir, *overrides):
  return [sys.executable, "-m", "ssacl_jax.main", "--config", str(ROOT / "tests" / "tiny_config.py"),
          "--workdir", str(workdir), *overrides]


def env():
  """The environment of a CLI subprocess: CPU, one device (conftest's 8 fake ones dropped)."""
  e = dict(os.environ, JAX_PLATFORMS="cpu")
  e.pop("XLA_FLAGS", None)
  return e


# ----------------------------------------------------------------------------- pages
class _Links(html.parser.HTMLParser):
  def __init__(self):
    super().__init__()
    self.links = []

  def handle_starttag(self, tag, attrs):
    self.links += [v for k, v in attrs if k in ("src", "href", "data-src") and v]


def page_links(page: pathlib.Path) -> list[str]:
  parser = _Links()
  parser.feed(page.read_text(encoding="utf-8"))
  return parser.links


def assert_links_resolve(page: pathlib.Path) -> int:
  """Every relative link of the page names an existing file; the only absolute ones are
  the repository's docs/EVALUATION.md. Returns the number of relative links."""
  relative = 0
  for link in page_links(page):
    url = urllib.parse.urlparse(link)
    if url.scheme == "file":
      assert url.path.endswith("/docs/EVALUATION.md"), link
      continue
    assert not url.scheme and not link.startswith("/"), link
    assert (page.parent / urllib.parse.unquote(url.path)).is_file(), f"{page}: {link}"
    relative += 1
  return relative


# ----------------------------------------------------------------------------- files
def write_dicom(path: pathlib.Path, pixels: np.ndarray, *, photometric: str = "MONOCHROME2",
                bits_stored: int | None = None) -> None:
  """A single-frame grey Secondary Capture DICOM of uint8 or uint16 pixels (the shared
  data has none)."""
  import pydicom
  from pydicom.dataset import Dataset, FileMetaDataset
  from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
  pixels = np.ascontiguousarray(pixels)
  bits = pixels.dtype.itemsize * 8
  stored = bits_stored or bits
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
  meta.MediaStorageSOPInstanceUID = generate_uid()
  meta.TransferSyntaxUID = ExplicitVRLittleEndian
  ds = Dataset()
  ds.file_meta = meta
  ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
  ds.Rows, ds.Columns = pixels.shape
  ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
  ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, stored, stored - 1, 0
  ds.PixelData = pixels.tobytes()
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  pydicom.dcmwrite(path, ds, enforce_file_format=True)


# A tiny byte-level BPE: the 256 byte symbols in GPT-2's order (so '\n' is 198 as in the
# real vocabulary), these 8 merges and <|endoftext|>: 265 ids.
MERGES = [("Ġ", "l"), ("e", "f"), ("Ġl", "ef"), ("Ġlef", "t"), ("l", "u"), ("n", "g"),
          ("lu", "ng"), ("Ġ", "lung")]


def hf_bpe_files(folder):
  """Writes MERGES as Hugging Face's vocab.json + merges.txt; returns (folder, vocab)."""
  from input_pipeline import tokenizers
  vocab = {c: i for i, c in enumerate(tokenizers.bytes_to_unicode().values())}
  for a, b in MERGES:
    vocab[a + b] = len(vocab)
  vocab[tokenizers.GPT2_EOT] = len(vocab)
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
  (folder / "merges.txt").write_text(
      "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in MERGES), encoding="utf-8")
  return folder, vocab


# The release's WordPiece vocabulary as tests need it: the anatomy names' words and a few
# report words.
RELEASE_WP_WORDS = (
    ["[PAD]", "[UNK]", "[CLS]", "[MASK]", ".", ",", "1", "2", "3", "cm", "the", "heart",
     "is", "normal", "no", "effusion", "small", "pleural", "size", "there", "opac", "##ity",
     "##ities", "pneumo", "##thorax", "and", "in"] +
    sorted({w for leaf in anatomy.LEAVES for w in leaf.split()}))


def release_wordpiece_json(path, individual_digits=True):
  """Writes a WordPiece JSON in the layout of the release's mimic_wordpiece.json (SPEC 2):
  BERT normaliser, Whitespace + Digits pre-tokenizers, no post-processor, special tokens
  [PAD] [UNK] [CLS] [MASK] and no [SEP]. Returns the path."""
  vocab = {t: i for i, t in enumerate(RELEASE_WP_WORDS)}
  spec = {
      "version": "1.0", "truncation": None, "padding": None,
      "added_tokens": [{"id": vocab[t], "content": t, "single_word": False, "lstrip": False,
                        "rstrip": False, "normalized": False, "special": True}
                       for t in ("[PAD]", "[UNK]", "[CLS]", "[MASK]")],
      "normalizer": {"type": "BertNormalizer", "clean_text": True,
                     "handle_chinese_chars": True, "strip_accents": None, "lowercase": True},
      "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
          {"type": "Whitespace"}, {"type": "Digits", "individual_digits": individual_digits}]},
      "post_processor": None,
      "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
      "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                "max_input_chars_per_word": 100, "vocab": vocab},
  }
  path.write_text(json.dumps(spec), encoding="utf-8")
  return path


# ----------------------------------------------------------------------------- PyTorch release
# torch and transformers come with the optional `convert` extra, so the release's PyTorch
# layout is built on first use: `from helpers import ReleaseLike` imports them, importing
# helpers does not.
_TORCH_NAMES = ("ReleaseLike", "gpt2_config", "randomise", "mae_file")


def __getattr__(name):
  if name in _TORCH_NAMES:
    return _torch_release()[name]
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def mae_sincos(dim, grid, release=False):
  """MAE's get_2d_sincos_pos_embed(dim, grid, cls_token=True), written out independently;
  release=True: the SS-ACL release's copy, which divides by embed_dim / 2 once more."""
  def one_d(d, pos):
    omega = np.arange(d // 2, dtype=np.float64) / (d / 2.0)
    if release:
      omega /= d / 2.0
    omega = 1.0 / 10000 ** omega
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)
  g = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64))  # w, h
  emb = np.concatenate([one_d(dim // 2, g[0]), one_d(dim // 2, g[1])], axis=1)
  return np.concatenate([np.zeros((1, dim)), emb]).astype(np.float32)


@functools.cache
def _torch_release():
  import torch
  import transformers
  from torch import nn as tnn

  class TAttention(tnn.Module):
    def __init__(self, dim, heads):
      super().__init__()
      self.heads = heads
      self.qkv = tnn.Linear(dim, 3 * dim)
      self.proj = tnn.Linear(dim, dim)

    def forward(self, x, mask=None):
      b, n, d = x.shape
      q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
      a = (q * (d // self.heads) ** -0.5) @ k.transpose(-2, -1)
      if mask is not None:
        a = a + mask
      return self.proj((a.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d))

  class TMlp(tnn.Module):
    def __init__(self, dim, hidden):
      super().__init__()
      self.fc1, self.act, self.fc2 = tnn.Linear(dim, hidden), tnn.GELU(), tnn.Linear(hidden, dim)

    def forward(self, x):
      return self.fc2(self.act(self.fc1(x)))

  class TBlock(tnn.Module):
    """timm's ViT Block (the release's): pre-norm, eps 1e-6."""

    def __init__(self, dim, heads, hidden):
      super().__init__()
      self.norm1, self.norm2 = tnn.LayerNorm(dim, eps=1e-6), tnn.LayerNorm(dim, eps=1e-6)
      self.attn, self.mlp = TAttention(dim, heads), TMlp(dim, hidden)

    def forward(self, x, mask=None):
      x = x + self.attn(self.norm1(x), mask)
      return x + self.mlp(self.norm2(x))

  class TPatchEmbed(tnn.Module):
    def __init__(self, chans, dim, patch):
      super().__init__()
      self.proj = tnn.Conv2d(chans, dim, patch, patch)

    def forward(self, x):
      return self.proj(x).flatten(2).transpose(1, 2)

  def query_mask(n_query, n_tokens):
    """torch_peer.query_mask: the first n_query rows see themselves and the patches."""
    m = torch.full((n_tokens, n_tokens), float("-inf"))
    m[:, n_query:] = 0.0
    idx = torch.arange(n_query)
    m[idx, idx] = 0.0
    return m

  def gpt2_config(r):
    return transformers.GPT2Config(
        vocab_size=r.vocab_size, n_positions=r.max_positions, n_embd=r.width, n_layer=r.depth,
        n_head=r.num_heads, n_inner=r.mlp_dim, attn_implementation="eager")

  class ReleaseLike(tnn.Module):
    """The release's SSACL module names (model_ssacl.py) at the config's sizes."""

    def __init__(self, config):
      super().__init__()
      m = config.model
      e, d, t, r = m.encoder, m.image_decoder, m.text, m.report
      self.p, self.grid = m.patch, m.image_size // m.patch
      n = self.grid ** 2
      self.patch_embed = TPatchEmbed(m.channels, e.width, m.patch)
      self.cls_token = tnn.Parameter(torch.zeros(1, 1, e.width))
      self.pos_embed = tnn.Parameter(torch.from_numpy(mae_sincos(e.width, self.grid))[None],
                                     requires_grad=False)
      self.blocks = tnn.ModuleList(TBlock(e.width, e.num_heads, e.mlp_dim) for _ in range(e.depth))
      self.norm = tnn.LayerNorm(e.width, eps=1e-6)
      self.decoder_embed = tnn.Linear(e.width, d.width)
      self.mask_token = tnn.Parameter(torch.zeros(1, 1, d.width))
      self.logit_scale = tnn.Parameter(torch.tensor(math.log(1 / 0.07)))
      self.decoder_pos_embed = tnn.Parameter(torch.from_numpy(mae_sincos(d.width, self.grid))[None],
                                             requires_grad=False)
      self.decoder_blocks = tnn.ModuleList(TBlock(d.width, d.num_heads, d.mlp_dim)
                                           for _ in range(d.depth))
      self.decoder_norm = tnn.LayerNorm(d.width, eps=1e-6)
      self.decoder_pred = tnn.Linear(d.width, m.patch ** 2 * m.channels)
      bert_cfg = transformers.BertConfig(
          vocab_size=t.vocab_size, hidden_size=t.width, num_hidden_layers=t.depth,
          num_attention_heads=t.num_heads, intermediate_size=t.mlp_dim,
          max_position_embeddings=t.max_len, type_vocab_size=2, pad_token_id=0,
          attn_implementation="eager")
      self.bert_encoder = tnn.Module()
      self.bert_encoder.model = tnn.Module()
      self.bert_encoder.model.bert = transformers.BertModel(bert_cfg, add_pooling_layer=True)
      from transformers.models.bert.modeling_bert import BertOnlyMLMHead
      self.bert_encoder.model.cls = BertOnlyMLMHead(bert_cfg)
      self.img_mlp = tnn.Linear(e.width, t.width)
      self.pos_weight_img = tnn.Linear(n, 1)
      self.Tpar = tnn.Parameter(torch.tensor(1 / 0.03))
      self.opt_model = transformers.GPT2LMHeadModel(gpt2_config(r))
      self.opt_proj = tnn.Linear(e.width, r.width)
      self.bert_proj = tnn.Linear(t.width, e.width)

    def encode(self, img, keep=None, queries=None):
      """forward_img_encoder(_nomask) with the kept patch indices given instead of drawn."""
      x = self.patch_embed(img) + self.pos_embed[:, 1:]
      if keep is not None:
        x = x.gather(1, keep[..., None].expand(-1, -1, x.shape[-1]))
      head = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
      mask = None
      if queries is not None:
        head = torch.cat([queries.expand(x.shape[0], -1, -1), head], 1)
        mask = query_mask(head.shape[1], head.shape[1] + x.shape[1])
      x = torch.cat([head, x], 1)
      for blk in self.blocks:
        x = blk(x, mask)
      return self.norm(x)

    def decode_pixels(self, latent, restore):
      z = self.decoder_embed(latent)
      b, n_keep = z.shape[0], z.shape[1] - 1
      filler = self.mask_token.expand(b, self.grid ** 2 - n_keep, -1)
      seq = torch.cat([z[:, 1:], filler], 1).gather(1, restore[..., None].expand(-1, -1, z.shape[-1]))
      x = torch.cat([z[:, :1], seq], 1) + self.decoder_pos_embed
      for blk in self.decoder_blocks:
        x = blk(x)
      return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def decoder_token0(self, tokens):
      x = self.decoder_embed(tokens)
      for blk in self.decoder_blocks:
        x = blk(x)
      return self.decoder_pred(self.decoder_norm(x)[:, 0])

    def text(self, ids, att):
      return self.bert_encoder.model.bert(input_ids=ids, attention_mask=att,
                                          token_type_ids=torch.zeros_like(ids)).pooler_output

  def randomise(module, seed=0):
    """Every parameter random (LayerNorm scales around 1), the fixed position tables kept."""
    g = torch.Generator().manual_seed(seed)
    norms = {f"{n}.weight" for n, mod in module.named_modules() if isinstance(mod, tnn.LayerNorm)}
    with torch.no_grad():
      for name, p in module.named_parameters():
        if name.endswith("pos_embed"):
          continue
        noise = 0.2 * torch.randn(p.shape, generator=g)
        p.copy_(noise + 1.0 if name in norms else noise)
      if hasattr(module, "Tpar"):
        module.Tpar.fill_(12.0)
    return module.eval()

  def mae_file(model, path, with_decoder=True):
    """Saves the MAE part of a ReleaseLike (encoder, optionally its pixel decoder) as a
    .pth in MAE's layout; returns that state dict."""
    keep = ("patch_embed.", "cls_token", "pos_embed", "blocks.", "norm.")
    if with_decoder:
      keep += ("decoder_", "mask_token")
    sd = {k: v for k, v in model.state_dict().items() if k.startswith(keep)}
    torch.save({"model": sd}, path)
    return sd

  return dict(ReleaseLike=ReleaseLike, gpt2_config=gpt2_config, randomise=randomise,
              mae_file=mae_file)


# ----------------------------------------------------------------------------- helpers over the package's internals
_PROBE = ("<script>window.addEventListener('load', function () {"
          "var w = Array.from(document.images).map(function (i) {"
          "return [i.getAttribute('src'), i.naturalWidth]; });"
          "var p = document.createElement('pre'); p.id = 'natural-widths';"
          "p.textContent = JSON.stringify(w); document.body.appendChild(p); });</script>")


def natural_widths(page) -> list[tuple[str, int]]:
  """[(src, naturalWidth)] of every <img> once the page has loaded (0: not decoded).

  Reads a copy of the page, beside it so relative links resolve, with a script that
  writes the widths into the DOM, which --dump-dom prints.
  """
  from ssacl_jax.evaluation import chromium
  page = pathlib.Path(page)
  probe = page.with_name(f".probe_{page.name}")
  probe.write_text(page.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"),
                   encoding="utf-8")
  try:
    dom = chromium.run_headless(probe, "--dump-dom", "--virtual-time-budget=5000", "--window-size=1280,20000")
  finally:
    probe.unlink()
  found = re.search(r"<pre id=\"natural-widths\">(.*?)</pre>", dom, re.S)
  if not found:
    raise RuntimeError("the page's load event never ran in Chromium")
  return [(src, int(w)) for src, w in json.loads(found.group(1).replace("&amp;", "&"))]


def label_precision_at_k(similarity, report_labels, k: int) -> float:
  """Mean fraction of the top-k reports sharing a positive label with the query's report."""
  from ssacl_jax.evaluation import retrieval
  return float(retrieval.label_precision_per_query(similarity, report_labels, k).mean())


def teacher_forced_logits(lm, prefix, prefix_valid, ids, cfg, prompt_ids=None, prompt_mask=None):
  """Logits [B, T, V] scoring ids[:, t] through generate's cached path (prefill, then feed)."""
  import jax
  import jax.numpy as jnp
  from ssacl_jax import generate
  pre = generate.prefill(lm, prefix, prefix_valid, cfg, prompt_ids, prompt_mask)

  def step(caches, inputs):
    t, tok = inputs
    logits, caches = generate.feed(lm, tok, caches, pre.base_valid, pre.start, t, pre.position)
    return caches, logits

  steps = jnp.arange(ids.shape[1] - 1)
  _, rest = jax.lax.scan(step, pre.caches, (steps, ids[:, :-1].T))
  return jnp.concatenate([pre.logits[:, None], jnp.moveaxis(rest, 0, 1)], axis=1)


def encode_with_queries(model, images, queries):
  """SSACL's image encoder with extra queries: model.apply(..., method=encode_with_queries)."""
  return model.image_encoder(images, queries=queries)
