"""What every command line shares: quiet logs, one-line errors, a say-once printer.

`run_app(main)` is how `ssacl_jax.main`, `demo`, `predict` and `convert` start. It adds
--verbose (INFO logs from JAX, Orbax, TFDS and absl, and tracebacks) and --traceback (the
traceback of an expected error only), checks `--config.*` overrides before anything
loads, and turns an expected failure (bad config, path, image, checkpoint, non-finite
loss) into one `error: ...` line on stderr and exit status 2.
"""
from __future__ import annotations

import logging
import sys
import traceback

EXIT_USAGE = 2

# Known, harmless messages the libraries log at WARNING on every run.
_CHATTER = (
    "Using custom data configuration",               # TFDS: every builder with options
    "OpenCV is not installed",                       # TFDS: PIL decodes our PNGs
    "CheckpointManagerOptions.read_only=True",       # Orbax: restoring read-only
    "Given directory is read only",
    "Metadata file does not exist",                  # Orbax: older step metadata layout
)
_LIBRARY_LOGGERS = ("absl", "orbax", "jax", "tensorflow_datasets", "grain", "tensorboardX")


class _DropChatter(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    message = str(record.msg)
    return not any(message.startswith(c) for c in _CHATTER)


def quiet_logs(verbose: bool = False) -> None:
  """Library logs at WARNING (INFO with verbose), known harmless warnings dropped."""
  from absl import logging as absl_logging
  level = logging.INFO if verbose else logging.WARNING
  logging.getLogger().setLevel(level)
  absl_logging.set_verbosity(absl_logging.INFO if verbose else absl_logging.WARNING)
  for name in _LIBRARY_LOGGERS:
    logging.getLogger(name).setLevel(level)
  if not verbose:
    for handler in logging.getLogger().handlers + [absl_logging.get_absl_handler()]:
      if not any(isinstance(f, _DropChatter) for f in handler.filters):
        handler.addFilter(_DropChatter())


def say(message: str) -> None:
  """One line for the user on stdout, from process 0 only (logs stay quiet)."""
  import jax
  if jax.process_index() == 0:
    print(message, flush=True)


# ----------------------------------------------------------------------------- errors
class UserFixableError(Exception):
  """Mixed into error types whose message alone tells the user what to do (a damaged
  checkpoint, ...), so that they print as one line without being ValueErrors."""


def expected_errors() -> tuple[type[BaseException], ...]:
  """Failures a user can fix from the message alone (anything else keeps its traceback);
  config and checkpoint-mismatch errors are ValueErrors."""
  return (UserFixableError, FloatingPointError, OSError, ValueError)


def error_line(e: BaseException) -> str:
  """The message of an expected error: detail lines first, then one `error: ...` line.

  The last line is what is wrong and what to do: the message's first line, plus its
  last line when that is the advice (multi-line messages list details in between).
  """
  if isinstance(e, OSError) and e.filename is not None and e.strerror:
    return (f"error: {e.strerror}: {e.filename}. Check the path exists and is writable, "
            "or pick another (--workdir, --out, --config.data.data_dir)")
  lines = [l for l in str(e).splitlines() if l.strip()] or [type(e).__name__]
  if len(lines) == 1:
    return f"error: {lines[0]}"
  return "\n".join(lines[1:-1] + [f"error: {lines[0].rstrip(':')}: {lines[-1].strip()}"])


def report_error(e: BaseException, show_traceback: bool) -> int:
  """Print an expected error (with its traceback when asked); the exit status."""
  if show_traceback:
    traceback.print_exception(e)
  print(error_line(e), file=sys.stderr, flush=True)
  return EXIT_USAGE


def call(main, argv, show_traceback: bool = False) -> int:
  """main(argv); an expected failure printed as one error line. The exit status."""
  try:
    main(argv)
  except expected_errors() as e:
    return report_error(e, show_traceback)
  return 0


def run_app(main) -> None:
  """absl app.run(main) with --verbose/--traceback, quiet logs and one-line errors."""
  import os
  from absl import app, flags
  from ssacl_jax import config_lib
  verbose = flags.DEFINE_bool("verbose", False, "INFO logs from JAX, Orbax, TFDS and absl, "
                              "and tracebacks with errors.")
  show = flags.DEFINE_bool("traceback", False, "Print the traceback of an expected error.")
  try:
    config_lib.check_overrides(sys.argv)
  except config_lib.ConfigError as e:
    sys.exit(report_error(e, any(a in sys.argv for a in ("--verbose", "--traceback"))))

  def guarded(argv):
    quiet_logs(verbose.value)
    status = call(main, argv, verbose.value or show.value)
    if status:
      # Orbax and Grain threads still running would print pages of shutdown errors
      # ("Event loop is closed") under the one line; the message is out, so leave now.
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(status)

  app.run(guarded)
