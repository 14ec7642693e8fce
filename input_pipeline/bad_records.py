"""Bad records: reading one without letting a reader's failure escape, and counting the
ones dropped.

A record whose image or report cannot be read is logged with its index and study_id,
counted and dropped; when more than `max_skip_fraction` of the records seen so far were
dropped (once at least `min_records` were seen), `SkipTracker` raises
`TooManyBadRecords`.
"""
from __future__ import annotations

import logging
import threading

from input_pipeline import transforms

log = logging.getLogger(__name__)


class TooManyBadRecords(RuntimeError):
  """More bad records than `config.data.max_skip_fraction` allows."""


class SkipTracker:
  """Counts records seen and dropped; raises once too many were dropped.

  Each bad record is named in one warning (the first time it is met, for up to
  `max_named` distinct records; later epochs only count it). One tracker per dataset,
  and per worker process when Grain uses workers (each enforces the fraction over the
  records it read, and the main process's copy then stays at zero). Thread-safe.
  """

  def __init__(self, max_fraction: float, min_records: int, name: str = "data",
               max_named: int = 1000):
    self.max_fraction = float(max_fraction)
    self.min_records = int(min_records)
    self.name = name
    self.max_named = int(max_named)
    self.seen = 0
    self.skipped = 0
    self._named: set[int] = set()
    self._lock = threading.Lock()

  def __getstate__(self):
    state = dict(self.__dict__)
    del state["_lock"]
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  @property
  def fraction(self) -> float:
    return self.skipped / self.seen if self.seen else 0.0

  def ok(self) -> None:
    with self._lock:
      self.seen += 1
      self._check()

  def skip(self, index: int, study_id: str, error: Exception) -> None:
    with self._lock:
      self.seen += 1
      self.skipped += 1
      if index not in self._named and len(self._named) < self.max_named:
        self._named.add(index)
        log.warning("%s: skipping bad record %d (study_id %r): %s [%d of %d records "
                    "skipped so far]", self.name, index, study_id, error, self.skipped,
                    self.seen)
        if len(self._named) == self.max_named:
          log.warning("%s: %d bad records named; further ones are counted, not named",
                      self.name, self.max_named)
      self._check()

  def _check(self) -> None:
    if self.seen >= self.min_records and self.fraction > self.max_fraction:
      raise TooManyBadRecords(
          f"{self.name}: {self.skipped} of {self.seen} records ({self.fraction:.1%}) were "
          f"unreadable, more than config.data.max_skip_fraction={self.max_fraction}; see "
          "the warnings above for which records and why")


def read_record(source, index: int) -> dict:
  """source[index], with any reader failure (e.g. an image the source cannot decode)
  turned into BadRecord."""
  try:
    record = source[int(index)]
  except Exception as e:
    raise transforms.BadRecord(f"cannot read record: {type(e).__name__}: {e}") from e
  if not isinstance(record, dict):
    raise transforms.BadRecord(f"record is a {type(record).__name__}, not a dict")
  return record


def study_id_of(record: dict | None) -> str:
  try:
    return transforms.decode_text(record.get("study_id", ""), "study_id")
  except Exception:
    return "?"
