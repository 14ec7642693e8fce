"""What a compiled step reports: XLA's memory and cost analyses, its collectives, the
figures of an out-of-memory compile error, and the printed summary of an AOT report
(python -m ssacl_jax.aot)."""
from __future__ import annotations

import re

from ssacl_jax import collectives, hbm_traffic, roofline

GIB = 1024 ** 3


# ----------------------------------------------------------------------------- compiled step
_SIZE = re.compile(r"([\d.]+)\s*([KMGTP]?)i?B?", re.I)
_UNITS = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4, "P": 1024 ** 5}


def parse_size(text: str) -> int:
  """XLA's human-readable sizes ('17.92G', '530.00M', '0B') -> bytes."""
  found = _SIZE.fullmatch(text.strip())
  if not found:
    raise ValueError(f"not a size: {text!r}")
  return int(round(float(found.group(1)) * _UNITS[found.group(2).upper()]))


def parse_resource_exhausted(message: str) -> dict:
  """The figures of an XLA out-of-memory compile error (whatever of them it holds)."""
  out = {}
  patterns = {
      # "Used 20.52G of 15.75G hbm. Exceeded hbm capacity by 4.77G." (program too large)
      # "the total memory required for HLO temporaries (118.39G) exceeds available HBM
      #  (15.75G)." (temporaries alone too large)
      "used_bytes": r"(?:Used\s+(\S+)\s+of\s+\S+\s+hbm|required for [^(]*\((\S+?)\))",
      "capacity_bytes": r"(?:Used\s+\S+\s+of\s+(\S+)\s+hbm|exceeds available HBM \((\S+?)\))",
      "exceeded_by_bytes": r"Exceeded hbm capacity by\s+(\S+?)\.?(?:\s|$)",
      "total_usage_bytes": r"Total hbm usage >=\s*(\S+?):",
      "program_bytes": r"\n\s*program\s+(\S+)",
      "arguments_bytes": r"\n\s*arguments\s+(\S+)",
      "reserved_bytes": r"\n\s*reserved\s+(\S+)",
  }
  for key, pattern in patterns.items():
    found = re.search(pattern, message)
    text = next((g for g in found.groups() if g), None) if found else None
    if text:
      try:
        out[key] = parse_size(text.rstrip("."))
      except ValueError:
        pass
  if "used_bytes" in out and "capacity_bytes" in out:
    out.setdefault("exceeded_by_bytes", out["used_bytes"] - out["capacity_bytes"])
  return out


def is_out_of_memory(message: str) -> bool:
  return "RESOURCE_EXHAUSTED" in message or "Ran out of memory" in message


def memory_figures(compiled) -> dict:
  m = compiled.memory_analysis()
  if m is None:
    return {}
  fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
            "generated_code_size_in_bytes", "alias_size_in_bytes",
            "host_argument_size_in_bytes", "host_output_size_in_bytes",
            "host_temp_size_in_bytes", "host_generated_code_size_in_bytes")
  out = {f.replace("_size_in_bytes", "_bytes"): int(getattr(m, f, 0) or 0) for f in fields}
  out["total_bytes"] = (out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"]
                        + out["generated_code_bytes"] - out["alias_bytes"])
  return out


def cost_figures(compiled, num_devices: int) -> dict:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost:   # XLA:GPU compiled without a GPU gives none
    return {"flops_per_device": None, "flops_note": "no cost analysis from this compiler"}
  flops = float(cost.get("flops", 0.0))
  return {"flops_per_device": flops, "flops_total": flops * num_devices,
          "transcendentals_per_device": float(cost.get("transcendentals", 0.0)),
          "bytes_accessed_per_device": float(cost.get("bytes accessed", 0.0))}


def collective_figures(hlo_text: str, num_devices: int, groups: bool = False) -> dict:
  """Static per-op counts and bytes (as always reported), totals per call per chip and over
  all chips, ring wire bytes per chip (the roofline's input) and, with `groups`, every
  collective grouped by what it moves (ssacl_jax.collectives)."""
  ops = collectives.collective_ops(hlo_text, num_devices)
  out = {"collectives": collectives.static_stats(ops),
         "collective_totals": collectives.collective_totals(ops, num_devices),
         "wire_bytes_per_device": roofline.wire_bytes(ops)}
  if groups:
    out["collective_groups"] = collectives.group_collectives(ops)
  return out


def traffic_figures(hlo_text: str, groups: bool = False, top: int = 25) -> dict:
  """Device-memory bytes the program's kernels read and write per call per chip
  (ssacl_jax.hbm_traffic; the roofline's memory input) and, with `groups`, the `top`
  sources of that traffic."""
  kernels = hbm_traffic.kernels(hlo_text)
  out = {"hbm_traffic_bytes_per_device": hbm_traffic.total_bytes(kernels),
         "kernels": len(kernels), "kernel_launches": hbm_traffic.launches(kernels)}
  if groups:
    out["hbm_traffic_groups"] = hbm_traffic.group_kernels(kernels)[:top]
  return out



# ----------------------------------------------------------------------------- summary
def _gib(n) -> str:
  return "-" if n is None else f"{n / GIB:8.3f} GiB"


def summary_lines(report: dict, top: int = 10) -> list[str]:
  lines = [f"target {report['target']} ({report['device_kind']} x {report['num_devices']}), "
           f"mesh {report['mesh']}, global batch {report['global_batch']}, "
           f"{report['num_params']:,} params",
           f"  params/device {_gib(report['param_bytes_per_device'])}, "
           f"opt state/device {_gib(report['opt_state_bytes_per_device'])}, "
           f"memory limit {_gib(report['memory_limit_bytes'])}"]
  for name, step in report["steps"].items():
    if not step["fits"]:
      lines.append(f"  {name}: DOES NOT FIT: {step['error']}")
      for key, value in step.get("out_of_memory", {}).items():
        lines.append(f"    {key:20s} {_gib(value)}")
      continue
    mem = step["memory"]
    flops = step.get("flops_per_device")
    lines.append(f"  {name}: compiled in {step['compile_seconds']} s; per device: "
                 f"total {_gib(mem.get('total_bytes'))} = args {_gib(mem.get('argument_bytes'))}"
                 f" + out {_gib(mem.get('output_bytes'))} + temp {_gib(mem.get('temp_bytes'))}"
                 f" + code {_gib(mem.get('generated_code_bytes'))}"
                 f" - alias {_gib(mem.get('alias_bytes'))}")
    coll = step["collectives"]
    lines.append(f"    flops/device {flops if flops is None else f'{flops:.4g}'}; collectives: "
                 + ", ".join(f"{op} {v['count']} ({v['bytes'] / 2**20:.1f} MiB)"
                             for op, v in coll.items() if v["count"] and op != "total"))
    if "collective_groups" in step:
      lines.extend(collective_lines(step, report["num_devices"], top))
    if "hbm_traffic_groups" in step:
      lines.extend(traffic_lines(step, top))
  if "roofline" in report:
    lines.extend(roofline_lines(report["roofline"]))
  lines.append("fits" if report["fits"] else "DOES NOT FIT")
  return lines


def collective_lines(step: dict, num_devices: int, top: int) -> list[str]:
  """Totals per call (per chip and all chips) and the `top` groups by bytes."""
  lines = []
  for part, by_op in step["collective_totals"].items():
    t = by_op["total"]
    if not t["count"]:
      continue
    lines.append(f"    collectives {part.replace('_', ' ')}: {t['count']} ops, "
                 f"{t['bytes_per_device'] / 1e9:.3f} GB per chip, "
                 f"{t['bytes_all_devices'] / 1e9:.1f} GB on {num_devices} chips; "
                 + ", ".join(f"{op} {v['count']} ({v['bytes_per_device'] / 1e9:.3f} GB)"
                             for op, v in by_op.items() if op != "total"))
  groups = step["collective_groups"]
  lines.append(f"    top {min(top, len(groups))} of {len(groups)} collective groups by bytes "
               "per chip (count: executions per call; loop: per decoding-loop iteration):")
  lines.append(f"      {'op':14s} {'pass':4s} {'dtype':5s} {'shape':>18s} {'group':>5s} "
               f"{'count':>5s} {'MB':>9s}  source")
  for g in groups[:top]:
    shape = "x".join(map(str, g["shape"])) or "scalar"
    lines.append(f"      {g['op']:14s} {g['pass']:4s} {g['dtype']:5s} {shape:>18s} "
                 f"{g['group_size']:5d} {g['count']:5d} {g['bytes'] / 1e6:9.2f}  "
                 f"{g['source']}{' (loop)' if g['in_loop'] else ''}")
  return lines


def traffic_lines(step: dict, top: int) -> list[str]:
  """The `top` sources of the kernels' device-memory traffic."""
  total = step["hbm_traffic_bytes_per_device"]
  lines = [f"    device-memory traffic {total / 1e9:.2f} GB per chip in {step['kernels']} "
           f"kernels ({step['kernel_launches']} launches per step); top sources:"]
  for g in step["hbm_traffic_groups"][:top]:
    lines.append(f"      {g['pass']:4s} {g['bytes'] / 1e9:8.3f} GB {g['bytes'] / total:6.1%} "
                 f"{g['kernels']:6d} kernels  {g['source']}")
  return lines


def roofline_lines(r: dict) -> list[str]:
  lines = [f"  roofline per chip ({r['chip']['source'].split(':')[0]}): compute "
           f"{r['compute_s'] * 1e3:.2f} ms ({r['flops_per_device']:.3g} FLOPs), "
           f"memory {r['memory_s'] * 1e3:.2f} ms ({r['hbm_bytes_per_device'] / 1e9:.2f} GB "
           f"read+written by kernels), interconnect {r['interconnect_s'] * 1e3:.2f} ms "
           f"({r['wire_bytes_per_device'] / 1e9:.3f} GB on the wire)",
           f"    predicted step {r['step_s'] * 1e3:.2f} ms, bound by {r['binding']}: MFU <= "
           f"{r['mfu_upper_bound']:.1%}; serial {r['serial_s'] * 1e3:.2f} ms: MFU "
           f"{r['mfu_if_serial']:.1%}; paper recipe ({r['paper_epochs']} epochs, "
           f"{r['paper_steps']} steps) {r['paper_hours']:.2f} h "
           f"({r['paper_hours_if_serial']:.2f} h serial)"]
  xla = r.get("with_xla_bytes_accessed")
  if xla:
    lines.append(f"    with XLA's bytes accessed ({r['xla_bytes_accessed_per_device'] / 1e9:.2f} "
                 f"GB) as the memory term instead: step {xla['step_s'] * 1e3:.2f} ms, MFU <= "
                 f"{xla['mfu_upper_bound']:.1%}")
  return lines
