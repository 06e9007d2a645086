"""The seed's default policy and the policy fold and version id (PRODUCT.md, "Privacy policy")."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from consent.policy import (
    active_chapters,
    apply_policy,
    fold_policy,
    next_chapter_id,
    policy_problem,
    policy_version,
)
from consent.seed import DEFAULT_CHAPTERS, default_chapters, default_term_cells, new_tenant
from consent.terms import DEFAULT_TERMS
from schemas.events import (
    Chapter,
    PolicyChapterActiveSet,
    PolicyChapterAdded,
    PolicyChapterDeleted,
    PolicyChapterEdited,
    PolicyChapterMoved,
    decode_event,
    encode_event,
)
from schemas.vocabulary import DEFAULT_DATA_SOURCES

SEED_TITLES = [
    "Wie is verantwoordelijk voor gegevensverwerkingshandelingen?",
    "Wanneer verzamelen wij persoonsgegevens?",
    "Welke gegevens over u kunnen worden verzameld?",
    "Wat is het doel van de verwerking van uw gegevens?",
    "Hoe beschermen we uw persoonsgegevens?",
    "Hoe lang bewaren we uw gegevens?",
    "Aan wie geven we internationale toegang tot uw gegevens en hoe zorgen we voor bescherming?",
    "Hoe kunt u uw communicatie instellingen bekijken en wijzigen?",
    "Neem contact met ons op over uw rechten inzake persoonsgegevensbescherming.",
    "Hoe kunt u uw consumentenrecht in het kader van de AVG uitoefenen?",
]


def ids(chapters: tuple[Chapter, ...]) -> list[str]:
    return [c.chapter_id for c in chapters]


# --- seed -------------------------------------------------------------------------------


def test_the_seed_has_ten_chapters_in_the_seeds_order_with_its_titles() -> None:
    assert [c.title for c in DEFAULT_CHAPTERS] == SEED_TITLES
    assert ids(DEFAULT_CHAPTERS) == [f"c{i:02d}" for i in range(1, 11)]


def test_two_seed_chapters_are_inactive_international_access_and_consumer_rights() -> None:
    inactive = [c.chapter_id for c in DEFAULT_CHAPTERS if not c.active]
    assert inactive == ["c07", "c10"]
    assert len(active_chapters(DEFAULT_CHAPTERS)) == 8


def test_seed_bodies_are_simple_html_with_the_seeds_text() -> None:
    for chapter in DEFAULT_CHAPTERS:
        tags = set(re.findall(r"</?([a-z]+)[^>]*>", chapter.body))
        assert tags <= {"p", "ul", "li"}, chapter.chapter_id
        assert chapter.body.startswith("<p>")
    by_id = {c.chapter_id: c for c in DEFAULT_CHAPTERS}
    assert "afname van een service of dienst" in by_id["c01"].body
    assert "<li>Kenteken</li>" in by_id["c03"].body
    assert "maximaal 7 jaar na laatste transactie/factuur datum" in by_id["c06"].body
    assert "maximaal 3 maanden na uitvoering marketingactiviteiten" in by_id["c06"].body
    assert by_id["c07"].body == "<p>invullen en activeren indien van toepassing</p>"
    assert by_id["c10"].body.endswith('klik daar op menukeuze "AVG platform"</p>')


SEED_FILE = Path("/work/shared/seed/avg-beheer-mymarketingmanager.nl.txt")


@pytest.mark.skipif(not SEED_FILE.exists(), reason="seed document not available")
def test_seed_bodies_have_exactly_the_seed_documents_words() -> None:
    section = SEED_FILE.read_text(encoding="utf-8").split("3. Voorbeeld Privacy policy teksten\n", 1)[1]
    section = section.split("4. Module Mijngegevensbescherming\n", 1)[0]

    def words(text: str) -> str:
        return " ".join(text.replace("- ", "").split())

    def marker(chapter: Chapter) -> str:
        return f"{chapter.title} ({'ACTIEF' if chapter.active else 'NIET ACTIEF'})"

    for i, chapter in enumerate(DEFAULT_CHAPTERS):
        start = section.index(marker(chapter)) + len(marker(chapter))
        end = section.index(marker(DEFAULT_CHAPTERS[i + 1])) if i + 1 < len(DEFAULT_CHAPTERS) else len(section)
        assert words(re.sub(r"<[^>]+>", " ", chapter.body)) == words(section[start:end]), chapter.chapter_id


def test_the_default_term_cells_are_the_25_seed_cells() -> None:
    cells = default_term_cells()
    assert len(cells) == 25
    assert {(c.category, c.channel): c.months for c in cells} == {
        tuple(k.split(":")): v for k, v in DEFAULT_TERMS.months.items()
    }


def test_a_new_tenant_event_carries_the_seed_defaults_and_encodes() -> None:
    event = new_tenant("acme", "Autobedrijf Acme")
    assert event.data_sources == DEFAULT_DATA_SOURCES
    assert event.chapters == default_chapters()
    assert decode_event(encode_event(event)) == event


# --- fold -------------------------------------------------------------------------------

SEED = tuple(DEFAULT_CHAPTERS)


def test_adding_a_chapter_appends_it_at_the_end() -> None:
    new = Chapter(chapter_id="c11", title="Cookies", body="<p>Wij gebruiken cookies.</p>")
    chapters = apply_policy(SEED, PolicyChapterAdded(chapter=new))
    assert ids(chapters)[-1] == "c11"
    assert len(chapters) == 11


@pytest.mark.parametrize(
    ("chapter_id", "to_index", "expected_order"),
    [
        ("c02", 0, ["c02", "c01", "c03"]),  # up
        ("c01", 1, ["c02", "c01", "c03"]),  # down
        ("c01", 9, ["c02", "c03", "c04"]),  # to the end (first three shown)
        ("c01", 99, ["c02", "c03", "c04"]),  # past the end clamps to the end
        ("c05", 4, ["c01", "c02", "c03"]),  # to where it is: no change
    ],
)
def test_moving_a_chapter_puts_it_at_the_index_in_the_full_list(
    chapter_id: str, to_index: int, expected_order: list[str]
) -> None:
    chapters = apply_policy(SEED, PolicyChapterMoved(chapter_id=chapter_id, to_index=to_index))
    assert ids(chapters)[:3] == expected_order
    assert ids(chapters)[min(to_index, 9)] == chapter_id
    assert sorted(ids(chapters)) == sorted(ids(SEED))


def test_editing_deleting_and_activating_chapters() -> None:
    chapters = fold_policy(
        [
            new_tenant("acme", "Acme"),
            PolicyChapterEdited(
                chapter_id="c07", title="Internationaal", body="<p>Niet van toepassing.</p>", active=True
            ),
            PolicyChapterActiveSet(chapter_id="c10", active=True),
            PolicyChapterDeleted(chapter_id="c03"),
        ]
    )
    by_id = {c.chapter_id: c for c in chapters}
    assert "c03" not in by_id
    assert by_id["c07"] == Chapter(
        chapter_id="c07", title="Internationaal", body="<p>Niet van toepassing.</p>", active=True
    )
    assert by_id["c10"].active
    assert len(active_chapters(chapters)) == 9


def test_events_naming_an_unknown_chapter_change_nothing_in_the_fold() -> None:
    for event in (
        PolicyChapterEdited(chapter_id="zz", title="x", body="y", active=True),
        PolicyChapterActiveSet(chapter_id="zz", active=False),
        PolicyChapterMoved(chapter_id="zz", to_index=0),
        PolicyChapterDeleted(chapter_id="zz"),
    ):
        assert apply_policy(SEED, event) == SEED
        assert policy_problem(SEED, event) == "no chapter 'zz'"


def test_the_command_side_rejects_a_duplicate_id_and_a_move_out_of_range() -> None:
    assert policy_problem(SEED, PolicyChapterAdded(chapter=SEED[0])) == "chapter 'c01' already exists"
    assert policy_problem(SEED, PolicyChapterMoved(chapter_id="c01", to_index=10)) == "to_index must be below 10"
    assert policy_problem(SEED, PolicyChapterMoved(chapter_id="c01", to_index=9)) is None
    assert (
        policy_problem(SEED, PolicyChapterEdited(chapter_id="c01", title=" ", body="", active=True))
        == "a chapter needs a title"
    )


def test_the_next_chapter_id_follows_the_seed_style() -> None:
    assert next_chapter_id(SEED) == "c11"
    assert next_chapter_id(()) == "c01"


# --- version ----------------------------------------------------------------------------


def test_a_policy_version_is_pv_and_16_hex_chars_and_stable() -> None:
    version = policy_version(SEED)
    assert re.fullmatch(r"pv-[0-9a-f]{16}", version)
    assert policy_version(default_chapters()) == version


@pytest.mark.parametrize(
    ("event", "changes"),
    [
        (PolicyChapterEdited(chapter_id="c01", title=SEED[0].title, body="<p>Nieuw.</p>", active=True), True),
        (PolicyChapterEdited(chapter_id="c01", title="Andere titel", body=SEED[0].body, active=True), True),
        (PolicyChapterEdited(chapter_id="c01", title=SEED[0].title, body=SEED[0].body, active=True), False),
        (PolicyChapterActiveSet(chapter_id="c01", active=False), True),  # disappears from the portal
        (PolicyChapterActiveSet(chapter_id="c07", active=True), True),  # appears
        (PolicyChapterActiveSet(chapter_id="c07", active=False), False),  # already inactive
        (PolicyChapterMoved(chapter_id="c02", to_index=0), True),  # visible order
        (PolicyChapterMoved(chapter_id="c07", to_index=0), False),  # only an inactive chapter moves
        (PolicyChapterMoved(chapter_id="c10", to_index=7), False),  # inactive between active ones
        (PolicyChapterDeleted(chapter_id="c04"), True),
        (PolicyChapterDeleted(chapter_id="c10"), False),  # an inactive one
        (PolicyChapterEdited(chapter_id="c07", title="x", body="<p>y</p>", active=False), False),
        (PolicyChapterAdded(chapter=Chapter(chapter_id="c11", title="Nieuw", body="<p>z</p>")), True),
        (PolicyChapterAdded(chapter=Chapter(chapter_id="c11", title="Concept", body="<p>z</p>", active=False)), False),
    ],
)
def test_the_policy_version_changes_iff_the_active_content_or_its_order_changes(event: object, changes: bool) -> None:
    after = apply_policy(SEED, event)  # type: ignore[arg-type]
    assert (policy_version(after) != policy_version(SEED)) is changes


def test_chapter_ids_do_not_count_in_the_version_only_what_the_customer_sees() -> None:
    renamed = tuple(
        Chapter(chapter_id=f"x{i}", title=c.title, body=c.body, active=c.active) for i, c in enumerate(SEED)
    )
    assert policy_version(renamed) == policy_version(SEED)


def test_moving_a_chapter_back_restores_the_earlier_version() -> None:
    moved = apply_policy(SEED, PolicyChapterMoved(chapter_id="c02", to_index=0))
    back = apply_policy(moved, PolicyChapterMoved(chapter_id="c02", to_index=1))
    assert back == SEED
    assert policy_version(back) == policy_version(SEED)
