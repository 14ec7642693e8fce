"""Headless Chromium for the HTML pages: a screenshot (and, for tests, the DOM after load).

  python -m ssacl_jax.evaluation.chromium PAGE.html OUT.png [--width 1280 --height 2000]

takes the screenshot the README shows (docs/report_card.png). The page is opened from
file://, as a user opens it, in a throwaway profile with no network services.
"""
from __future__ import annotations

import argparse
import pathlib
import shutil
import subprocess
import tempfile

_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
          "--no-first-run", "--hide-scrollbars")


def find_chromium() -> str | None:
  return next((p for p in map(shutil.which, _NAMES) if p), None)


def run_headless(page, *args: str, timeout: float = 120) -> str:
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
  run_headless(page, f"--screenshot={pathlib.Path(png).resolve()}", f"--window-size={width},{height}",
       "--virtual-time-budget=5000")


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
