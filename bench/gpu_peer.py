"""Runs the PyTorch peer (../shared/peer/torch_peer.py) on a CUDA GPU, for side-by-side timing.

  python bench/gpu_peer.py PATH/torch_peer.py --batch 32 --steps 5 --quiet-wait 0 \
      --no-dead-mlm --json peer_train_b32.json

The peer is written for the CPU and is not ours to edit, so this wrapper changes only its
surroundings: new tensors, modules and random generators default to the GPU; the step runs
under `torch.autocast(bfloat16)` (the release trains in mixed precision; our bench runs bf16
compute with float32 parameters, configs/ssacl_vitb16.py:bf16); and every `time.perf_counter()`
the peer calls first waits for the GPU (`torch.cuda.synchronize()`), so its per-step times
are device times rather than kernel-launch times. Arguments after PATH go to the peer.
"""
from __future__ import annotations

import importlib.util
import sys
import time
import types

import torch


def synchronized_clock(clock=time.perf_counter):
  def now() -> float:
    torch.cuda.synchronize()
    return clock()
  return now


def torch_with_generators_on(device: str) -> types.ModuleType:
  """`torch` as the peer sees it: the real module, except that new Generators live on device."""
  view = types.ModuleType("torch")
  view.__getattr__ = lambda name: getattr(torch, name)
  view.Generator = lambda *args, **kwargs: torch.Generator(*args, **{"device": device, **kwargs})
  return view


def load_peer(path: str):
  spec = importlib.util.spec_from_file_location("torch_peer", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def main() -> None:
  if len(sys.argv) < 2:
    raise SystemExit(__doc__)
  if not torch.cuda.is_available():
    raise SystemExit("error: no CUDA device is visible to torch; run this on the GPU machine")
  peer, args = sys.argv[1], sys.argv[2:]
  torch.set_default_device("cuda")
  time.perf_counter = synchronized_clock()
  module = load_peer(peer)
  module.torch = torch_with_generators_on("cuda")
  sys.argv = [peer, *args]
  with torch.autocast("cuda", dtype=torch.bfloat16):
    module.main()


if __name__ == "__main__":
  main()
