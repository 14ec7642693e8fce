"""Side by side with the PyTorch peer (../shared/peer/torch_peer.py): training step and
report generation at the paper's sizes, same machine, same batch, fp32, run alternately.

  python bench/vs_torch.py                         # train at batch 4 and 8, generation at 4
  python bench/vs_torch.py --what train --batches 4 --reuse

For each training batch size it runs, one after the other (the order flips from one batch
size to the next), in fresh processes:
  ours   python bench/train_step.py --config configs/ssacl_vitb16.py --batch B --steps 5
  peer   PEER_PY torch_peer.py --batch B --steps 5 --no-dead-mlm
and for generation (beam 3 and greedy, 100 new tokens, at least 80):
  ours   python bench/generate.py --config configs/ssacl_vitb16.py --batches 4 --methods beam,greedy
  peer   PEER_PY torch_peer.py --generate --batch 4 --steps 3 --no-dead-mlm
Before each run it waits (polling every 30 s, up to --wait_load_max_s) for the 1-minute
load average to fall below --wait_load and, for the peer at batch 8, for enough free
memory; the load it started at is recorded. Each child's peak RSS is taken from wait4().

Writes the children's JSON under --out_dir (default bench/results/vs_torch/) and the
summary (ratios ours / theirs, targets) to --json (default bench/results/vs_torch.json).
--reuse skips runs whose JSON already exists (to resume).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import benchlib  # noqa: E402

PEER = ROOT.parent / "shared" / "peer" / "torch_peer.py"
PEER_PY = pathlib.Path.home() / ".peer-venv" / "bin" / "python"
TARGET_TRAIN_RATIO = 0.7     # our step time / theirs
TARGET_GEN_SPEEDUP = 5.0     # their s per report / ours
TARGET_MEM_RATIO = 0.5       # our peak RSS / theirs at batch 8


def run_child(name: str, cmd: list[str], json_path: pathlib.Path, log_path: pathlib.Path,
              args, min_avail_gib: float = 0.0) -> dict:
  """Wait for a quiet machine, run cmd, return {'json': its JSON, 'peak_rss_gib', ...}."""
  if args.reuse and json_path.exists():
    prev = json.loads(json_path.read_text())
    print(f"[{name}] reusing {json_path}", file=sys.stderr, flush=True)
    return prev.get("_run", {}) | {"json": prev}
  wait = benchlib.wait_for_load(args.wait_load, args.wait_load_max_s, 30.0, min_avail_gib)
  if min_avail_gib and benchlib.mem_available_gib() < min_avail_gib:
    # Starting a ~17 GiB process without the memory free would have the OOM killer pick
    # a victim on a shared machine: skip (rerun later with --reuse).
    print(f"[{name}] skipped: only {benchlib.mem_available_gib():.1f} GiB available, "
          f"{min_avail_gib} wanted", file=sys.stderr, flush=True)
    return {"name": name, "cmd": cmd, "skipped": "not enough free memory", "load_wait": wait,
            "json": None}
  print(f"[{name}] load1 {wait['load1']} after {wait['waited_s']} s: {' '.join(cmd)}",
        file=sys.stderr, flush=True)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  start = time.time()
  with open(log_path, "w") as log:
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
  proc.returncode = os.waitstatus_to_exitcode(status)
  run = {"name": name, "cmd": cmd, "returncode": proc.returncode,
         "wall_s": round(time.time() - start, 1), "load_wait": wait,
         "child_peak_rss_gib": round(usage.ru_maxrss * 1024 / benchlib.GIB, 3),
         "log": str(log_path)}
  if proc.returncode != 0 or not json_path.exists():
    print(f"[{name}] failed (rc {proc.returncode}); see {log_path}", file=sys.stderr, flush=True)
    return run | {"json": None}
  data = json.loads(json_path.read_text())
  data["_run"] = run
  json_path.write_text(json.dumps(data, indent=1) + "\n")
  return run | {"json": data}


def ours_train_figures(d: dict) -> dict:
  return {"step_s": d.get("median_step_s_clean") or d["median_step_s"],
          "median_step_s": d["median_step_s"], "median_step_s_clean": d.get("median_step_s_clean"),
          "n_clean": d.get("n_clean"), "compile_s": d.get("compile_s"),
          "peak_rss_gib": d["peak_rss_gib"],
          "compiled_temp_plus_argument_gib": d["compiled_memory"].get("temp_plus_argument_gib"),
          "hand_gflops": round(d["hand_flops_per_step"] / 1e9, 1),
          "xla_gflops": None if d.get("xla_flops_per_step") is None
          else round(d["xla_flops_per_step"] / 1e9, 1),
          "mean_cpu_util": d.get("mean_cpu_util"), "mfu_hand": d.get("mfu_hand"),
          "median_cpu_s_per_step": d.get("median_cpu_s_per_step"),
          "load1_at_start": d["load_wait"]["load1"]}


def peer_train_figures(d: dict) -> dict:
  return {"step_s": d.get("median_step_s_clean") or d["median_step_s"],
          "median_step_s": d["median_step_s"], "median_step_s_clean": d.get("median_step_s_clean"),
          "n_clean": d.get("n_clean"), "peak_rss_gib": round(d["peak_rss_mib"] / 1024, 3),
          "median_fwd_s": d.get("median_fwd_s"), "median_bwd_s": d.get("median_bwd_s"),
          "median_opt_s": d.get("median_opt_s"),
          "mean_cpu_util": round(sum(r["cpu_util"] for r in d["records"] if not r["warmup"])
                                 / max(1, sum(not r["warmup"] for r in d["records"])), 3),
          "median_cpu_s_per_step": round(statistics.median(
              r["cpu_util"] * r["total_s"] for r in d["records"] if not r["warmup"]), 3),
          "threads": d["env"].get("threads"), "torch": d["env"].get("torch")}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="configs/ssacl_vitb16.py")
  p.add_argument("--what", default="train,generate")
  p.add_argument("--batches", default="4,8")
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--gen_batch", type=int, default=4)
  p.add_argument("--gen_steps", type=int, default=3, help="timed generate calls (each side)")
  p.add_argument("--ours_args", default="", help="extra arguments for bench/train_step.py")
  p.add_argument("--peer", default=str(PEER))
  p.add_argument("--peer_python", default=str(PEER_PY))
  p.add_argument("--peer_quiet_wait", type=float, default=60.0)
  p.add_argument("--attempts_factor", type=int, default=2,
                 help="both sides repeat disturbed steps up to this factor x --steps")
  p.add_argument("--wait_load", type=float, default=0.8)
  p.add_argument("--wait_load_max_s", type=float, default=1200.0)
  p.add_argument("--peer_mem_gib", type=float, default=18.5,
                 help="MemAvailable to wait for before the peer at batch >= 8 (it peaks "
                      "at ~17.4 GiB there)")
  p.add_argument("--out_dir", default=str(ROOT / "bench" / "results" / "vs_torch"))
  p.add_argument("--json", default=str(ROOT / "bench" / "results" / "vs_torch.json"))
  p.add_argument("--reuse", action="store_true")
  args = p.parse_args(argv)

  out_dir = pathlib.Path(args.out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  what = set(args.what.split(","))
  summary = {"bench": "vs_torch", "config": args.config, "machine": benchlib.machine(),
             "targets": {"train_step_ratio_max": TARGET_TRAIN_RATIO,
                         "generation_speedup_min": TARGET_GEN_SPEEDUP,
                         "peak_memory_ratio_max_batch8": TARGET_MEM_RATIO},
             "train": {}, "generate": {}}
  py = sys.executable

  if "train" in what:
    for i, b in enumerate(int(x) for x in args.batches.split(",")):
      ours_json, peer_json = out_dir / f"ours_train_b{b}.json", out_dir / f"peer_train_b{b}.json"
      ours_cmd = [py, "bench/train_step.py", "--config", args.config, "--batch", str(b),
                  "--steps", str(args.steps), "--json", str(ours_json),
                  "--quiet_wait", str(args.peer_quiet_wait),
                  "--max_attempts_factor", str(args.attempts_factor), *args.ours_args.split()]
      peer_cmd = [args.peer_python, args.peer, "--batch", str(b), "--steps", str(args.steps),
                  "--json", str(peer_json), "--no-dead-mlm",
                  "--quiet-wait", str(args.peer_quiet_wait),
                  "--max-attempts-factor", str(args.attempts_factor)]
      jobs = [("ours", ours_cmd, ours_json, 0.0),
              ("peer", peer_cmd, peer_json, args.peer_mem_gib if b >= 8 else 0.0)]
      if i % 2:
        jobs.reverse()
      res = {}
      for side, cmd, path, mem in jobs:
        res[side] = run_child(f"{side} train b{b}", cmd, path,
                              out_dir / f"{side}_train_b{b}.log", args, mem)
      entry = {"order": [j[0] for j in jobs]}
      if res["ours"]["json"]:
        entry["ours"] = ours_train_figures(res["ours"]["json"]) | {
            "child_peak_rss_gib": res["ours"].get("child_peak_rss_gib")}
      if res["peer"]["json"]:
        entry["peer"] = peer_train_figures(res["peer"]["json"]) | {
            "child_peak_rss_gib": res["peer"].get("child_peak_rss_gib"),
            "load1_at_start": res["peer"].get("load_wait", {}).get("load1")}
      if "ours" in entry and "peer" in entry:
        o, t = entry["ours"], entry["peer"]
        entry["step_time_ratio_ours_over_peer"] = round(o["step_s"] / t["step_s"], 3)
        entry["meets_step_target"] = entry["step_time_ratio_ours_over_peer"] <= TARGET_TRAIN_RATIO
        if o.get("median_cpu_s_per_step") and t.get("median_cpu_s_per_step"):
          entry["cpu_s_ratio_ours_over_peer"] = round(
              o["median_cpu_s_per_step"] / t["median_cpu_s_per_step"], 3)
        om = o.get("child_peak_rss_gib") or o["peak_rss_gib"]
        tm = t.get("child_peak_rss_gib") or t["peak_rss_gib"]
        entry["peak_rss_ratio_ours_over_peer"] = round(om / tm, 3)
        if b >= 8:
          entry["meets_memory_target"] = entry["peak_rss_ratio_ours_over_peer"] < TARGET_MEM_RATIO
      summary["train"][f"batch{b}"] = entry
      benchlib.write_json(args.json, summary)

  if "generate" in what:
    b = args.gen_batch
    ours_json, peer_json = out_dir / f"ours_generate_b{b}.json", out_dir / f"peer_generate_b{b}.json"
    ours_cmd = [py, "bench/generate.py", "--config", args.config, "--batches", str(b),
                "--methods", "beam,greedy", "--repeats", str(args.gen_steps),
                "--json", str(ours_json)]
    peer_cmd = [args.peer_python, args.peer, "--generate", "--batch", str(b),
                "--steps", str(args.gen_steps), "--json", str(peer_json), "--no-dead-mlm",
                "--quiet-wait", str(args.peer_quiet_wait), "--max-attempts-factor", "1"]
    res = {"ours": run_child(f"ours generate b{b}", ours_cmd, ours_json,
                             out_dir / f"ours_generate_b{b}.log", args),
           "peer": run_child(f"peer generate b{b}", peer_cmd, peer_json,
                             out_dir / f"peer_generate_b{b}.log", args)}
    entry = {}
    o, t = res["ours"]["json"], res["peer"]["json"]
    if o and t:
      for ours_method, peer_key in (("beam", "beam3"), ("greedy", "greedy")):
        mine = next(r for r in o["results"] if r["method"] == ours_method)
        theirs = t[peer_key]
        theirs_s = (theirs["median_generate_s_clean"] or theirs["median_generate_s"]) / b
        entry[peer_key] = {
            "ours_s_per_report": mine["seconds_per_report"],
            "peer_s_per_report": round(theirs_s, 4),
            "speedup_peer_over_ours": round(theirs_s / mine["seconds_per_report"], 2),
            "ours_first_call_s": mine["first_call_s"],
            "ours_mean_new_tokens": mine["mean_new_tokens"],
            "peer_new_tokens": theirs.get("new_tokens"),
            "ours_cpu_util": mine.get("cpu_util"),
            "ours_encoder_and_prefill_s": mine.get("encoder_and_prefill_s"),
            "ours_decode_step_ms": mine.get("decode_step_ms"),
        }
        entry[peer_key]["meets_target"] = entry[peer_key]["speedup_peer_over_ours"] >= TARGET_GEN_SPEEDUP
      entry["ours_child_peak_rss_gib"] = res["ours"].get("child_peak_rss_gib")
      entry["peer_child_peak_rss_gib"] = res["peer"].get("child_peak_rss_gib")
      entry["load1_at_start"] = {"ours": res["ours"].get("load_wait", {}).get("load1"),
                                 "peer": res["peer"].get("load_wait", {}).get("load1")}
    summary["generate"][f"batch{b}"] = entry
  print(benchlib.write_json(args.json, summary))


if __name__ == "__main__":
  main()
