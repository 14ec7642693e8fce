"""Published per-chip figures of the accelerators we plan for: one table, with its sources.

Used for MFU (peak FLOP/s) and for roofline predictions (FLOP/s, HBM bandwidth,
interconnect bandwidth). Every number is a vendor datasheet figure, not a measurement.
Bandwidths are bytes per second; `interconnect_bytes_per_s` is the bidirectional
inter-chip bandwidth per chip (TPU ICI, NVIDIA NVLink), `dcn_bytes_per_s` the data-centre
network bandwidth per chip between slices where the vendor states one.
"""
from __future__ import annotations

import dataclasses

GB = 1e9
GIB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str                         # short name used by configs and --topology ('v5e')
  device_kinds: tuple[str, ...]     # lower-case substrings of jax.Device.device_kind
  peak_bf16_flops: float            # dense bf16 FLOP/s
  hbm_bytes: float
  hbm_bytes_per_s: float
  interconnect_bytes_per_s: float
  dcn_bytes_per_s: float | None
  source: str


CHIPS = (
    Chip("v4", ("tpu v4",), 275e12, 32 * GIB, 1200 * GB, 300 * GB, None,
         "cloud.google.com/tpu/docs/v4: 275 TFLOPs bf16, 32 GiB HBM2 at 1200 GBps, "
         "ICI 2400 Gbps per chip"),
    Chip("v5e", ("tpu v5 lite", "tpu v5e", "v5litepod"), 197e12, 16 * GIB, 819 * GB,
         400 * GB, 25 * GB,
         "cloud.google.com/tpu/docs/v5e: 197 TFLOPs bf16, 16 GB HBM2 at 819 GBps, "
         "bidirectional ICI 400 GBps per chip; 2 x 100 Gbps NIC per 8-chip host"),
    Chip("v5p", ("tpu v5p", "tpu v5"), 459e12, 95 * GIB, 2765 * GB, 1200 * GB, 50e9 / 8,
         "cloud.google.com/tpu/docs/v5p: 459 TFLOPs bf16, 95 GiB HBM2e at 2765 GBps, "
         "bidirectional ICI 1200 GBps per chip, DCN 50 Gbps per chip"),
    Chip("v6e", ("tpu v6 lite", "tpu v6e", "trillium"), 918e12, 32 * GB, 1638 * GB,
         800 * GB, None,
         "cloud.google.com/tpu/docs/v6e: 918 TFLOPs bf16, 32 GB HBM at 1638 GBps, "
         "bidirectional ICI 800 GBps per chip"),
    Chip("h200", ("h200",), 989e12, 141 * GB, 4800 * GB, 900 * GB, None,
         "nvidia.com H200 SXM datasheet: 989 TFLOPS dense bf16 (1979 with sparsity), "
         "141 GB HBM3e at 4.8 TB/s, NVLink 900 GB/s"),
    Chip("h100", ("h100",), 989e12, 80 * GB, 3350 * GB, 900 * GB, None,
         "nvidia.com H100 SXM datasheet: 989 TFLOPS dense bf16, 80 GB HBM3 at 3.35 TB/s, "
         "NVLink 900 GB/s"),
    Chip("a100", ("a100",), 312e12, 80 * GB, 2039 * GB, 600 * GB, None,
         "nvidia.com A100 SXM 80GB datasheet: 312 TFLOPS dense bf16, 2039 GB/s, NVLink "
         "600 GB/s"),
)


def chip(name: str) -> Chip:
  """The chip by short name ('v5e', 'h200'), or a KeyError listing the known ones."""
  for c in CHIPS:
    if c.name == name.lower():
      return c
  raise KeyError(f"unknown chip {name!r}; known: {', '.join(c.name for c in CHIPS)}")


def chip_for_device_kind(device_kind: str) -> Chip | None:
  """The table's chip for a jax device_kind ('TPU v5 lite', 'NVIDIA H200'), or None (CPU)."""
  kind = device_kind.lower()
  # Longest pattern first, so 'tpu v5 lite' wins over 'tpu v5'.
  matches = [(len(p), c) for c in CHIPS for p in c.device_kinds if p in kind]
  return max(matches, key=lambda m: m[0])[1] if matches else None
