"""Top costs of a jax.profiler trace: where a step's time goes, op by op.

  python bench/profile_top.py TRACE_DIR [--top 30] [--hlo step.hlo.txt] [--json OUT]

TRACE_DIR is what `jax.profiler.start_trace(dir)` wrote (bench/train_step.py --profile_dir);
the newest *.trace.json.gz under it is read. Events kept:
  GPU/TPU traces: the device processes ('/device:...'), from their 'XLA Ops' threads when
    present (else every device thread: kernels);
  CPU traces: the host's XLA executor threads (tf_XLAEigen...), thunk-executor bookkeeping
    and Python events left out.
Prints per-thread busy fraction over the traced span (on CPU: did both cores work?), the
top op names by total time and the top op kinds (name without its .N suffix). With --hlo
(bench/train_step.py --dump_hlo) each top op is shown with its HLO result shape and, for
fusions, the kind of its fused root. Prints JSON; --json also writes it.
"""
from __future__ import annotations

import argparse
import collections
import gzip
import json
import pathlib
import re
import sys


def newest_trace(path: pathlib.Path) -> pathlib.Path:
  if path.is_file():
    return path
  found = sorted(path.rglob("*.trace.json.gz"), key=lambda p: p.stat().st_mtime)
  if not found:
    raise FileNotFoundError(f"no *.trace.json.gz under {path}")
  return found[-1]


def select_events(events: list[dict]) -> tuple[list[dict], dict, str]:
  """(op events, {(pid, tid): thread name}, description of the selection)."""
  procs, threads = {}, {}
  for e in events:
    if e.get("ph") != "M":
      continue
    if e.get("name") == "process_name":
      procs[e["pid"]] = e["args"]["name"]
    elif e.get("name") == "thread_name":
      threads[(e["pid"], e["tid"])] = e["args"]["name"]
  spans = [e for e in events if e.get("ph") == "X" and "dur" in e]
  device_pids = {p for p, n in procs.items() if "/device:" in n and "CPU" not in n}
  if device_pids:
    ops_threads = {k for k, n in threads.items() if k[0] in device_pids and n == "XLA Ops"}
    if ops_threads:
      keep = [e for e in spans if (e["pid"], e["tid"]) in ops_threads]
      return keep, threads, "device 'XLA Ops' threads"
    keep = [e for e in spans if e["pid"] in device_pids]
    return keep, threads, "all device threads"
  xla_threads = {k for k, n in threads.items() if n.startswith("tf_XLA") and "PjRt" not in n}
  keep = [e for e in spans if (e["pid"], e["tid"]) in xla_threads
          and not e["name"].startswith(("ThunkExecutor", "$"))]
  return keep, threads, "host XLA executor threads (CPU)"


def hlo_index(text: str) -> dict:
  """op name -> (result type, root kind) from an optimized HLO module's text."""
  comps, current, roots = {}, None, {}
  for line in text.splitlines():
    head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
    if head and "=" not in line.split("{")[0]:
      current = head.group(1)
      continue
    m = re.match(r"^\s*(ROOT )?%?([\w.\-]+) = (\S+(?: \S+)*?) (\w[\w\-]*)\(", line)
    if not m:
      continue
    is_root, name, rtype, opcode = m.groups()
    calls = re.search(r"calls=%?([\w.\-]+)", line)
    comps[name] = (rtype[:120], opcode, calls.group(1) if calls else None)
    if is_root and current:
      roots[current] = opcode
  out = {}
  for name, (rtype, opcode, called) in comps.items():
    kind = opcode
    if opcode == "fusion" and called in roots:
      kind = f"fusion(root {roots[called]})"
    out[name] = (rtype, kind)
  return out


def busy_thread_histogram(ops: list[dict], span: float) -> dict:
  """Fraction of the traced span during which 0, 1, 2, ... threads ran an op."""
  by_thread = collections.defaultdict(list)
  for e in ops:
    by_thread[(e["pid"], e["tid"])].append((e["ts"], e["ts"] + e["dur"]))
  edges = []
  for intervals in by_thread.values():
    intervals.sort()
    cur_s, cur_e = intervals[0]
    for s, e in intervals[1:]:          # merge nested / overlapping events of one thread
      if s <= cur_e:
        cur_e = max(cur_e, e)
      else:
        edges += [(cur_s, 1), (cur_e, -1)]
        cur_s, cur_e = s, e
    edges += [(cur_s, 1), (cur_e, -1)]
  edges.sort()
  hist = collections.defaultdict(float)
  level, prev = 0, edges[0][0]
  for t, d in edges:
    hist[level] += t - prev
    level, prev = level + d, t
  return {str(k): round(v / span, 3) for k, v in sorted(hist.items())}


def summarize(path: pathlib.Path, top: int = 30, hlo: str = "") -> dict:
  trace = newest_trace(path)
  data = json.load(gzip.open(trace))
  events = data["traceEvents"] if isinstance(data, dict) else data
  ops, threads, how = select_events(events)
  if not ops:
    return {"trace": str(trace), "error": "no op events found", "selection": how}
  start = min(e["ts"] for e in ops)
  end = max(e["ts"] + e["dur"] for e in ops)
  span = end - start
  per_thread = collections.defaultdict(float)
  by_name = collections.defaultdict(lambda: [0.0, 0])
  by_kind = collections.defaultdict(lambda: [0.0, 0])
  for e in ops:
    per_thread[(e["pid"], e["tid"])] += e["dur"]
    by_name[e["name"]][0] += e["dur"]
    by_name[e["name"]][1] += 1
    kind = re.sub(r"[.:]\d+$", "", e["name"])
    by_kind[kind][0] += e["dur"]
    by_kind[kind][1] += 1
  total = sum(per_thread.values())
  concurrency = busy_thread_histogram(ops, span)
  index = hlo_index(pathlib.Path(hlo).read_text()) if hlo else {}

  def rows(table, annotate):
    out = []
    for name, (dur, count) in sorted(table.items(), key=lambda kv: -kv[1][0])[:top]:
      row = {"name": name, "ms": round(dur / 1e3, 3), "count": count,
             "pct_of_op_time": round(100 * dur / total, 2)}
      if annotate and name in index:
        row["hlo_type"], row["hlo_kind"] = index[name]
      out.append(row)
    return out

  return {
      "trace": str(trace), "selection": how, "span_ms": round(span / 1e3, 3),
      "op_time_ms": round(total / 1e3, 3),
      "threads": {threads.get(k, str(k)): {"busy_ms": round(v / 1e3, 3),
                                          "busy_frac_of_span": round(v / span, 3)}
                  for k, v in sorted(per_thread.items(), key=lambda kv: -kv[1])},
      "time_frac_by_busy_threads": concurrency,
      "top_ops": rows(by_name, True), "top_kinds": rows(by_kind, False),
  }


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("trace", help="trace folder (or a .trace.json.gz file)")
  p.add_argument("--top", type=int, default=30)
  p.add_argument("--hlo", default="", help="optimized HLO text of the traced program")
  p.add_argument("--json", default="")
  a = p.parse_args(argv)
  report = summarize(pathlib.Path(a.trace), a.top, a.hlo)
  text = json.dumps(report, indent=1)
  print(text)
  if a.json:
    pathlib.Path(a.json).write_text(text + "\n")


if __name__ == "__main__":
  sys.exit(main())
