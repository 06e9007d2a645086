"""What a new tenant starts with: the seed's ten policy chapters and the default terms.

Source: ``seed/avg-beheer-mymarketingmanager.nl.txt``, section 3 "Voorbeeld Privacy policy
teksten" (chapters, in the seed's order, with its exact Dutch titles and texts; chapters 7
and 10 are "NIET ACTIEF") and PRODUCT.md's term table (= seed sections 6.1 to 6.3).
Bodies are simple, safe HTML (``<p>``, ``<ul><li>``); the seed's wording is kept verbatim,
including its small typos, because it is the text dealers recognise.
"""

from __future__ import annotations

from typing import Final

from consent.terms import ALL_CELLS, default_term_months
from schemas.events import Chapter, TenantCreated, TermCell
from schemas.vocabulary import DEFAULT_DATA_SOURCES

__all__ = ["DEFAULT_CHAPTERS", "DEFAULT_PROSPECT_DISCLOSURE", "default_chapters", "default_term_cells", "new_tenant"]


def _p(text: str) -> str:
    return f"<p>{text}</p>"


def _ul(*items: str) -> str:
    return "<ul>" + "".join(f"<li>{item}</li>" for item in items) + "</ul>"


DEFAULT_CHAPTERS: Final[tuple[Chapter, ...]] = (
    Chapter(
        chapter_id="c01",
        title="Wie is verantwoordelijk voor gegevensverwerkingshandelingen?",
        body=_p(
            "Wij zijn verantwoordelijk voor de verwerking van uw persoonsgegevens die u als klant aan ons "
            "heeft verstrekt in het kader van een aankoop of afname van een service of dienst. Evenzo zijn "
            "wij verantwoordelijk voor de verwerking van persoonsgegevens van niet-klanten die we benaderen "
            "met informatie over ons bedrijf."
        ),
        active=True,
    ),
    Chapter(
        chapter_id="c02",
        title="Wanneer verzamelen wij persoonsgegevens?",
        body=_p(
            "Persoonsgegevens van klanten worden vastgelegd in onze bedrijfsadministratie op het moment dat "
            "u een aankoop doet of bijvoorbeeld een werkplaatsafspraak maakt. Persoonsgegevens van "
            "niet-klanten worden aangekocht bij een datacenter of verkregen omdat een (informatie)aanvraag "
            "via email of website wordt gedaan."
        ),
        active=True,
    ),
    Chapter(
        chapter_id="c03",
        title="Welke gegevens over u kunnen worden verzameld?",
        body=(
            _p("Wij leggen uitsluitend gewone persoonsgegevens vast. Dit zijn:")
            + _ul(
                "Naam/voorletters/tussenvoegsel",
                "Titel",
                "Adres",
                "Postcode",
                "Woonplaats",
                "Land",
                "(Mobiele) telefoonnummer(s)",
                "Faxnummer",
                "E-mailadres",
                "Website",
                "Geslacht",
                "Geboortedatum",
            )
            + _p("Hieraan gerelateerd:")
            + _ul("Bedrijfsnaam", "Bankrekeningnummer", "Kenteken", "Chassisnummer", "KvK nummer")
            + _p(
                "Voor het overschrijven van kentekens wordt gevraagd uw paspoort of rijbewijs te tonen. Deze "
                "gegevens worden gebruikt om te verwerken in het RDW-register en worden niet door ons "
                "opgeslagen. Na verwerking in RDW-register zijn deze niet meer zichtbaar voor ons."
            )
        ),
        active=True,
    ),
    Chapter(
        chapter_id="c04",
        title="Wat is het doel van de verwerking van uw gegevens?",
        body=(
            _p("Uw persoonsgegevens worden door ons verwerkt ten behoeve van de volgende doeleinden:")
            + _ul(
                "Het aangaan van overeenkomsten voor bijvoorbeeld uitvoeren van reparaties en onderhoud aan "
                "voertuigen, verhuren van auto's en aanhangwagens, leveren van brandstof, verlenen van "
                "pechhulp, aan-of verkoop van voertuigen.",
                "Het versturen van serviceherinneringen, nieuwsbrieven en actie aanbiedingen",
                "Het overschrijven van kentekens",
            )
        ),
        active=True,
    ),
    Chapter(
        chapter_id="c05",
        title="Hoe beschermen we uw persoonsgegevens?",
        body=(
            _p(
                "Wij hebben passende technische en organisatorische maatregelen genomen om persoonsgegevens "
                "van u te beschermen tegen onrechtmatige verwerking, zo hebben we o.a. de volgende "
                "maatregelen genomen:"
            )
            + _ul(
                "Opslag en dataverwerking vindt plaats op servers voorzien van actuele beveiligingssoftware.",
                "Software updates worden consequent doorgevoerd.",
                "Waar van toepassing worden voorts wachtwoorden gepseudonimiseerd of versleuteld.",
                "Voor externe toegang wordt gebruikt gemaakt van SFTP en HTTPS-communicatie protocollen.",
                "Papier dossiers worden opgeslagen in afgesloten ruimtes.",
                "Toegang tot persoonsgegevens is voorbehouden aan functionarissen die belast zijn met de "
                "uitvoering van werkzaamheden in het kader van de beschreven doeleinden.",
            )
            + _p(
                "In geval het voor het uitvoeren van een transactie of dienst noodzakelijk is uw "
                "persoonsgegevens te delen met een derde partij wordt dat uitsluitend gedaan indien er met "
                "die partij een Verwerkersovereenkomst is opgesteld waarmee de correcte omgang met uw "
                "gegevens is gewaarborgd."
            )
        ),
        active=True,
    ),
    Chapter(
        chapter_id="c06",
        title="Hoe lang bewaren we uw gegevens?",
        body=_p(
            "Wij bewaren uw persoonsgegevens niet langer dan noodzakelijk is voor het doel waarvoor deze zijn "
            "verstrekt dan wel op grond van de wet is vereist. Voor klanten is dat maximaal 7 jaar na laatste "
            "transactie/factuur datum. Voor niet-klanten is dat maximaal 3 maanden na uitvoering "
            "marketingactiviteiten."
        ),
        active=True,
    ),
    Chapter(
        chapter_id="c07",
        title="Aan wie geven we internationale toegang tot uw gegevens en hoe zorgen we voor bescherming?",
        body=_p("invullen en activeren indien van toepassing"),
        active=False,
    ),
    Chapter(
        chapter_id="c08",
        title="Hoe kunt u uw communicatie instellingen bekijken en wijzigen?",
        body=_p(
            "Neem hiervoor contact met ons op. Wij sturen u dan per email een link waarmee u de instellingen "
            "kunt inzien en desgewenst aanpassen."
        ),
        active=True,
    ),
    Chapter(
        chapter_id="c09",
        title="Neem contact met ons op over uw rechten inzake persoonsgegevensbescherming.",
        body=_p(
            "Heeft u een vraag, opmerking of klacht over de verwerking van uw persoonsgegevens? Neem dan bij "
            "voorkeur telefonisch of per email contact met ons op."
        ),
        active=True,
    ),
    Chapter(
        chapter_id="c10",
        title="Hoe kunt u uw consumentenrecht in het kader van de AVG uitoefenen?",
        body=_p(
            "Via ons AVG platform op mijngegevensbescherming.nl kunt een verzoek tot inzage indienen, een "
            "vraag stellen of eventueel een klacht indienen. Ga hiervoor naar onze website en klik daar op "
            'menukeuze "AVG platform"'
        ),
        active=False,
    ),
)
"""The seed's ten default chapters, in the seed's order (section 3)."""


# GDPR art. 14 and 21(4): what the first letter to a prospect must say. The dealer edits it on
# the AVG pages; {dealer} is filled in with the dealer's name when it is shown.
DEFAULT_PROSPECT_DISCLOSURE: Final = (
    "U ontvangt deze brief van {dealer} omdat wij uw naam en adres hebben verkregen van een"
    " adresleverancier of omdat u bij ons informatie heeft aangevraagd. Wij gebruiken deze gegevens"
    " om u aanbiedingen over onze auto's en diensten te sturen, op grond van ons gerechtvaardigd"
    " belang (artikel 6, lid 1, onder f, AVG). Wij delen uw gegevens niet met anderen, behalve met"
    " het bedrijf dat deze brief voor ons verstuurt. Wij bewaren uw gegevens niet langer dan nodig."
    " U kunt altijd en kosteloos bezwaar maken tegen het gebruik van uw gegevens voor direct"
    " marketing (artikel 21 AVG): dan sturen wij u niets meer. Bel of mail ons daarvoor, of gebruik"
    " het Privacy Portaal. U heeft ook recht op inzage, correctie en verwijdering van uw gegevens,"
    " en u kunt een klacht indienen bij de Autoriteit Persoonsgegevens."
)


def default_chapters() -> list[Chapter]:
    """:data:`DEFAULT_CHAPTERS` as a list (the shape ``TenantCreated.chapters`` takes)."""
    return list(DEFAULT_CHAPTERS)


def default_term_cells() -> list[TermCell]:
    """All 25 cells of the seed's default term matrix (PRODUCT.md, "Domain")."""
    return [TermCell(category=c, channel=h, months=default_term_months(c, h)) for c, h in ALL_CELLS]


def new_tenant(tenant_id: str, name: str) -> TenantCreated:
    """The :class:`TenantCreated` event of a new dealer with the seed's defaults."""
    return TenantCreated(
        tenant_id=tenant_id,
        name=name,
        data_sources=dict(DEFAULT_DATA_SOURCES),
        chapters=default_chapters(),
        terms=default_term_cells(),
    )
