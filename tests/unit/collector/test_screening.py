"""Restricted-party screening (collector/screening.py): name matching as screening tools do
it, and the Consolidated Screening List's CSV and JSON forms (fictitious parties in the real
layout: tests/fixtures/screening/README.md)."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

import pytest

from collector.screening import (
    DEFAULT_MIN_SCORE,
    ScreeningError,
    ScreeningList,
    ScreeningSource,
    name_score,
    normalize_name,
    skeleton,
)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "screening"
CSV = FIXTURES / "csl_excerpt.csv"
JSON = FIXTURES / "csl_excerpt.json"
EL = "Entity List (EL) - Bureau of Industry and Security"
SDN = "Specially Designated Nationals (SDN) - Treasury Department"


@pytest.mark.parametrize(
    ("name", "tokens"),
    [
        ("Acme Widgets Ltd.", ("acme", "widgets")),
        ("ACME WIDGETS LIMITED", ("acme", "widgets")),
        ("Acme Widgets Co., Ltd.", ("acme", "widgets")),
        ("Example Compute Sdn. Bhd.", ("example", "compute")),
        ("Example Compute Sendirian Berhad", ("example", "compute")),
        ("Example Pte. Ltd.", ("example",)),
        ("OOO Romashka", ("romashka",)),
        ("Romashka Limited Liability Company", ("romashka",)),
        ("Public Joint Stock Company Example Neft", ("example", "neft")),
        ("Ромашка", ("romashka",)),
        ("Müller & Söhne GmbH", ("muller", "sohne")),
        ("S.A. Example", ("example",)),
        ("The Company", ("the", "company")),  # only legal words: kept as they are, never empty
        ("Coca-Cola Company", ("coca", "cola")),
    ],
)
def test_names_are_normalised_case_punctuation_accents_and_legal_forms(name: str, tokens: tuple[str, ...]) -> None:
    assert normalize_name(name) == tokens


def test_transliteration_skeletons_meet() -> None:
    for a, b in (("aleksandr", "alexandr"), ("ivanov", "iwanow"), ("yuriy", "iouri"), ("mueller", "muller")):
        assert skeleton(a) == skeleton(b), (a, b)
    assert skeleton("novatek") != skeleton("novatel")


# (query, listed, individual, expected score range, hit at the default bar)
THRESHOLD_TABLE = [
    ("Acme Widgets Ltd", "ACME WIDGETS LIMITED", False, (1.0, 1.0), True),
    ("Widgets Acme Co., Ltd.", "Acme Widgets", False, (1.0, 1.0), True),  # word order
    ("Example Sdn Bhd", "Example Sendirian Berhad", False, (1.0, 1.0), True),
    ("Aleksandr Ivanov", "Alexandr Iwanow", False, (0.94, 0.96), True),  # transliteration
    ("Yuriy Petrov", "Iouri Petrov", False, (0.95, 0.99), True),
    ("Rosoboroneksport", "Rosoboronexport", False, (0.95, 0.95), True),
    ("Nova Tek", "Novatek", False, (0.95, 0.95), True),  # spacing
    ("Müller GmbH", "Mueller AG", False, (0.95, 0.95), True),
    ("Ivan Petrov", "PETROV, Ivan Sergeyevich", True, (0.94, 0.96), True),  # patronymic of an individual
    ("Ivan Petrov", "PETROV, Ivan Sergeyevich", False, (0.6, 0.7), False),  # ... but not for a company
    ("NOVATEK", "NOVATEK MURMANSK", False, (0.6, 0.7), False),  # part of a listed name: another party
    ("NOVATEK MURMANSK", "NOVATEK", False, (0.6, 0.7), False),  # and the reverse
    ("Beijing Quantum Computing", "Quantum Computing", False, (0.8, 0.85), False),
    ("Quantum Dynamics Ltd", "Quantum Systems Ltd", False, (0.4, 0.55), False),
    ("Sinotech", "Sinotek", False, (0.79, 0.81), False),  # one letter off a short name
    ("ABC", "ABD", False, (0.0, 0.0), False),  # short tokens must match exactly
]


@pytest.mark.parametrize(("query", "listed", "individual", "band", "hit"), THRESHOLD_TABLE)
def test_threshold_table(query: str, listed: str, individual: bool, band: tuple[float, float], hit: bool) -> None:
    s = name_score(query, listed, individual=individual)
    assert band[0] <= s <= band[1], f"{query!r} vs {listed!r}: score {s} outside {band}"
    assert (s >= DEFAULT_MIN_SCORE) is hit, f"{query!r} vs {listed!r}: score {s}, a hit must be {hit}"


def test_scores_are_symmetric_for_companies() -> None:
    for q, e, ind, _, _ in THRESHOLD_TABLE:
        if not ind:
            assert name_score(q, e) == name_score(e, q), (q, e)


def _csv() -> ScreeningList:
    return ScreeningList.from_csv_text(CSV.read_text(encoding="utf-8"), dt.date(2026, 12, 5), origin="csl.csv")


def test_csv_excerpt_is_parsed_with_alternate_and_former_names() -> None:
    lst = _csv()
    assert len(lst) == 5
    by_id = {e.entry_id: e for e in lst.entries}
    el = by_id["3f0c9a1e2b7d4c58a6e1f09b2d3c4e5f6a7b8c9d"]
    assert el.source == EL and el.type == "" and el.countries == ("CN",)
    assert "Fictitia Qubit Works" in el.names, "a (f.k.a. ...) name is a name of the entry"
    assert {"Fictitia QC", "Fictitia Quantum Sdn Bhd"} <= set(el.names), "alt_names are split on ';'"
    assert by_id["90001"].type == "Individual" and by_id["90001"].programs == ("EXAMPLE-EO99999",)
    assert el.source_information_url == "https://www.bis.gov/entity-list"


def test_a_tenant_name_matches_by_suffix_order_and_alt_name_and_the_hit_is_explained() -> None:
    lst = _csv()
    (hit,) = lst.screen("FICTITIA QUANTUM COMPUTING LIMITED", "tenant", person=False)
    assert (hit.list, hit.entry_id, hit.score) == (EL, "3f0c9a1e2b7d4c58a6e1f09b2d3c4e5f6a7b8c9d", 1.0)
    assert hit.matched_name.startswith("Fictitia Quantum Computing")
    assert "on Entity List" in hit.explain() and "score 1.00" in hit.explain()
    (alt,) = lst.screen("Fictitia Quantum Sdn. Bhd.", "parent", person=False)
    assert alt.matched_name == "Fictitia Quantum Sdn Bhd" and alt.role == "parent"
    (former,) = lst.screen("Qubit Works Fictitia", "tenant", person=False)
    assert former.matched_name == "Fictitia Qubit Works"


def test_part_of_a_listed_name_is_no_hit() -> None:
    lst = _csv()
    assert lst.screen("Zephyrtek", "tenant", person=False) == [], "Zephyrtek is not ZEPHYRTEK MURMANSK"
    (hit,) = lst.screen("Zephyrtek Murmansk LLC", "tenant", person=False)
    assert hit.entry_id == "90002"


def test_vessels_are_never_matched_and_companies_never_against_individuals() -> None:
    lst = _csv()
    assert lst.screen("Fictitia Star", "tenant", person=None) == [], "FICTITIA STAR is a vessel"
    assert lst.screen("Ivan Fiktivov", "tenant", person=False) == []
    (person,) = lst.screen("Ivan Fiktivov", "beneficial owner", person=None)
    assert person.entry_id == "90001" and person.list == SDN and person.score >= 0.94
    (iwan,) = lst.screen("Iwan Fiktivov", "beneficial owner", person=None)
    assert iwan.entry_id == "90001"


def test_json_form_reads_the_same_entries_and_its_date() -> None:
    lst = ScreeningList.from_json_text(JSON.read_text(encoding="utf-8"), dt.date(2000, 1, 1), origin="csl.json")
    assert lst.list_date == dt.date(2026, 12, 4), "the newest sources_used date, not the file's"
    (hit,) = lst.screen("Fictitia QC", "tenant", person=False)
    assert hit.entry_id == "3f0c9a1e2b7d4c58a6e1f09b2d3c4e5f6a7b8c9d" and hit.countries == ("CN",)
    assert lst.screen("Zephyrtek", "tenant") == []


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("id,name\n1,x\n", "header lacks source"),
        ("Name,Address\nx,y\n", "not the Consolidated Screening List"),
        ("_id,source,title\n1,EL,x\n", "name"),
    ],
)
def test_a_file_that_is_not_the_list_is_refused_with_what_is_missing(text: str, needle: str) -> None:
    with pytest.raises(ScreeningError, match=needle) as exc:
        ScreeningList.from_csv_text(text, dt.date(2026, 1, 1), origin="x.csv")
    assert "screening_list" in exc.value.diagnostics()


def test_load_takes_the_csv_date_from_the_file_and_hashes_it(tmp_path: Path) -> None:
    p = tmp_path / "consolidated.csv"
    shutil.copyfile(CSV, p)
    stamp = dt.datetime(2026, 11, 20, 12, tzinfo=dt.UTC).timestamp()
    os.utime(p, (stamp, stamp))
    lst = ScreeningList.load(p)
    assert lst.list_date == dt.date(2026, 11, 20) and lst.origin == "consolidated.csv" and len(lst.sha256) == 64
    j = tmp_path / "consolidated.json"
    shutil.copyfile(JSON, j)
    assert ScreeningList.load(j).list_date == dt.date(2026, 12, 4)
    with pytest.raises(ScreeningError, match="cannot read"):
        ScreeningList.load(tmp_path / "absent.csv")


def test_an_old_list_is_a_warning_and_a_changed_file_is_read_again(tmp_path: Path) -> None:
    p = tmp_path / "csl.csv"
    shutil.copyfile(CSV, p)
    stamp = dt.datetime(2026, 11, 1, tzinfo=dt.UTC).timestamp()
    os.utime(p, (stamp, stamp))
    now = [0.0]
    src = ScreeningSource(p, max_age_days=7, check_interval_s=60, clock=lambda: now[0])
    assert src.staleness(dt.date(2026, 11, 8)) is None, "7 days old is not older than 7 days"
    warning = src.staleness(dt.date(2026, 11, 9))
    assert warning is not None and "8 days old" in warning and "2026-11-01" in warning
    # A new list with one more row, dated later: read again after the check interval.
    p.write_text(CSV.read_text() + "90009,SDN,90009,Entity,X,NEWLY LISTED EXAMPLE HOLDING,,,,,,,,,,,,,,,,,,,,,,,\n")
    fresh = dt.datetime(2026, 11, 9, tzinfo=dt.UTC).timestamp()
    os.utime(p, (fresh, fresh))
    assert len(src.current()) == 5, "not before the check interval"
    now[0] = 61.0
    assert len(src.current()) == 6 and src.staleness(dt.date(2026, 11, 9)) is None
    # A broken file keeps the list already read.
    p.write_text("garbage\n")
    os.utime(p, (fresh + 60, fresh + 60))
    now[0] = 200.0
    assert len(src.current()) == 6
