"""Headless Chromium for the HTML pages: a screenshot, and which images decoded.

  python -m ssacl_jax.evaluation.chromium PAGE.html OUT.png [--width 1280 --height 2000]

takes the screenshot the README shows (docs/report_card.png). The page is opened from
file://, as a user opens it, in a throwaway profile with no network services.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import re
import shutil
import subprocess
import tempfile

_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
          "--no-first-run", "--hide-scrollbars")


def find_chromium() -> str | None:
  return next((p for p in map(shutil.which, _NAMES) if p), None)


def _run(page, *args: str, timeout: float = 120) -> str:
  binary = find_chromium()
  if binary is None:
    raise FileNotFoundError(f"no Chromium found (looked for {', '.join(_NAMES)}); "
                            "install it, e.g. apt-get install chromium")
  with tempfile.TemporaryDirectory() as profile:
    out = subprocess.run([binary, *_FLAGS, f"--user-data-dir={profile}", *args,
                          pathlib.Path(page).resolve().as_uri()],
                         capture_output=True, text=True, timeout=timeout)
  if out.returncode:
    raise RuntimeError(f"chromium exited with {out.returncode}: {out.stderr[-2000:]}")
  return out.stdout


def screenshot(page, png, width: int = 1280, height: int = 2000) -> None:
  """A PNG of the page's top `height` px at `width` px."""
  _run(page, f"--screenshot={pathlib.Path(png).resolve()}", f"--window-size={width},{height}",
       "--virtual-time-budget=5000")


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
  page = pathlib.Path(page)
  probe = page.with_name(f".probe_{page.name}")
  probe.write_text(page.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"),
                   encoding="utf-8")
  try:
    dom = _run(probe, "--dump-dom", "--virtual-time-budget=5000", "--window-size=1280,20000")
  finally:
    probe.unlink()
  found = re.search(r"<pre id=\"natural-widths\">(.*?)</pre>", dom, re.S)
  if not found:
    raise RuntimeError("the page's load event never ran in Chromium")
  return [(src, int(w)) for src, w in json.loads(found.group(1).replace("&amp;", "&"))]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("page")
  parser.add_argument("png")
  parser.add_argument("--width", type=int, default=1280)
  parser.add_argument("--height", type=int, default=2000)
  a = parser.parse_args()
  screenshot(a.page, a.png, a.width, a.height)
  print(f"wrote {a.png}")


if __name__ == "__main__":
  main()
