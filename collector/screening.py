"""Restricted-party screening: the US Consolidated Screening List and name matching.

The International Trade Administration publishes the Consolidated Screening List (CSL) of
the Departments of Commerce (Entity List, Denied Persons, Unverified, Military End User),
State (ITAR debarred, nonproliferation sanctions) and the Treasury (SDN and the other OFAC
lists) as one file, rebuilt daily (https://www.trade.gov/consolidated-screening-list):
``consolidated.csv`` (header ``_id,source,entity_number,type,programs,name,title,addresses,
...,alt_names,...,source_information_url,ids``; several values in one cell are separated by
``"; "``) and ``consolidated.json`` (``{"results": [...], "sources_used": [...]}``). Both
forms are read here.

Tenant names, parents and beneficial owners are matched the way screening tools do it:

1. **Normalised names** (``normalize_name``): Unicode compatibility form, accents removed,
   Cyrillic transliterated (BGN/PCGN-like), case folded, punctuation dropped (``S.A.`` is
   ``sa``; ``Coca-Cola`` is ``coca cola``), legal forms and their phrases removed wherever
   they stand (Ltd, Limited, LLC, Inc, Co., Corp, PLC, GmbH, Pte, Pvt, Sdn Bhd, JSC, OOO,
   "joint stock company", ...), ``the``/``and``/``of`` dropped. A name made only of such
   words is kept as it is.
2. **Word order does not matter**: names are compared as sets of tokens, each paired with
   its best partner on the other side.
3. **Transliteration variants** are compared on a *skeleton* of each token (``kh``→``h``,
   ``ks``→``x``, ``zh``→``j``, ``w``→``v``, ``ou``→``u``, ``ue``→``u``, ``oe``→``o``,
   ``j``/``y``→``i``, ``ph``→``f``, doubled letters once): Aleksandr and Alexandr, Iwanow
   and Ivanov, Yuriy and Iouri, Mueller and Müller meet;
   such a pair counts 0.95, not 1. Small spelling differences in tokens of four letters or
   more count by their similarity (at least 0.8, else nothing). Chinese characters are not
   transliterated (that needs a dictionary): write tenants' names in Latin script as they
   appear in their registration documents.
4. **The score is symmetric** and weighs tokens by their length: the matched share of all
   letters on both sides. ``NOVATEK`` against ``NOVATEK MURMANSK`` scores 0.64: a name that
   is only part of a listed name (or the reverse) is a different party. Against a listed
   *individual*, a person's name of at least two tokens that is wholly found in the listed
   name (``Ivan Petrov`` in ``PETROV, Ivan Sergeyevich``) scores its coverage x 0.95,
   since lists carry patronymics and middle names.
5. Each entry is matched by its name, its ``alt_names`` and the names its primary name
   carries in parentheses (``(f.k.a. ...)``, ``(a.k.a. ...)``).

A hit names the list (``source``), the entry (``_id``, its name and the name matched) and
the score, so a person can check it against the list's own page
(``source_information_url``). A hit is a reason to look, never a verdict: the same name
may be a different party, and a party not on the list may still be a restricted one.

The list's date is the newest ``sources_used`` date of the JSON form or, for the CSV, the
file's modification time (``curl -R`` keeps the server's; docs/operator-guide.md). Every
screening records it; ``ScreeningSource`` re-reads the file when it changes and says when
it is older than ``max_age_days``.
"""

from __future__ import annotations

import csv
import datetime as dt
import difflib
import functools
import hashlib
import io
import json
import logging
import os
import re
import time
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from collector.errors import CollectorError

_logger = logging.getLogger(__name__)

# Columns of the CSV without which it is not the Consolidated Screening List.
REQUIRED_CSV_COLUMNS = ("source", "name")
DEFAULT_MIN_SCORE = 0.88
# Entry types that are never a company or a person.
_NOT_A_PARTY = frozenset(("vessel", "aircraft"))

_CYRILLIC = {
    "а": "a", "б": "b", "в": "v", "г": "g", "ґ": "g", "д": "d", "е": "e", "ё": "e", "є": "ye",
    "ж": "zh", "з": "z", "и": "i", "і": "i", "ї": "yi", "й": "y", "к": "k", "л": "l", "м": "m",
    "н": "n", "о": "o", "п": "p", "р": "r", "с": "s", "т": "t", "у": "u", "ф": "f", "х": "kh",
    "ц": "ts", "ч": "ch", "ш": "sh", "щ": "shch", "ъ": "", "ы": "y", "ь": "", "э": "e",
    "ю": "yu", "я": "ya", "ў": "u",
}  # fmt: skip
# Letters NFKD does not decompose into ASCII.
_LATIN_EXTRA = {"ß": "ss", "æ": "ae", "œ": "oe", "ø": "o", "đ": "d", "ð": "d", "ł": "l", "þ": "th", "ı": "i"}

# Legal forms and the phrases that spell them, as normalised tokens. Removed wherever they
# stand: "OOO Romashka" and "Romashka LLC" are one name.
_LEGAL_PHRASES: frozenset[tuple[str, ...]] = frozenset(
    tuple(p.split())
    for p in (
        "ltd limited llc inc incorporated corp corporation co company companies cos plc lp llp lllp pc"
        " gmbh mbh ag kg ohg ug ev sa sas sarl srl spa sl sau nv bv oy oyj ab as asa aps sp zoo"
        " kk pte pty pvt sdn bhd berhad tbk pt cv jsc ojsc pjsc cjsc ao oao zao pao ooo tov pp"
        " fze fzco fzc fzllc fz wll sae saog saoc ltda eireli sro kft zrt nyrt"
    ).split()
) | frozenset(
    tuple(p.split())
    for p in (
        "limited liability company",
        "limited liability partnership",
        "limited partnership",
        "joint stock company",
        "public joint stock company",
        "open joint stock company",
        "closed joint stock company",
        "private limited company",
        "public limited company",
        "company limited",
        "sendirian berhad",
        "private limited",
        "public company limited",
        "societe anonyme",
        "aktsionernoe obshchestvo",
        "publichnoe aktsionernoe obshchestvo",
        "otkrytoe aktsionernoe obshchestvo",
        "zakrytoe aktsionernoe obshchestvo",
        "obshchestvo s ogranichennoi otvetstvennostyu",
        "obshchestvo s ogranichennoy otvetstvennostyu",
        "youxian gongsi",
        "youxian zeren gongsi",
        "gufen youxian gongsi",
        "tovarystvo z obmezhenoyu vidpovidalnistyu",
        "sp z oo",
    )
)
_LONGEST_PHRASE = max(len(p) for p in _LEGAL_PHRASES)
_PHRASE_STARTS = frozenset(p[0] for p in _LEGAL_PHRASES)
_STOPWORDS = frozenset(("the", "and", "of"))
_INNER_PUNCT = re.compile(r"(?<=\w)[.'’`](?=\w)")
_NOT_ALNUM = re.compile(r"[^0-9a-z]+")
_REPEAT = re.compile(r"(.)\1+")
_PAREN = re.compile(r"\(([^()]*)\)")
_ALIAS_PREFIX = re.compile(
    r"^\s*(?:f\.?k\.?a\.?|a\.?k\.?a\.?|d\.?b\.?a\.?|n\.?k\.?a\.?|formerly|also known as)\s*:?\s*", re.I
)
_SKELETON_RULES = (
    ("shch", "sc"),
    ("tsch", "ch"),
    ("tch", "ch"),
    ("kh", "h"),
    ("zh", "j"),
    ("ph", "f"),
    ("ks", "x"),
    ("w", "v"),
    ("ou", "u"),
    ("ue", "u"),
    ("oe", "o"),
    ("j", "i"),
    ("y", "i"),
)


class ScreeningError(CollectorError):
    """The screening list cannot be used. ``diagnostics()`` says what to fix."""

    def diagnostics(self) -> str:
        return (
            f"screening list: {self}\nDownload the Consolidated Screening List again "
            "(docs/operator-guide.md, 'Screening list') or fix screening_list in the collector config."
        )


# ------------------------------------------------------------------ names


def _ascii_fold(text: str) -> str:
    if text.isascii():
        return text.lower()
    out = []
    for ch in unicodedata.normalize("NFKC", text).lower():
        ch = _CYRILLIC.get(ch, _LATIN_EXTRA.get(ch, ch))
        out.append(ch)
    decomposed = unicodedata.normalize("NFKD", "".join(out))
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _tokens(text: str) -> list[str]:
    s = _ascii_fold(text).replace("&", " and ")
    s = _INNER_PUNCT.sub("", s)  # S.A. -> SA., O'Neil -> ONeil
    return _NOT_ALNUM.sub(" ", s).split()


def _strip_legal(tokens: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(tokens):
        if tokens[i] not in _PHRASE_STARTS:
            if tokens[i] not in _STOPWORDS:
                out.append(tokens[i])
            i += 1
            continue
        for n in range(min(_LONGEST_PHRASE, len(tokens) - i), 0, -1):
            if tuple(tokens[i : i + n]) in _LEGAL_PHRASES:
                i += n
                break
        else:
            if tokens[i] not in _STOPWORDS:
                out.append(tokens[i])
            i += 1
    return out


def normalize_name(name: str) -> tuple[str, ...]:
    """The tokens a name is compared by: folded, without legal forms (see the module doc)."""
    tokens = _tokens(name)
    kept = _strip_legal(tokens)
    return tuple(kept if kept else tokens)


@functools.lru_cache(maxsize=65536)
def skeleton(token: str) -> str:
    """A token with common transliteration variants folded together (see the module doc)."""
    s = token
    for a, b in _SKELETON_RULES:
        s = s.replace(a, b)
    return _REPEAT.sub(r"\1", s)


def _token_similarity(a: str, b: str, sa: str, sb: str) -> float:
    if a == b:
        return 1.0
    if sa == sb:
        return 0.95
    if min(len(sa), len(sb)) < 4:
        return 0.0
    r = difflib.SequenceMatcher(None, sa, sb, autojunk=False).ratio()
    return r if r >= 0.8 else 0.0


@dataclass(frozen=True)
class _Name:
    text: str
    tokens: tuple[str, ...]
    skeletons: tuple[str, ...]
    joined: str

    @classmethod
    def of(cls, text: str) -> _Name:
        tokens = normalize_name(text)
        skeletons = tuple(skeleton(t) for t in tokens)
        return cls(text, tokens, skeletons, "".join(skeletons))


def _pairing(q: _Name, e: _Name) -> list[tuple[float, int, int]]:
    """Best one-to-one token pairs (greedy on similarity): (similarity, q index, e index)."""
    cands = []
    for i, (a, sa) in enumerate(zip(q.tokens, q.skeletons, strict=True)):
        for j, (b, sb) in enumerate(zip(e.tokens, e.skeletons, strict=True)):
            s = _token_similarity(a, b, sa, sb)
            if s > 0:
                cands.append((s, i, j))
    cands.sort(key=lambda c: (-c[0], c[1], c[2]))
    used_q: set[int] = set()
    used_e: set[int] = set()
    pairs = []
    for s, i, j in cands:
        if i not in used_q and j not in used_e:
            used_q.add(i)
            used_e.add(j)
            pairs.append((s, i, j))
    return pairs


def _score(q: _Name, e: _Name, individual: bool, at_least: float = 0.0) -> float:
    """The score of ``q`` against ``e``; 0.0 early where it cannot reach ``at_least``."""
    if not q.tokens or not e.tokens:
        return 0.0
    q_len = sum(len(t) for t in q.tokens)
    e_len = sum(len(t) for t in e.tokens)
    if not individual and 2 * min(q_len, e_len) / (q_len + e_len) < at_least and q.joined != e.joined:
        return 0.0  # even every letter of the shorter name matched would not do
    pairs = _pairing(q, e)
    matched = sum(s * (len(q.tokens[i]) + len(e.tokens[j])) for s, i, j in pairs)
    score = matched / (q_len + e_len)
    if q.joined == e.joined:  # "Nova Tek" and "Novatek"
        score = max(score, 0.95)
    if individual and len(q.tokens) >= 2 and len(pairs) == len(q.tokens):
        coverage = sum(s * len(q.tokens[i]) for s, i, _ in pairs) / q_len
        score = max(score, 0.95 * coverage)
    return score


def name_score(query: str, listed: str, *, individual: bool = False) -> float:
    """How well ``query`` matches the listed name ``listed``, 0..1 (see the module doc)."""
    return round(_score(_Name.of(query), _Name.of(listed), individual), 4)


# ------------------------------------------------------------------ the list


@dataclass(frozen=True)
class Entry:
    """One entry of the list: a party on one source list, under all its names."""

    entry_id: str
    source: str
    type: str
    name: str
    names: tuple[str, ...]
    programs: tuple[str, ...] = ()
    countries: tuple[str, ...] = ()
    source_information_url: str = ""


@dataclass(frozen=True)
class Hit:
    """A name that matched an entry of the list, with what a person needs to check it."""

    role: str
    """Whose name: ``tenant``, ``parent``, ``ultimate parent`` or ``beneficial owner``."""
    screened_name: str
    list: str
    entry_id: str
    entry_name: str
    matched_name: str
    score: float
    entry_type: str = ""
    programs: tuple[str, ...] = ()
    countries: tuple[str, ...] = ()
    source_information_url: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "screened_name": self.screened_name,
            "list": self.list,
            "entry_id": self.entry_id,
            "entry_name": self.entry_name,
            "matched_name": self.matched_name,
            "score": round(self.score, 3),
            "entry_type": self.entry_type,
            "programs": list(self.programs),
            "countries": list(self.countries),
            "source_information_url": self.source_information_url,
        }

    def explain(self) -> str:
        return (
            f"screening hit: {self.role} {self.screened_name!r} matches {self.matched_name!r} "
            f"(entry {self.entry_id} {self.entry_name!r}) on {self.list}, score {self.score:.2f}"
        )


def _split(cell: Any) -> list[str]:
    if cell is None:
        return []
    if isinstance(cell, list):
        return [str(x).strip() for x in cell if str(x).strip()]
    return [p.strip() for p in str(cell).split(";") if p.strip()]


def _names_of(primary: str, alts: Iterable[str]) -> tuple[str, ...]:
    names = [primary]
    for inner in _PAREN.findall(primary):
        alias = _ALIAS_PREFIX.sub("", inner).strip()
        if alias:
            names.append(alias)
    bare = _PAREN.sub(" ", primary).strip()
    if bare and bare != primary:
        names.append(bare)
    names.extend(alts)
    return tuple(dict.fromkeys(n for n in names if n.strip()))


def _countries_of(addresses: Any) -> tuple[str, ...]:
    found: list[str] = []
    if isinstance(addresses, list):
        for a in addresses:
            c = a.get("country") if isinstance(a, dict) else str(a).rsplit(",", 1)[-1]
            if isinstance(c, str) and re.fullmatch(r"\s*[A-Za-z]{2}\s*", c):
                found.append(c.strip().upper())
    else:
        for a in _split(addresses):
            tail = a.rsplit(",", 1)[-1].strip()
            if re.fullmatch(r"[A-Za-z]{2}", tail):
                found.append(tail.upper())
    return tuple(dict.fromkeys(found))


def _entry(row: dict[str, Any], where: str) -> Entry | None:
    name = str(row.get("name") or "").strip()
    if not name:
        return None
    entry_id = str(row.get("_id") or row.get("id") or row.get("entity_number") or where)
    return Entry(
        entry_id=entry_id,
        source=str(row.get("source") or "").strip(),
        type=str(row.get("type") or "").strip(),
        name=name,
        names=_names_of(name, _split(row.get("alt_names"))),
        programs=tuple(_split(row.get("programs"))),
        countries=_countries_of(row.get("addresses")),
        source_information_url=str(row.get("source_information_url") or "").strip(),
    )


@dataclass
class ScreeningList:
    """The parsed list, indexed for matching. Immutable once built."""

    entries: tuple[Entry, ...]
    list_date: dt.date
    origin: str = ""
    """Where it came from: the file's name."""
    sha256: str = ""
    _names: list[tuple[int, _Name]] = field(default_factory=list, init=False, repr=False)
    _index: dict[str, set[int]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        for ei, e in enumerate(self.entries):
            if e.type.lower() in _NOT_A_PARTY:
                continue
            for text in e.names:
                n = _Name.of(text)
                k = len(self._names)
                self._names.append((ei, n))
                for s in n.skeletons:
                    self._index.setdefault(s, set()).add(k)
                    if len(s) >= 4:
                        self._index.setdefault("^" + s[:3], set()).add(k)

    def __len__(self) -> int:
        return len(self.entries)

    def screen(
        self, name: str, role: str, *, min_score: float = DEFAULT_MIN_SCORE, person: bool | None = None
    ) -> list[Hit]:
        """Entries matching ``name`` at ``min_score`` or more, best first, one hit per entry.

        ``person``: True for a person's name (matched against individuals too, with partial
        coverage), False for a company's (never against individuals), None when unknown.
        """
        q = _Name.of(name)
        cands: set[int] = set()
        for s in q.skeletons:
            cands |= self._index.get(s, set())
            if len(s) >= 4:
                cands |= self._index.get("^" + s[:3], set())
        best: dict[int, tuple[float, str]] = {}
        for k in cands:
            ei, n = self._names[k]
            e = self.entries[ei]
            individual = e.type.lower() == "individual"
            if individual and person is False:
                continue
            sc = _score(q, n, individual and person is not False, min_score)
            if sc >= min_score and sc > best.get(ei, (0.0, ""))[0]:
                best[ei] = (sc, n.text)
        hits = []
        for ei, (sc, matched) in best.items():
            e = self.entries[ei]
            hits.append(
                Hit(
                    role=role,
                    screened_name=name,
                    list=e.source,
                    entry_id=e.entry_id,
                    entry_name=e.name,
                    matched_name=matched,
                    score=round(sc, 4),
                    entry_type=e.type,
                    programs=e.programs,
                    countries=e.countries,
                    source_information_url=e.source_information_url,
                )
            )
        hits.sort(key=lambda h: (-h.score, h.list, h.entry_id))
        return hits

    # -- parsing --------------------------------------------------------------------------

    @classmethod
    def from_csv_text(cls, text: str, list_date: dt.date, *, origin: str = "", sha256: str = "") -> ScreeningList:
        """Parse the CSV form. Raises ScreeningError naming what is missing."""
        reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff"), newline=""))
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED_CSV_COLUMNS if c not in header]
        if missing or not ({"_id", "id"} & set(header)):
            raise ScreeningError(
                f"{origin or 'CSV'}: not the Consolidated Screening List CSV (header lacks "
                f"{', '.join(missing + ([] if {'_id', 'id'} & set(header) else ['_id']))}; "
                f"it begins {','.join(header[:6])!r})"
            )
        entries = []
        for i, row in enumerate(reader):
            row = {(k or "").strip(): v for k, v in row.items()}
            e = _entry(row, f"row {i + 2}")
            if e is not None:
                entries.append(e)
        return cls(tuple(entries), list_date, origin, sha256)

    @classmethod
    def from_json_text(
        cls, text: str, list_date: dt.date | None, *, origin: str = "", sha256: str = ""
    ) -> ScreeningList:
        """Parse the JSON form (``{"results": [...]}`` or a bare array). Its date is the newest
        ``sources_used`` date where there is one, else ``list_date``."""
        try:
            doc = json.loads(text.lstrip("\ufeff"))
        except json.JSONDecodeError as exc:
            raise ScreeningError(f"{origin or 'JSON'}: not valid JSON: {exc}") from exc
        rows = doc.get("results") if isinstance(doc, dict) else doc
        if not isinstance(rows, list):
            raise ScreeningError(f'{origin or "JSON"}: expected a "results" array of entries')
        dates = []
        for s in doc.get("sources_used", []) if isinstance(doc, dict) else []:
            for key in ("source_last_updated", "last_imported"):
                d = _date_of(s.get(key)) if isinstance(s, dict) else None
                if d is not None:
                    dates.append(d)
        date = max(dates) if dates else list_date
        if date is None:
            raise ScreeningError(f"{origin or 'JSON'}: no sources_used date and no file date")
        entries = []
        for i, row in enumerate(rows):
            if isinstance(row, dict):
                e = _entry(row, f"result {i}")
                if e is not None:
                    entries.append(e)
        return cls(tuple(entries), date, origin, sha256)

    @classmethod
    def load(cls, path: str | Path) -> ScreeningList:
        """Read the CSV or JSON form; the date is the JSON's or the file's modification time."""
        p = Path(path)
        try:
            data = p.read_bytes()
            mtime = p.stat().st_mtime
        except OSError as exc:
            raise ScreeningError(f"cannot read {p}: {exc.strerror or exc}") from exc
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ScreeningError(f"{p}: not UTF-8 ({exc})") from exc
        file_date = dt.datetime.fromtimestamp(mtime, tz=dt.UTC).date()
        sha = hashlib.sha256(data).hexdigest()
        if text.lstrip("\ufeff \t\r\n")[:1] in ("{", "["):
            lst = cls.from_json_text(text, file_date, origin=p.name, sha256=sha)
        else:
            lst = cls.from_csv_text(text, file_date, origin=p.name, sha256=sha)
        _logger.info("screening list %s: %d entries, dated %s", p, len(lst), lst.list_date.isoformat())
        return lst


def _date_of(value: Any) -> dt.date | None:
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        return dt.date.fromisoformat(value[:10])
    except ValueError:
        return None


# ------------------------------------------------------------------ the file, kept current


class ScreeningSource:
    """The configured list file: re-read when it changes (checked at most every
    ``check_interval_s``), and old when its date is more than ``max_age_days`` behind today.

    A file that cannot be read again keeps the list already loaded (with a warning, once per
    change); one that cannot be read at start is an error.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_age_days: int = 7,
        check_interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self.max_age_days = max_age_days
        self._interval = check_interval_s
        self._clock = clock
        self._stamp = self._stat()
        self._list = ScreeningList.load(self.path)
        self._checked = clock()
        self._warned_stamp: tuple[int, int] | None = None

    @classmethod
    def of(cls, lst: ScreeningList, *, max_age_days: int = 7) -> ScreeningSource:
        """A source around a list already parsed (tests, tools): never re-read."""
        src = cls.__new__(cls)
        src.path = Path(lst.origin or "list")
        src.max_age_days = max_age_days
        src._interval = float("inf")
        src._clock = time.monotonic
        src._stamp = None
        src._list = lst
        src._checked = 0.0
        src._warned_stamp = None
        return src

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def current(self) -> ScreeningList:
        """The list as of now, re-read if the file changed."""
        now = self._clock()
        if now - self._checked < self._interval:
            return self._list
        self._checked = now
        stamp = self._stat()
        if stamp is None or stamp == self._stamp:
            return self._list
        try:
            self._list = ScreeningList.load(self.path)
            self._stamp = stamp
            _logger.info("screening list %s re-read: dated %s", self.path, self._list.list_date.isoformat())
        except ScreeningError as exc:
            if self._warned_stamp != stamp:
                _logger.warning(
                    "screening list %s changed but cannot be read; keeping the previous one: %s", self.path, exc
                )
                self._warned_stamp = stamp
        return self._list

    def age_days(self, today: dt.date) -> int:
        return (today - self._list.list_date).days

    def staleness(self, today: dt.date) -> str | None:
        """A warning when the list is older than ``max_age_days`` on ``today``; None otherwise."""
        age = self.age_days(today)
        if age <= self.max_age_days:
            return None
        return (
            f"screening list {self._list.origin or self.path.name} is dated {self._list.list_date.isoformat()}, "
            f"{age} days old (screening_max_age_days {self.max_age_days}): download the current list"
        )


# Roles in the order a person reads hits: the tenant's own name first.
ROLES = ("tenant", "parent", "ultimate parent", "beneficial owner")


def hit_order(h: Hit) -> tuple[float, int, str, str]:
    """Best score first, then the tenant's own name before its parents' and owners'."""
    return (-h.score, ROLES.index(h.role) if h.role in ROLES else len(ROLES), h.list, h.entry_id)


def screen_names(
    lst: ScreeningList, names: Sequence[tuple[str, str, bool | None]], *, min_score: float = DEFAULT_MIN_SCORE
) -> list[Hit]:
    """Screen (name, role, person) triples; the hits, best first."""
    hits: list[Hit] = []
    for name, role, person in names:
        hits.extend(lst.screen(name, role, min_score=min_score, person=person))
    hits.sort(key=hit_order)
    return hits


__all__ = [
    "DEFAULT_MIN_SCORE",
    "Entry",
    "Hit",
    "ROLES",
    "ScreeningError",
    "ScreeningList",
    "ScreeningSource",
    "hit_order",
    "name_score",
    "normalize_name",
    "screen_names",
    "skeleton",
]
