"""A CheXpert-style rule labeler: the "knowledge extractor" of SPEC section 4.

It follows the Stanford chexpert-labeler stage by stage so that labels stay
comparable with the literature's clinical-efficacy numbers:

  1. clean:     lower-case, 'and/or' -> 'or', 'x/y' -> 'x or y', '..' -> '.',
                a space after every '.' and ',', whitespace collapsed.
  2. sentences: split after '.', '!' (the cleaning made every '.' end a word).
  3. mentions:  every phrase of phrases/mention/<observation>.txt is a regex that is
                searched as a substring (so 'atelecta' finds 'atelectasis' and 'tube'
                finds 'tuberculosis', exactly like the original); a match overlapping an
                unmention phrase of the same observation is dropped. Like the original,
                Cardiomegaly and Enlarged Cardiomediastinum get positional unmentions
                ('over the heart', 'in the left mediastinum', ...).
  4. classify:  pre-negation uncertainty, then negation, then post-negation uncertainty,
                else positive. The original matches NegBio semgrex patterns
                (patterns/*.txt) on a BLLIP + Stanford-dependency parse. We have no parser,
                so each pattern family is hand-translated into a cue phrase that must sit
                in the mention's clause, either before it (scope cues: 'no', 'without',
                'may', ...) or just after it with a copula-like gap ('is normal',
                'has resolved', 'cannot be excluded'). Clauses end at ';', ':', brackets,
                'but', 'however', 'which', 'although', 'with', ...; a ',' or 'and' ends one
                only when both sides carry a finite verb, so negated lists
                ('no pneumothorax, effusion, or consolidation') keep their scope.
  5. aggregate: the original's rules verbatim: per observation 1 beats 0, -1 beats 0,
                1 beats -1 (a [0, -1, 1] mix gives -1, as the original's case order does);
                a positive or uncertain 'chf' / 'heart failure' also adds -1 to
                Cardiomegaly; No Finding is 1 when no mention outside Support Devices is
                positive or uncertain (the no_finding.txt phrases count, they are other
                findings) and not mentioned otherwise.

Labels use the features schema: 1 positive, 0 negative, -1 uncertain, -2 not mentioned.
"""
from __future__ import annotations

import bisect
import dataclasses
import functools
import pathlib
import re
from collections.abc import Iterable, Sequence

import numpy as np

from input_pipeline.features import NEGATIVE, NOT_MENTIONED, POSITIVE, UNCERTAIN
from ssacl_jax import anatomy

# The labelers (config.eval.labeler, label_reports --labeler); each one's `name` is one of
# these, and metrics.json's protocol records it.
RULES, CHEXBERT = "rules", "chexbert"
LABELERS = (RULES, CHEXBERT)

DEFAULT_RULES_DIR = pathlib.Path(__file__).resolve().parent / "chexpert_rules"

NO_FINDING = "No Finding"
SUPPORT_DEVICES = "Support Devices"
CARDIOMEGALY = "Cardiomegaly"
ENLARGED_CARDIOMEDIASTINUM = "Enlarged Cardiomediastinum"
# Mention texts whose positive/uncertain use also makes Cardiomegaly uncertain.
_HEART_FAILURE_TEXTS = frozenset({"chf", "heart failure"})
_REGEX_CHARS = frozenset(".^$*+?{}[]\\|()")


# --------------------------------------------------------------------------- 1. clean

_PUNCT_SPACER = str.maketrans({".": ". ", ",": ", "})
_SLASH_RE = re.compile(r"(?<=[a-zA-Z])/(?=[a-zA-Z])")


def clean_report(report: str) -> str:
  """The original Loader.clean: the text every later stage sees."""
  text = report.lower().replace("and/or", "or")
  text = _SLASH_RE.sub(" or ", text)
  text = text.replace("..", ".").translate(_PUNCT_SPACER)
  return " ".join(text.split())


# ----------------------------------------------------------------------- 2. sentences

_SENTENCE_END_RE = re.compile(r"(?<=[.!])\s+")


def split_sentences(clean: str) -> list[str]:
  """Sentences of a cleaned report (NLTK punkt splits these texts at the same places)."""
  return [s for s in _SENTENCE_END_RE.split(clean) if s]


# ------------------------------------------------------------------------ 3. mentions

@dataclasses.dataclass(frozen=True)
class Mention:
  """One phrase match: its observation, the matched text and its span in the sentence."""
  category: str
  text: str
  start: int
  end: int


@dataclasses.dataclass(frozen=True)
class _Phrase:
  category: str
  phrase: str
  regex: re.Pattern
  literal: bool  # no regex syntax: a substring test can skip absent phrases cheaply


def _category_of(path: pathlib.Path) -> str:
  category = path.stem.replace("_", " ").title()
  if category not in anatomy.PATHOLOGY_INDEX:
    raise ValueError(f"phrase file {path} names no CheXpert observation "
                     f"(known: {', '.join(anatomy.PATHOLOGIES)})")
  return category


def load_phrases(phrases_dir: pathlib.Path) -> dict[str, list[str]]:
  """{observation: phrases} from <dir>/<observation>.txt; '_' stands for a space."""
  if not phrases_dir.is_dir():
    raise FileNotFoundError(f"phrase directory {phrases_dir} does not exist")
  out: dict[str, list[str]] = {}
  for path in sorted(phrases_dir.glob("*.txt")):
    phrases = [line.strip().replace("_", " ") for line in path.read_text().splitlines()]
    out.setdefault(_category_of(path), []).extend(p for p in phrases if p)
  return out


def positional_unmentions(mentions: dict[str, list[str]]) -> dict[str, list[str]]:
  """The original's extra unmentions: heart words after 'over the', 'in the left', ...

  They stop 'projects over the heart' or 'in the mediastinum' from counting as a
  statement about heart or mediastinal size.
  """
  positions = [a + b for a in ("over the", "overly the", "in the")
               for b in ("", " superior", " left", " right")]
  cardio = [f"{p} {m.replace('the ', '')}" for p in positions
            for m in mentions.get(CARDIOMEGALY, ())
            if m not in ("cardiomegaly", "cardiac enlargement")]
  mediastinum = [f"{p} {m}" for p in positions
                 for m in mentions.get(ENLARGED_CARDIOMEDIASTINUM, ())]
  return {CARDIOMEGALY: cardio, ENLARGED_CARDIOMEDIASTINUM: mediastinum}


def _compile(category: str, phrase: str) -> _Phrase:
  return _Phrase(category, phrase, re.compile(phrase), not (_REGEX_CHARS & set(phrase)))


def _present(phrase: _Phrase, text: str) -> bool:
  return phrase.phrase in text if phrase.literal else phrase.regex.search(text) is not None


def find_mentions(sentence: str, mentions: Sequence[_Phrase],
                  unmentions: dict[str, Sequence[_Phrase]]) -> list[Mention]:
  """Every match of every mention phrase that overlaps no unmention of its observation."""
  found = []
  blocked: dict[str, list[tuple[int, int]]] = {}
  for phrase in mentions:
    if not _present(phrase, sentence):
      continue
    if phrase.category not in blocked:
      blocked[phrase.category] = [
          m.span() for u in unmentions.get(phrase.category, ()) if _present(u, sentence)
          for m in u.regex.finditer(sentence)]
    spans = blocked[phrase.category]
    for m in phrase.regex.finditer(sentence):
      start, end = m.span()
      if not any(start < u_end and end > u_start for u_start, u_end in spans):
        found.append(Mention(phrase.category, m.group(0), start, end))
  return found


# ------------------------------------------------------------------------ 4. classify

_TOKEN_RE = re.compile(r"\w+(?:['-]\w+)*|[^\w\s]")

# Always end a clause (the token itself belongs to no clause).
_HARD_BOUNDARIES = frozenset({
    ";", ":", "(", ")", "[", "]", "?", "!", "but", "however", "although", "though",
    "which", "whereas", "while", "except", "yet", "who", "whose", "nevertheless"})
# Finite verbs and modals: a ',' or 'and' ends a clause when both sides have one.
_VERBS = frozenset({
    "is", "are", "was", "were", "am", "be", "has", "have", "had", "there", "appear",
    "appears", "appeared", "remain", "remains", "remained", "show", "shows", "showed",
    "demonstrate", "demonstrates", "measures", "measure", "persist", "persists", "project",
    "projects", "overlie", "overlies", "terminate", "terminates", "extend", "extends",
    "represent", "represents", "reflect", "reflects", "suggest", "suggests", "seem",
    "seems", "may", "might", "could", "would", "can", "should", "will", "cannot", "does",
    "do", "did", "look", "looks"})
# Words that may stand between a copula and its predicate ('is at the upper limits of').
_FILLERS = frozenset({
    "is", "are", "was", "were", "be", "been", "being", "has", "have", "had", "appear",
    "appears", "appeared", "remain", "remains", "remained", "seem", "seems", "now",
    "again", "still", "otherwise", "overall", "essentially", "grossly", "also", "both",
    "currently", "largely", "relatively", "entirely", "completely", "within", "at", "the",
    "upper", "top", "high", "limits", "limit", "of", "in", "size", "and", "stable",
    "likely", "probably", "considered", "felt", "to", "a", "an", "well", "fully",
    "all", "nearly", "near", "totally", "mildly", "somewhat", "similar", "comparison",
    "prior", "previous", "exam", "examination", "study"})

# Text between a negation cue and the mention that is not a negation ('no change in').
_NO_CHANGE_RE = re.compile(
    r"\b(?:no|without|not)(?: (?:significant|interval|appreciable|acute|substantial|"
    r"definite|other|further|major|marked|real|gross|radiographic|visible))* change[sd]?\b")

# pre_negation_uncertainty.txt: 'cannot exclude XXX', 'no new XXX', 'cannot rule out'.
_PRE_UNC_BEFORE = re.compile(
    r"\b(?:cannot|can not|can't|could not|unable to|not)(?: \S+){0,3}? "
    r"(?:exclude|excluded|rule out|ruled out)\b|\bno new\b|\bno evidence to rule out\b")
# 'XXX is not excluded', 'XXX cannot be ruled out'.
_PRE_UNC_AFTER = re.compile(
    r"(?:not|cannot|can not|can't|could not) (?:be )?(?:(?:entirely|completely|definitely|"
    r"totally|fully|confidently) )?(?:excluded|ruled out)(?!\S)")

# negation.txt, cues before the mention anywhere in its clause: 'no XXX', 'without XXX',
# 'no evidence of XXX', 'negative for', 'free of', 'resolution/removal/history of',
# 'rather than', 'exclude', 'rule out', ...
_NEG_BEFORE = re.compile(
    r"\b(?:no|not|without|negative for|free of|clear of|clearing of|resolution of|"
    r"resolved|removal of|removed|history of|disappearance of|drainage of|rather than|"
    r"exclude|excluding|excluded|rule out|ruled out|absence of|neither|nor)\b")
# 'normal heart size', 'unremarkable mediastinum': an amod a few words before.
_NEG_JUST_BEFORE = re.compile(r"\b(?:normal|normally|unremarkable)(?: [\w'-]+){0,4}$")
# 'obscuring the cardiac silhouette' (a negation rule for silhouettes only).
_NEG_SILHOUETTE_BEFORE = re.compile(r"\bobscur\w*(?: [\w'-]+){0,3}$")
# Words after 'normal' that show it modifies something else ('effusion, normal heart').
_MODIFIED_NOUNS = (
    r"pulmonary|heart|cardiac|cardiomediastinal|mediastinal|mediastinum|lungs?|chest|"
    r"vascularity|vasculature|vascular|bony|osseous|skeletal|soft|hilar|aortic|aorta|bones?|"
    r"pleural|xxxx|appearing|trachea|right|left|bilateral|diaphragms?|hemidiaphragms?|"
    r"abdominal|interstitial|study|exam|examination|radiograph|film|x-xxxx|x-ray|"
    r"structures?|variant")
# negation.txt, predicates after the mention: 'XXX is normal / within normal limits /
# unremarkable / not enlarged / resolved / removed / no longer seen', 'XXX has cleared'.
_NEG_AFTER = re.compile(
    r"(?:normal(?:-sized)?|unremarkable|wnl)(?![\w-])(?! (?:" + _MODIFIED_NOUNS + r")(?!\S))"
    r"|(?:has |have |had )?(?:been )?(?:resolved|cleared|removed)(?!\S)"
    r"|(?:absent|gone)(?!\S)|no longer(?!\S)|with (?:interval )?resolution(?!\S)"
    r"|not (?:(?:definitely|convincingly|significantly|currently|now|again|grossly|"
    r"definitively|xxxx) )?(?:enlarged|seen|identified|present|noted|demonstrated|"
    r"evident|visible|apparent|detected|appreciable|identifiable)(?!\S)"
    r"(?! (?:on|in) (?:the )?(?:prior|previous|comparison|lateral|frontal|pa))")

# post_negation_uncertainty.txt, cues before the mention anywhere in its clause:
# 'possible XXX', 'may/could represent XXX', 'concern/suspicion for', 'question of',
# 'suspect/favor/consider', 'differential diagnosis', 'XXX versus YYY', 'secondary to',
# 'is compatible with' (bare 'compatible with' is positive, as in the original),
# 'correlate clinically for', 'less likely'.
_UNC_BEFORE = re.compile(
    r"\b(?:possible|possibly|presumably|probable|questionable|suspect|suspected|"
    r"suspicious|suspicion|concern|concerning|worrisome|question|questioned|suggestion|"
    r"consider|considered|consideration|favor|favored|favoring|favour|favoured|"
    r"differential|versus|vs|maybe|may|might|could|would|secondary to|"
    r"less likely|correlat\w*|can (?:represent|reflect|indicate|include|be)|"
    r"(?:is|are|was|were|be) (?:\S+ )?compatible with)\b")
# 'XXX or YYY' (conj:or): an 'or' right before or after the mention.
_UNC_OR_BEFORE = re.compile(r"\bor(?: [\w'-]+){0,3}$")
_UNC_OR_AFTER = re.compile(r"^(?:\S+ ){0,3}?(?:or|versus|vs)(?!\S)")
# 'XXX is possible / suspected / not well visualized / obscured / could be present'.
_UNC_AFTER = re.compile(
    r"(?:possible|possibly|suspected|questioned|questionable|a consideration)(?!\S)"
    r"|(?:may|might|could|can|possibly)(?: also)? (?:be )?(?:present|appear)(?!\S)"
    r"|(?:poorly|incompletely|not well|not clearly|not entirely|not optimally|"
    r"suboptimally) (?:evaluated|visualized|seen|assessed)(?!\S)"
    r"|not (?:visualized|evaluated|appreciated)(?!\S)|obscur\w*")
# 'stable/unchanged cardiomediastinal silhouette', 'heart size is stable': uncertain, but
# only for mentions naming the silhouette/contour/size (so 'stable cardiomegaly' is 1).
_HEARTISH_RE = re.compile(
    r"\b(?:cardiomediastinal|pericardial|mediastinal|mediastinum|cardiomediastinum|"
    r"contours?|configurations?|silhouettes?|size|heart|shadows?)\b")
_STABLE_BEFORE = re.compile(
    r"\b(?:stable|unchanged)(?: [\w'-]+){0,3}$|\bstable appearance of(?: \S+){0,2}$")
_STABLE_AFTER = re.compile(
    r"(?:stable|unchanged|not changed|similar(?: to)?|not significantly changed)(?!\S)")
_BORDERLINE_BEFORE = re.compile(r"\bborderline(?: [\w'-]+){0,2}$")
_BORDERLINE_AFTER = re.compile(r"borderline(?!\S)")
# Edema mentions that are uncertain unless negated.
_ALWAYS_UNCERTAIN = frozenset({
    "vascular congestion", "pulmonary congestion", "indistinctness", "vascular prominence"})


def tokenize(sentence: str) -> tuple[list[str], list[int], list[int]]:
  """Words and punctuation marks with their character spans."""
  words, starts, ends = [], [], []
  for m in _TOKEN_RE.finditer(sentence):
    words.append(m.group(0))
    starts.append(m.start())
    ends.append(m.end())
  return words, starts, ends


def _has_verb(words: Sequence[str]) -> bool:
  return any(w in _VERBS for w in words)


def _hard_boundary(words: Sequence[str], i: int) -> bool:
  w = words[i]
  if w == "with":
    prev = words[i - 1] if i else ""
    nxt = words[i + 1] if i + 1 < len(words) else ""
    return (prev not in ("consistent", "compatible", "associated", "along")
            and nxt not in ("interval", "resolution"))
  return w in _HARD_BOUNDARIES


def _soft_split(words: Sequence[str], lo: int, hi: int) -> list[tuple[int, int]]:
  """Split [lo, hi) at ',' / 'and' where the clause so far and the next piece both
  have a finite verb; a piece that starts with 'or' / 'nor' always continues a list."""
  cuts = [i for i in range(lo + 1, hi) if words[i] in (",", "and")
          and words[i - 1] not in (",", "and")]
  pieces = list(zip([lo] + cuts, cuts + [hi]))
  clauses = [list(pieces[0])]
  for a, b in pieces[1:]:
    head = a
    while head < b and words[head] in (",", "and"):
      head += 1
    joins_list = head < b and words[head] in ("or", "nor")
    if (not joins_list and _has_verb(words[clauses[-1][0]:clauses[-1][1]])
        and _has_verb(words[a:b])):
      clauses.append([a, b])
    else:
      clauses[-1][1] = b
  return [tuple(c) for c in clauses]


def clause_bounds(words: Sequence[str]) -> list[tuple[int, int]]:
  """For each token, the [lo, hi) token range of its clause (see the module doc)."""
  bounds: list[tuple[int, int]] = [(i, i + 1) for i in range(len(words))]
  lo = 0
  for i in range(len(words) + 1):
    end = i == len(words)
    if end or _hard_boundary(words, i):
      if i > lo:
        for a, b in _soft_split(words, lo, i):
          for k in range(a, b):
            bounds[k] = (a, b)
      # 'with' opens the next clause; the other boundary words belong to none.
      lo = i if (not end and words[i] == "with") else i + 1
  return bounds


def _gap_ok(gap: Sequence[str], verbless_comma_ok: bool) -> bool:
  """After the first verb of the gap, only copula padding may precede the predicate.

  Keeps 'heart size, contour, and vascularity are within normal limits' (negated) apart
  from 'heart size is enlarged, vascularity normal' (not negated). Without
  `verbless_comma_ok` a comma needs a verb too: in 'opacity, possibly atelectasis' the
  'possibly' belongs to the appended phrase, not to 'opacity'.
  """
  seen_verb = False
  for w in gap:
    if seen_verb and w not in _FILLERS:
      return False
    if w == "," and not verbless_comma_ok and not any(v in _VERBS for v in gap):
      return False
    seen_verb = seen_verb or w in _VERBS
  return True


def _after(pattern: re.Pattern, post: str, max_gap: int,
           verbless_comma_ok: bool = False) -> bool:
  """`pattern` starts within `max_gap` words of the mention's end, behind a valid gap."""
  words = post.split(" ") if post else []
  offset = 0
  for k in range(min(max_gap, len(words) - 1) + 1):
    if pattern.match(post, offset):
      return _gap_ok(words[:k], verbless_comma_ok)
    offset += len(words[k]) + 1
  return False


def classify(mention_text: str, pre: str, post: str) -> int:
  """POSITIVE / NEGATIVE / UNCERTAIN from a mention and its clause context.

  `pre` / `post` are the clause's tokens before / after the mention (whole words),
  joined by single spaces. The order of the checks is the original's.
  """
  if _PRE_UNC_BEFORE.search(pre) or _after(_PRE_UNC_AFTER, post, 4):
    return UNCERTAIN
  heartish = _HEARTISH_RE.search(mention_text) is not None
  if (_NEG_BEFORE.search(_NO_CHANGE_RE.sub(" ~ ", pre)) or _NEG_JUST_BEFORE.search(pre)
      or _after(_NEG_AFTER, post, 12, verbless_comma_ok=True)
      or ("silhouette" in mention_text and _NEG_SILHOUETTE_BEFORE.search(pre))):
    return NEGATIVE
  if (_UNC_BEFORE.search(pre) or _UNC_OR_BEFORE.search(pre) or _UNC_OR_AFTER.match(post)
      or _after(_UNC_AFTER, post, 4)
      or (heartish and (_STABLE_BEFORE.search(pre) or _after(_STABLE_AFTER, post, 4)))
      or ("size" in mention_text and (_BORDERLINE_BEFORE.search(pre)
                                      or _after(_BORDERLINE_AFTER, post, 3)))
      or mention_text.strip() in _ALWAYS_UNCERTAIN):
    return UNCERTAIN
  return POSITIVE


def classify_sentence(sentence: str, mentions: Sequence[Mention]) -> list[int]:
  """Labels of the mentions of one sentence."""
  if not mentions:
    return []
  words, starts, ends = tokenize(sentence)
  bounds = clause_bounds(words)
  out = []
  for m in mentions:
    # Widen the match to whole tokens ('atelecta' -> 'atelectasis').
    first = max(bisect.bisect_right(ends, m.start), 0)
    last = max(bisect.bisect_left(starts, m.end) - 1, first)
    if first >= len(words):
      out.append(POSITIVE)
      continue
    lo = bounds[first][0]
    hi = bounds[last][1]
    text = sentence[starts[first]:ends[last]]
    pre = " ".join(words[lo:first])
    post = " ".join(words[last + 1:hi])
    out.append(classify(text, pre, post))
  return out


# ----------------------------------------------------------------------- 5. aggregate

def _resolve(labels: Sequence[int]) -> int:
  """The original dict_to_vec, case order included."""
  if len(labels) == 1:
    return labels[0]
  if NEGATIVE in labels and UNCERTAIN in labels:
    return UNCERTAIN
  if NEGATIVE in labels and POSITIVE in labels:
    return POSITIVE
  if UNCERTAIN in labels and POSITIVE in labels:
    return POSITIVE
  return labels[0]


def aggregate(labelled: Iterable[tuple[str, str, int]]) -> np.ndarray:
  """(observation, mention text, label) triples of one report -> int8 [14]."""
  per_category: dict[str, list[int]] = {}
  no_finding = True
  for category, text, label in labelled:
    if category != SUPPORT_DEVICES and label in (UNCERTAIN, POSITIVE):
      no_finding = False
    if category == NO_FINDING:
      continue
    if label in (UNCERTAIN, POSITIVE) and text in _HEART_FAILURE_TEXTS:
      per_category.setdefault(CARDIOMEGALY, []).append(UNCERTAIN)
    per_category.setdefault(category, []).append(label)
  if no_finding:
    per_category[NO_FINDING] = [POSITIVE]
  out = np.full(anatomy.NUM_PATHOLOGIES, NOT_MENTIONED, np.int8)
  for category, labels in per_category.items():
    out[anatomy.PATHOLOGY_INDEX[category]] = _resolve(labels)
  return out


# -------------------------------------------------------------------------- labeler

class Labeler:
  """CheXpert-style labeler over the rule files in `rules_dir` (default: package data)."""

  name = RULES

  def __init__(self, rules_dir: str | pathlib.Path | None = None):
    self.rules_dir = pathlib.Path(rules_dir) if rules_dir else DEFAULT_RULES_DIR
    mention_phrases = load_phrases(self.rules_dir / "phrases" / "mention")
    unmention_phrases = load_phrases(self.rules_dir / "phrases" / "unmention")
    unmention_phrases.update(positional_unmentions(mention_phrases))
    self._mentions = tuple(_compile(c, p) for c, ps in mention_phrases.items() for p in ps)
    self._unmentions = {c: tuple(_compile(c, p) for p in ps)
                        for c, ps in unmention_phrases.items()}

  def mentions(self, report: str) -> list[tuple[Mention, int, str]]:
    """(mention, label, sentence) for every mention: the labeler's evidence."""
    clean = clean_report(report)
    candidates = [p for p in self._mentions if _present(p, clean)]
    out = []
    for sentence in split_sentences(clean):
      found = find_mentions(sentence, candidates, self._unmentions)
      for m, label in zip(found, classify_sentence(sentence, found)):
        out.append((m, label, sentence))
    return out

  def label(self, report: str) -> np.ndarray:
    """int8 [14] in anatomy.PATHOLOGIES order: 1, 0, -1, or -2 (not mentioned)."""
    return aggregate((m.category, m.text, label) for m, label, _ in self.mentions(report))

  def label_many(self, reports: Iterable[str]) -> np.ndarray:
    """int8 [n, 14]."""
    rows = [self.label(r) for r in reports]
    if not rows:
      return np.zeros((0, anatomy.NUM_PATHOLOGIES), np.int8)
    return np.stack(rows)


@functools.cache
def default_labeler() -> Labeler:
  """One shared labeler over the packaged rules (loading compiles ~200 regexes)."""
  return Labeler()


def make_labeler(kind: str = RULES, *, rules_dir: str | None = None,
                 chexbert_checkpoint: str = "", chexbert_vocab: str = "", **chexbert_options):
  """The labeler named `kind`: the rule labeler, or CheXbert on the user's files
  (`chexbert_options`: ChexbertLabeler's batch_size, batch_sharding)."""
  if kind == RULES:
    return Labeler(rules_dir) if rules_dir else default_labeler()
  if kind != CHEXBERT:
    raise ValueError(f"unknown labeler {kind!r}; choose one of {', '.join(LABELERS)}")
  if not chexbert_checkpoint or not chexbert_vocab:
    raise ValueError("the chexbert labeler needs the user's CheXbert weights and its "
                     "vocabulary: set the chexbert.pth and the bert-base-uncased vocab.txt "
                     "paths (config.eval.chexbert_checkpoint / chexbert_vocab, or "
                     "--chexbert_checkpoint / --vocab)")
  from input_pipeline import chexbert  # jax and the model only when asked for
  return chexbert.ChexbertLabeler.from_files(chexbert_checkpoint, chexbert_vocab,
                                             **chexbert_options)
