"""The words of the dealer's reach, lapse, search and change-log pages (Dutch default,
English), kept apart from the portal's main catalogue so both can grow independently."""

from __future__ import annotations

from typing import Final

from services.portal.messages import Messages

WORDS: Final[dict[str, dict[str, str]]] = {
    "nl": {
        "nav_reach": "Bereik",
        "reach_title": "Bereik per categorie en kanaal",
        "reach_intro": "Hoeveel klanten en prospects u mag benaderen, vandaag, over 30 en over 90 dagen. Afgeleid "
                       "van de vastgelegde voorkeuren, facturen, termijnen en de wet op die datum.",
        "reach_source": "Gegevensbron",
        "reach_all_sources": "Alle bronnen",
        "reach_show": "Tonen",
        "reach_subjects": "Personen (niet verwijderd)",
        "reach_today": "Vandaag",
        "reach_in_30": "Over 30 dagen",
        "reach_in_90": "Over 90 dagen",
        "reach_chart": "Grafiek: bereikbare personen per categorie en kanaal",
        "reach_table": "Tabel: bereikbare personen",
        "reach_not_ready": "De cijfers zijn nog niet beschikbaar: de verwerking van deze dealer loopt nog. "
                           "Probeer het zo opnieuw.",
        "reach_lapses_link": "Wie vervalt binnenkort?",
        "lapse_title": "Vervallende toestemming",
        "lapse_intro": "Personen die u vandaag mag benaderen en binnen de gekozen termijn niet meer. Vraag hen "
                       "om toestemming voordat het zover is.",
        "lapse_days": "Binnen (dagen)",
        "lapse_category": "Categorie",
        "lapse_channel": "Kanaal",
        "lapse_any": "Alle",
        "lapse_none": "Niemand verliest binnen deze termijn een grondslag.",
        "lapse_on": "Vervalt op",
        "lapse_basis": "Grondslag nu",
        "lapse_csv": "Download als CSV (met contactgegevens; wordt vastgelegd)",
        "lapse_csv_admin_only": "Alleen beheerders kunnen de lijst met contactgegevens downloaden.",
        "lapse_count": "{n} vervallende combinaties",
        "lapse_more": "De eerste {n} worden getoond; de CSV bevat alles.",
        "bad_days": "Kies een aantal dagen van 1 tot en met 366.",
        "bad_choice": "Ongeldige keuze.",
        "basis_consent": "toestemming",
        "basis_soft_opt_in": "klantrelatie (soft opt-in)",
        "basis_legitimate_interest": "gerechtvaardigd belang",
        "col_customer": "Klant",
        "col_cell": "Categorie en kanaal",
        "nav_changes": "Wijzigingen",
        "mailing_title": "Mailinglijst voor een campagne",
        "mailing_intro": "Iedereen die u voor deze categorie en dit kanaal op de verzenddatum mag benaderen, met de "
                         "contactgegevens die het kanaal nodig heeft en wat bij elk bericht moet (bijvoorbeeld de "
                         "uitleg in de eerste brief aan een prospect). Elke download wordt vastgelegd.",
        "mailing_send_date": "Verzenddatum",
        "mailing_download": "Download mailinglijst (CSV)",
        "mailing_role_only": "Alleen gebruikers met de rol marketing kunnen mailinglijsten downloaden.",
        "bad_send_date": "Kies een verzenddatum van vandaag tot een jaar vooruit.",
        "reach_mailing_link": "Mailinglijst maken",
        "cl_title_page": "Wijzigingslog",
        "cl_intro": "Elke wijziging van beleid, opt-in termijnen, verwerkersovereenkomst, module, gegevensbronnen "
                    "en bewaartermijn, en elke export met persoonsgegevens: wie, wanneer, hoe en wat er veranderde. "
                    "Rechtstreeks uit het grootboek.",
        "cl_when": "Wanneer",
        "cl_who": "Wie",
        "cl_how": "Hoe",
        "cl_what": "Wat",
        "cl_created": "Dealer aangemaakt: {name}",
        "cl_created_details": "{chapters} hoofdstukken, gegevensbronnen: {sources}",
        "cl_agreement": "Verwerkersovereenkomst getekend",
        "cl_module": "Module mijngegevensbescherming actief",
        "cl_chapter_added": "Hoofdstuk toegevoegd: {title}",
        "cl_chapter_edited": "Hoofdstuk bewerkt: {title}",
        "cl_chapter_active": "Hoofdstuk actief gezet: {title}",
        "cl_chapter_moved": "Hoofdstuk verplaatst: {title}",
        "cl_chapter_deleted": "Hoofdstuk verwijderd: {title}",
        "cl_title": "Titel: {old} → {new}",
        "cl_active": "Actief: {value}",
        "cl_position": "Positie {old} → {new}",
        "cl_no_change": "Geen inhoudelijke wijziging",
        "cl_terms": "Opt-in termijnen gewijzigd",
        "cl_term_cell": "{cell}: {old} → {new} maanden",
        "cl_source_added": "Gegevensbron toegevoegd: {label} ({id})",
        "cl_retention": "Bewaartermijn gewijzigd",
        "cl_retention_details": "Klanten {old_y} → {new_y} jaar, prospects {old_m} → {new_m} maanden",
        "cl_export_lapse_list": "Export: vervallende toestemming (met contactgegevens)",
        "cl_export_mailing_list": "Export: mailinglijst (met contactgegevens)",
        "cl_export_days": "binnen {days} dagen",
        "cl_export_send_date": "verzenddatum {date}",
        "cl_export_rows": "{rows} regels",
        "cl_diff": "Verschil in de tekst",
        "cl_none": "Nog geen wijzigingen.",
        "cl_account_created": "Account aangemaakt: {user}",
        "cl_account_password_reset": "Wachtwoord opnieuw ingesteld: {user}",
        "cl_account_disabled": "Account uitgeschakeld: {user}",
        "cl_account_enabled": "Account ingeschakeld: {user}",
        "cl_account_unlocked": "Inlogwachttijd opgeheven: {user}",
        "cl_account_role": "Rol: {role}",
        "search_title": "Klant zoeken",
        "search_label": "Naam, e-mail, telefoon, postcode + huisnummer of kenteken",
        "search_button": "Zoek op gegevens",
        "search_none": "Niemand gevonden.",
        "search_help": "Gezocht wordt op de hele waarde (een woord van de naam is genoeg). De zoekindex bevat geen "
                       "leesbare gegevens.",
        "contact_title": "Contactgegevens en voertuig",
        "contact_none": "Geen contactgegevens bekend.",
        "f_name": "Naam",
        "f_email": "E-mail",
        "f_phone": "Telefoon",
        "f_address": "Adres",
        "f_licence_plate": "Kenteken",
        "f_vehicle": "Voertuig",
    },
    "en": {
        "nav_reach": "Reach",
        "reach_title": "Reach per category and channel",
        "reach_intro": "How many customers and prospects you may contact today, in 30 and in 90 days. Derived from "
                       "the recorded preferences, invoices, terms and the law on that date.",
        "reach_source": "Data source",
        "reach_all_sources": "All sources",
        "reach_show": "Show",
        "reach_subjects": "People (not erased)",
        "reach_today": "Today",
        "reach_in_30": "In 30 days",
        "reach_in_90": "In 90 days",
        "reach_chart": "Chart: people you may contact per category and channel",
        "reach_table": "Table: people you may contact",
        "reach_not_ready": "The figures are not available yet: this dealer is still being processed. Try again "
                           "shortly.",
        "reach_lapses_link": "Who drops out soon?",
        "lapse_title": "Lapsing permissions",
        "lapse_intro": "People you may contact today and no longer within the chosen period. Ask them for consent "
                       "before that day.",
        "lapse_days": "Within (days)",
        "lapse_category": "Category",
        "lapse_channel": "Channel",
        "lapse_any": "All",
        "lapse_none": "Nobody loses a basis within this period.",
        "lapse_on": "Lapses on",
        "lapse_basis": "Basis now",
        "lapse_csv": "Download as CSV (with contact details; the download is recorded)",
        "lapse_csv_admin_only": "Only admins can download the list with contact details.",
        "lapse_count": "{n} lapsing combinations",
        "lapse_more": "The first {n} are shown; the CSV has all of them.",
        "bad_days": "Choose a number of days from 1 to 366.",
        "bad_choice": "Invalid choice.",
        "basis_consent": "consent",
        "basis_soft_opt_in": "customer relationship (soft opt-in)",
        "basis_legitimate_interest": "legitimate interest",
        "col_customer": "Customer",
        "col_cell": "Category and channel",
        "nav_changes": "Changes",
        "mailing_title": "Mailing list for a campaign",
        "mailing_intro": "Everyone you may contact for this category and channel on the send date, with the contact "
                         "details the channel needs and what each message must do (for example the explanation in "
                         "the first letter to a prospect). Every download is recorded.",
        "mailing_send_date": "Send date",
        "mailing_download": "Download mailing list (CSV)",
        "mailing_role_only": "Only users with the marketing role can download mailing lists.",
        "bad_send_date": "Choose a send date from today up to a year ahead.",
        "reach_mailing_link": "Make a mailing list",
        "cl_title_page": "Change log",
        "cl_intro": "Every change of the policy, opt-in terms, processor agreement, module, data sources and "
                    "retention, and every export with personal data: who, when, how and what changed. Straight "
                    "from the ledger.",
        "cl_when": "When",
        "cl_who": "Who",
        "cl_how": "How",
        "cl_what": "What",
        "cl_created": "Dealer created: {name}",
        "cl_created_details": "{chapters} chapters, data sources: {sources}",
        "cl_agreement": "Processor agreement signed",
        "cl_module": "Module mijngegevensbescherming active",
        "cl_chapter_added": "Chapter added: {title}",
        "cl_chapter_edited": "Chapter edited: {title}",
        "cl_chapter_active": "Chapter (de)activated: {title}",
        "cl_chapter_moved": "Chapter moved: {title}",
        "cl_chapter_deleted": "Chapter deleted: {title}",
        "cl_title": "Title: {old} → {new}",
        "cl_active": "Active: {value}",
        "cl_position": "Position {old} → {new}",
        "cl_no_change": "No change in content",
        "cl_terms": "Opt-in terms changed",
        "cl_term_cell": "{cell}: {old} → {new} months",
        "cl_source_added": "Data source added: {label} ({id})",
        "cl_retention": "Retention changed",
        "cl_retention_details": "Customers {old_y} → {new_y} years, prospects {old_m} → {new_m} months",
        "cl_export_lapse_list": "Export: lapsing permissions (with contact details)",
        "cl_export_mailing_list": "Export: mailing list (with contact details)",
        "cl_export_days": "within {days} days",
        "cl_export_send_date": "send date {date}",
        "cl_export_rows": "{rows} rows",
        "cl_diff": "Difference in the text",
        "cl_none": "No changes yet.",
        "cl_account_created": "Account created: {user}",
        "cl_account_password_reset": "Password reset: {user}",
        "cl_account_disabled": "Account disabled: {user}",
        "cl_account_enabled": "Account enabled: {user}",
        "cl_account_unlocked": "Login back-off lifted: {user}",
        "cl_account_role": "Role: {role}",
        "search_title": "Find a customer",
        "search_label": "Name, e-mail, phone, postcode + house number or licence plate",
        "search_button": "Search by details",
        "search_none": "Nobody found.",
        "search_help": "The whole value is matched (one word of a name is enough). The search index holds no "
                       "readable data.",
        "contact_title": "Contact details and vehicle",
        "contact_none": "No contact details known.",
        "f_name": "Name",
        "f_email": "E-mail",
        "f_phone": "Phone",
        "f_address": "Address",
        "f_licence_plate": "Licence plate",
        "f_vehicle": "Vehicle",
    },
}


class DealerWords:
    """``d("reach_title")`` in templates; falls back to the portal's catalogue."""

    def __init__(self, t: Messages) -> None:
        self._t = t
        self._words = WORDS[t.lang]

    users: dict[str, str] = {}  # user:<id> -> e-mail, set by the change log page

    def user(self, user_id: str) -> str:
        return self.users.get(f"user:{user_id}", user_id)

    def date(self, day: object) -> str:
        return self._t.date(day)  # type: ignore[arg-type]

    def cell(self, category: str, channel: str) -> str:
        return f"{self._t.category_admin(category)}, {self._t.channel(channel)}"

    def __call__(self, key: str, **values: object) -> str:
        text = self._words.get(key)
        if text is None:
            return self._t(key, **values)
        return text.format(**values) if values else text
