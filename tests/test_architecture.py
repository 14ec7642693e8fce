"""The package's layers import only downward, and no modules import each other in a cycle.

Every `import` of every module under ssacl_jax/, input_pipeline/ and configs/ counts,
top-level or inside a function, relative ones resolved (docs/ARCHITECTURE.md draws them).
"""
import ast
import dataclasses
import pathlib

from helpers import ROOT

PACKAGES = ("ssacl_jax", "input_pipeline", "configs")

# Module prefix -> layer. A module takes the layer of its longest matching prefix (itself or
# a package above it), so a new module inside a listed package needs no new entry.
LAYERS = {
    "ssacl_jax.anatomy": 0,
    "ssacl_jax.hardware": 1,
    "ssacl_jax.metric_writers": 1,
    "input_pipeline": 2,
    "ssacl_jax.layers": 3, "ssacl_jax.losses": 3, "ssacl_jax.models": 3,
    "ssacl_jax.generate": 3, "ssacl_jax.flops": 3, "ssacl_jax.roofline": 3,
    "ssacl_jax.collectives": 3, "ssacl_jax.hlo_report": 3, "ssacl_jax.hlo_text": 3,
    "ssacl_jax.hbm_traffic": 3, "ssacl_jax.evaluation": 3,
    "ssacl_jax.sharding": 4, "ssacl_jax.optim": 4, "ssacl_jax.checkpointing": 4,
    "ssacl_jax.state": 4, "ssacl_jax.data": 4, "ssacl_jax.pretrained": 4,
    "ssacl_jax.convert": 4, "ssacl_jax.perf": 4, "ssacl_jax.steps": 4,
    "ssacl_jax.config_lib": 4,   # validation knows the models and data sets it checks
    "ssacl_jax.cli": 4,          # one-line errors: the config and checkpoint errors
    "ssacl_jax.tasks": 5,
    "ssacl_jax.evaluators": 6, "ssacl_jax.inference": 6, "ssacl_jax.pathology_head": 6,
    "ssacl_jax.train": 7, "ssacl_jax.main": 7, "ssacl_jax.demo": 7, "ssacl_jax.ablate": 7,
    "ssacl_jax.predict": 7, "ssacl_jax.aot": 7, "ssacl_jax.param_count": 7,
    "ssacl_jax.compare": 7, "ssacl_jax.convert.__main__": 7,
    "configs": 7,                # recipes, loaded by the entry points (--config)
}
# Package roots match only themselves (their empty __init__), not every module inside.
ROOT_PACKAGES = {"ssacl_jax": 0}
# Of the project, input_pipeline may import only anatomy; a config only other configs (the
# shared pieces in configs.common, or the recipe it is a variant of) and config_lib.
ONLY_OF_OURS = {
    "input_pipeline": ("input_pipeline", "ssacl_jax.anatomy"),
    "configs": ("configs", "ssacl_jax.config_lib"),
}


@dataclasses.dataclass(frozen=True)
class Edge:
  importer: str
  imported: str
  line: int

  def __str__(self):
    return f"{self.importer} -> {self.imported} (line {self.line})"


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, pathlib.Path]:
  return {module_name(p): p for package in PACKAGES
          for p in sorted((ROOT / package).rglob("*.py"))}


def resolve(node, importer: str, is_package: bool, modules) -> list[tuple[str, int]]:
  """The project modules one import statement loads: `from a import b` means the module
  a.b when there is one, else a."""
  if isinstance(node, ast.Import):
    return [(a.name, node.lineno) for a in node.names]
  base = node.module or ""
  if node.level:
    package = importer.split(".") if is_package else importer.split(".")[:-1]
    package = package[:len(package) - (node.level - 1)]
    base = ".".join(package + ([node.module] if node.module else []))
  return [(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base, node.lineno)
          for a in node.names]


def import_edges(modules) -> list[Edge]:
  edges = []
  for name, path in modules.items():
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
      if isinstance(node, (ast.Import, ast.ImportFrom)):
        for imported, line in resolve(node, name, path.name == "__init__.py", modules):
          target = nearest_module(imported, modules)
          if target and target != name:
            edges.append(Edge(name, target, line))
  return edges


def nearest_module(name: str, modules) -> str | None:
  """The project module an import name loads (`ssacl_jax.models.ssacl.SSACL` is no module,
  ssacl_jax.models.ssacl is); None outside the project."""
  parts = name.split(".")
  while parts and ".".join(parts) not in modules:
    parts.pop()
  return ".".join(parts) or None


def prefix_of(name: str, prefixes) -> str | None:
  matches = [p for p in prefixes if name == p or name.startswith(p + ".")]
  return max(matches, key=len) if matches else None


def layer(name: str) -> int | None:
  if name in ROOT_PACKAGES:
    return ROOT_PACKAGES[name]
  prefix = prefix_of(name, LAYERS)
  return None if prefix is None else LAYERS[prefix]


def layer_violations(edges) -> list[str]:
  problems = []
  for e in edges:
    rule = prefix_of(e.importer, ONLY_OF_OURS)
    if rule and not prefix_of(e.imported, ONLY_OF_OURS[rule]):
      problems.append(f"{e}: {rule} may import only {', '.join(ONLY_OF_OURS[rule])} of ours")
    elif None not in (layer(e.importer), layer(e.imported)) and layer(e.imported) > layer(e.importer):
      problems.append(f"{e}: layer {layer(e.importer)} imports layer {layer(e.imported)}")
  return problems


def tangles(edges) -> list[set[str]]:
  """The groups of modules that import each other, directly or through others (strongly
  connected components of two or more)."""
  graph = {}
  for e in edges:
    graph.setdefault(e.importer, {}).setdefault(e.imported, e)
  index, low, stack, on_stack, groups = {}, {}, [], set(), []

  def visit(v):   # Tarjan's strongly connected components
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph.get(v, {}):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      group = set()
      while v not in group:
        w = stack.pop()
        on_stack.discard(w)
        group.add(w)
      if len(group) > 1:
        groups.append(group)

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return groups


def shortest_cycle(group, edges) -> list[Edge]:
  """A shortest path from the group's first module back to itself, inside the group."""
  graph = {}
  for e in edges:
    graph.setdefault(e.importer, {}).setdefault(e.imported, e)
  start = min(group)
  paths, seen = {start: []}, set()
  frontier = [start]
  while frontier:
    nxt = []
    for v in frontier:
      for w, e in sorted(graph[v].items()):
        if w == start:
          return paths[v] + [e]
        if w in group and w not in seen:
          seen.add(w)
          paths[w] = paths[v] + [e]
          nxt.append(w)
    frontier = nxt
  raise AssertionError(f"no cycle through {start}")


def test_every_module_has_a_layer():
  missing = [m for m in project_modules() if layer(m) is None]
  assert not missing, (f"modules without a layer: {missing}; add each (or its package) to "
                       f"LAYERS in tests/test_architecture.py")


def test_layers_import_only_downward():
  problems = layer_violations(import_edges(project_modules()))
  assert not problems, "upward imports:\n" + "\n".join(problems)


def test_no_import_cycles():
  edges = import_edges(project_modules())
  found = [describe(group, edges) for group in tangles(edges)]
  assert not found, "import cycles:\n" + "\n".join(found)


def describe(group, edges) -> str:
  """A shortest cycle of the group, and every import among its modules."""
  inside = [str(e) for e in edges if e.importer in group and e.imported in group]
  return (" ; ".join(map(str, shortest_cycle(group, edges))) +
          "\n  imports among these modules:\n    " + "\n    ".join(inside))


def test_the_checker_resolves_relative_imports_and_finds_cycles():
  modules = {"p": None, "p.a": None, "p.b": None, "p.b.c": None}
  rel = ast.parse("from . import c\nfrom .b import c\nfrom .. import a").body
  assert resolve(rel[0], "p.b", True, modules) == [("p.b.c", 1)]
  assert resolve(rel[1], "p.a", False, modules) == [("p.b.c", 2)]
  assert resolve(rel[2], "p.b.c", False, modules) == [("p.a", 3)]
  assert nearest_module("p.b.c.Thing", modules) == "p.b.c"
  edges = [Edge("p.a", "p.b", 3), Edge("p.b", "p.b.c", 5), Edge("p.b.c", "p.a", 7)]
  assert tangles(edges) == [{"p.a", "p.b", "p.b.c"}]
  assert [str(e) for e in shortest_cycle({"p.a", "p.b", "p.b.c"}, edges)] == [
      "p.a -> p.b (line 3)", "p.b -> p.b.c (line 5)", "p.b.c -> p.a (line 7)"]
  assert tangles(edges[:2]) == []
