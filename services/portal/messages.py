"""The portal's words in Dutch (default) and English: a small message catalogue.

Dutch is the language of the dealers and their customers; English is there for customers
who ask for it (``?lang=en`` or ``Accept-Language``). Category and channel wording is what a
person understands ("Onderhoudsherinneringen per e-mail"), not the ids of the contract.
"""

from __future__ import annotations

import datetime as dt
from typing import Final, Literal

Lang = Literal["nl", "en"]
LANGS: Final[tuple[Lang, ...]] = ("nl", "en")

CATEGORY_LABEL: Final[dict[Lang, dict[str, str]]] = {
    "nl": {
        "aftersales_service": "Onderhouds- en APK-herinneringen",
        "newsletter": "Nieuwsbrief",
        "sales_campaign": "Aanbiedingen voor auto's (verkoop en lease)",
        "aftersales_campaign": "Werkplaatsacties (aircocheck, banden, accessoires)",
        "prospect": "Kennismakingsberichten",
    },
    "en": {
        "aftersales_service": "Service and MOT reminders",
        "newsletter": "Newsletter",
        "sales_campaign": "Offers on cars (sales and lease)",
        "aftersales_campaign": "Workshop offers (air-con check, tyres, accessories)",
        "prospect": "Introductory messages",
    },
}
# Short nouns for sentences: "Onderhoudsherinneringen per e-mail".
CATEGORY_NOUN: Final[dict[Lang, dict[str, str]]] = {
    "nl": {
        "aftersales_service": "Onderhoudsherinneringen",
        "newsletter": "Nieuwsbrief",
        "sales_campaign": "Verkoopacties",
        "aftersales_campaign": "Werkplaatsacties",
        "prospect": "Kennismakingsberichten",
    },
    "en": {
        "aftersales_service": "Service reminders",
        "newsletter": "Newsletter",
        "sales_campaign": "Sales offers",
        "aftersales_campaign": "Workshop offers",
        "prospect": "Introductory messages",
    },
}
CATEGORY_ADMIN: Final[dict[Lang, dict[str, str]]] = {
    "nl": {"aftersales_service": "Aftersales service", "newsletter": "Nieuwsbrief", "sales_campaign": "Sales acties",
           "aftersales_campaign": "Aftersales acties", "prospect": "Prospects"},
    "en": {"aftersales_service": "Aftersales service", "newsletter": "Newsletter", "sales_campaign": "Sales campaigns",
           "aftersales_campaign": "Aftersales campaigns", "prospect": "Prospects"},
}
CHANNEL_PHRASE: Final[dict[Lang, dict[str, str]]] = {
    "nl": {"email": "per e-mail", "post": "per post", "phone": "telefonisch", "sms": "per sms", "app": "via de app"},
    "en": {"email": "by e-mail", "post": "by post", "phone": "by phone", "sms": "by text message", "app": "in the app"},
}
CHANNEL_LABEL: Final[dict[Lang, dict[str, str]]] = {
    "nl": {"email": "E-mail", "post": "Post", "phone": "Telefoon", "sms": "SMS", "app": "Mobiele app"},
    "en": {"email": "E-mail", "post": "Post", "phone": "Phone", "sms": "SMS", "app": "Mobile app"},
}
MONTHS: Final[dict[Lang, tuple[str, ...]]] = {
    "nl": ("januari", "februari", "maart", "april", "mei", "juni", "juli", "augustus", "september", "oktober",
           "november", "december"),
    "en": ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December"),
}

TEXT: Final[dict[Lang, dict[str, str]]] = {
    "nl": {
        "skip": "Naar de inhoud",
        "portal_title": "Privacy Portaal",
        "portal_intro": "Hier leest u ons privacybeleid en bepaalt u zelf welke berichten u van ons ontvangt.",
        "source": "Gegevens uit",
        "policy": "Ons privacybeleid",
        "policy_version": "Versie",
        "settings": "Uw instellingen",
        "settings_help": "Kies per soort bericht en per kanaal wat u wilt. Uw keuze geldt direct na opslaan.",
        "col_channel": "Kanaal",
        "col_now": "Nu",
        "col_choice": "Uw keuze",
        "choice_default": "Volgens de termijn hiernaast",
        "choice_opt_in": "Ja, graag",
        "choice_opt_out": "Nee, liever niet",
        "save": "Instellingen opslaan",
        "object_title": "Geen marketing meer",
        "object_help": "U kunt bezwaar maken tegen alle direct marketing. Daarna sturen wij u geen "
                       "marketingberichten meer, ongeacht de instellingen hierboven.",
        "object_button": "Afmelden voor alle marketing",
        "objected_banner": "U heeft zich afgemeld voor alle marketing. Wij sturen u geen marketingberichten.",
        "withdraw_button": "Afmelding intrekken",
        "saved": "Uw wijziging is opgeslagen.",
        "nothing_changed": "Er is niets gewijzigd.",
        "receipt": "Download uw bevestiging (JSON)",
        "receipt_help": "De bevestiging vermeldt wat u heeft gekozen, wanneer, en welke versie van ons "
                        "privacybeleid u zag.",
        "policy_changed": "Ons privacybeleid is gewijzigd terwijl u deze pagina open had. Lees het nieuwe beleid "
                          "en sla uw keuze opnieuw op.",
        "invalid_choice": "Er is een ongeldige keuze verstuurd.",
        "field_text_invalid": "Het veld {field} bevat een teken dat niet in tekst thuishoort (een stuurteken)."
                              " Er is niets opgeslagen.",
        "yes": "Ja",
        "no": "Nee",
        "neutral_title": "Link niet geldig",
        "neutral_body": "Deze link is niet (meer) geldig. Vraag het bedrijf dat u deze link stuurde om een "
                        "nieuwe link.",
        "rate_title": "Even geduld",
        "rate_body": "Er komen te veel verzoeken vanaf uw adres. Probeer het over een minuut opnieuw.",
        "forbidden_title": "Geen toegang",
        "forbidden_body": "U heeft geen toegang tot deze pagina.",
        "csrf_body": "Het formulier is verlopen of niet vanaf deze site verstuurd. Laad de pagina opnieuw en "
                     "probeer het nog eens.",
        "not_found_title": "Niet gevonden",
        "not_found_body": "Deze pagina bestaat niet.",
        "bad_request_title": "Ongeldig verzoek",
        "error_title": "Er ging iets mis",
        "error_body": "Probeer het later opnieuw.",
        "language": "Taal",
        "preview_banner": "Voorbeeld voor medewerkers: zo ziet de klant het portaal. Wijzigen kan hier niet; "
                          "gebruik daarvoor de klantpagina.",
        # why (the decision explained)
        "why_erased": "Nee: uw gegevens zijn verwijderd.",
        "why_objected": "Nee: u heeft zich afgemeld voor alle marketing (sinds {since}).",
        "why_opted_out": "Nee: u heeft zich hiervoor afgemeld (sinds {since}).",
        "why_explicit_consent": "Ja: u heeft hiervoor toestemming gegeven (op {since}).",
        "why_soft_opt_in": "Ja, tot {until}, op basis van uw laatste aankoop of werkplaatsbezoek ({start}).",
        "why_prospect_term": "Ja, per post tot {until}: wij ontvingen uw gegevens op {start}.",
        "why_term_expired": "Nee: de termijn na uw laatste aankoop of bezoek is verlopen.",
        "why_term_expired_prospect": "Nee: de termijn is verlopen.",
        "why_not_a_customer": "Nee: alleen als u hiervoor toestemming geeft.",
        "why_consent_required": "Nee: alleen als u hiervoor toestemming geeft.",
        "why_not_a_prospect": "Nee: niet van toepassing.",
        # staff
        "staff_title": "AVG Beheer",
        "login_title": "Inloggen AVG Beheer",
        "login_tenant": "Bedrijf (code)",
        "login_email": "E-mailadres",
        "login_password": "Wachtwoord",
        "login_button": "Inloggen",
        "login_failed": "Inloggen mislukt: controleer bedrijfscode, e-mailadres en wachtwoord.",
        "login_locked": "Te veel mislukte pogingen vanaf dit adres. Wacht even en probeer het dan opnieuw (na elke"
                        " volgende fout wat langer), of vraag een beheerder het account te ontgrendelen.",
        "logout": "Uitloggen",
        "logged_in_as": "Ingelogd als",
        "nav_overview": "AVG Beheer",
        "nav_policy": "AVG Beleid",
        "nav_terms": "AVG opt-in beleid",
        "nav_customers": "Klant raadplegen",
        "nav_reach": "Bereik",
        "nav_changes": "Wijzigingen",
        "nav_users": "Gebruikers",
        "agreement": "AVG overeenkomst getekend",
        "agreement_on": "getekend op",
        "module": "MijnGegevensBescherming.nl",
        "module_active": "Actief",
        "module_inactive": "Niet actief",
        "admins": "Gebruikers met beheerdersrechten",
        "admins_none": "Er zijn geen actieve beheerders.",
        "disclaimer": "Achter de twee knoppen beheert u uw AVG-beleid en uw opt-in instellingen, op basis van de "
                      "privacy policy van uw eigen bedrijf. De standaardteksten en -termijnen zijn een startpunt: het "
                      "blijft uw verantwoordelijkheid ze aan te passen aan de werkelijke situatie in uw bedrijf. Wat u "
                      "hier beheert, ziet uw klant in het Privacy Portaal.",
        "change": "Wijzigen",
        "signed_on_label": "Datum getekend",
        "date_invalid": "Vul bij een getekende overeenkomst de datum van ondertekening in.",
        "set_agreement": "Overeenkomst opslaan",
        "set_module": "Module opslaan",
        "saved_staff": "Opgeslagen.",
        "back_overview": "Terug naar de AVG pagina",
        "back_list": "Terug naar overzicht",
        "new_chapter": "Nieuw hoofdstuk",
        "col_active": "Actief",
        "col_title": "Titel",
        "col_actions": "Acties",
        "up": "Up",
        "down": "Down",
        "delete": "Verwijder",
        "edit": "Bewerken",
        "body": "Body",
        "body_help": "Opmaak met HTML is toegestaan (alinea's, lijsten, vet, cursief, links). Scripts en andere "
                     "actieve inhoud worden verwijderd.",
        "save_changes": "Wijzigingen opslaan",
        "title_required": "Vul een titel in.",
        "title_too_long": "De titel is te lang (maximaal 200 tekens).",
        "body_too_long": "De tekst is te lang (maximaal 20.000 tekens).",
        "terms_intro": "Het aantal maanden na de laatste factuurdatum (prospects: na de datum waarop de gegevens "
                       "zijn verkregen) waarin een bericht mag worden verstuurd.",
        "terms_disclaimer": "De standaardtermijnen zijn gebaseerd op een interpretatie van de wetgeving. Pas ze aan "
                            "aan wat de privacy policy van uw eigen bedrijf zegt.",
        "col_category": "Marketing doelgroep",
        "months_invalid": "Vul een heel getal van 0 tot en met 120 in.",
        "terms_errors": "Niet opgeslagen: controleer de gemarkeerde velden.",
        "warnings": "Aandachtspunten",
        "no_warnings": "Geen aandachtspunten.",
        "severity_warning": "Let op",
        "severity_info": "Ter informatie",
        "law_title": "Wet- en regelgeving",
        "law_intro": "Wat de wet en de gedragscodes zeggen over berichten die vandaag ({date}) worden verstuurd. "
                     "Een wet beslist het antwoord aan uw verzendsystemen, ook als uw termijn langer is; een "
                     "gedragscode geeft een aandachtspunt. Regelversie {version}.",
        "law_in_force": "Geldt nu",
        "law_upcoming": "Gaat later in",
        "law_none_upcoming": "Er staan geen latere wijzigingen in onze regeltabel.",
        "law_kind_statute": "Wet",
        "law_kind_code": "Gedragscode",
        "law_since": "Geldt sinds {date}",
        "law_long_standing": "Geldt al lang",
        "law_until": "tot en met {date}",
        "law_starts": "Geldt vanaf {date}",
        "law_source": "Bron",
        "law_unconfirmed": "Het besluit dat deze datum vastlegt staat nog niet in onze bronnen; de datum kan "
                           "nog verschuiven.",
        "audience_customer": "klanten",
        "audience_non_customer": "niet-klanten",
        "find_customer": "Klant zoeken",
        "data_source": "Databron",
        "customer_ref": "Klantnummer",
        "find": "Zoeken",
        "customer_not_found": "Geen klant gevonden met dit klantnummer in deze databron.",
        "customer": "Klant",
        "kind_customer": "klant",
        "kind_prospect": "prospect",
        "portal_link": "AVG/GDPR Privacy voorkeuren",
        "link_live": "Er is een persoonlijke link, gemaakt op {date}. Om veiligheidsredenen bewaren wij de link "
                     "zelf niet; maak een nieuwe link als u hem wilt versturen.",
        "link_none": "Er is nog geen persoonlijke link.",
        "link_new": "Nieuwe link maken",
        "link_rotate": "Nieuwe link maken (de oude link vervalt)",
        "link_revoke": "Link intrekken",
        "link_issued": "Nieuwe persoonlijke link (alleen nu zichtbaar):",
        "link_revoked": "De link is ingetrokken.",
        "open_portal": "Portaal bekijken zoals de klant het ziet",
        "change_on_behalf": "Wijzigen namens de klant",
        "request_method": "Verzoek ontvangen",
        "method_phone": "telefonisch",
        "method_email": "per e-mail",
        "method_in_person": "aan de balie",
        "reason": "Reden",
        "reason_help": "Bijvoorbeeld: telefonisch verzoek van de klant.",
        "reason_required": "Vul een reden in.",
        "reason_too_long": "De reden is te lang (maximaal 500 tekens).",
        "objection_on_behalf": "Afmelden voor alle marketing namens de klant",
        "withdraw_on_behalf": "Afmelding intrekken namens de klant",
        "history": "Geschiedenis",
        "col_when": "Wanneer",
        "col_what": "Wat",
        "col_who": "Door",
        "col_how": "Via",
        "col_version": "Beleidsversie",
        "users_title": "Gebruikers",
        "col_email": "E-mailadres",
        "col_role": "Rol",
        "col_status": "Status",
        "role_admin": "beheerder",
        "role_staff": "medewerker",
        "role_marketing": "marketing (mailingexport)",
        "status_active": "actief",
        "status_disabled": "uitgeschakeld",
        "status_locked": "geblokkeerd tot {until}",
        "status_backoff": "moet wachten na mislukte logins ({n} adres(sen))",
        "unlock": "Ontgrendelen",
        "new_user": "Nieuwe gebruiker",
        "create_user": "Gebruiker aanmaken",
        "reset_password": "Wachtwoord resetten",
        "disable": "Uitschakelen",
        "enable": "Inschakelen",
        "new_password_shown": "Tijdelijk wachtwoord voor {email} (alleen nu zichtbaar):",
        "email_invalid": "Vul een geldig e-mailadres in.",
        "email_taken": "Er is al een gebruiker met dit e-mailadres.",
        "role_invalid": "Kies een rol.",
        "last_admin": "De laatste actieve beheerder kan niet worden uitgeschakeld.",
        "user_unknown": "Onbekende gebruiker.",
        "password_too_short": "Het wachtwoord moet minstens 12 tekens hebben.",
        "password_too_long": "Het wachtwoord is te lang.",
        "admin_only": "Alleen beheerders kunnen dit wijzigen.",
        "not_allowed_now": "Deze wijziging kon niet worden verwerkt: {message}",
        "conflict": "Iemand anders heeft tegelijk iets gewijzigd. Bekijk de pagina opnieuw.",
        "ev_InvoiceRecorded": "Factuur {invoice_date}",
        "ev_InvoiceCorrected": "Factuur gecorrigeerd {invoice_date}",
        "ev_ProspectRegistered": "Gegevens verkregen op {acquired_on}",
        "ev_PreferencesChanged": "Voorkeuren gewijzigd",
        "ev_ObjectionRecorded": "Afgemeld voor alle marketing",
        "ev_ObjectionWithdrawn": "Afmelding ingetrokken",
        "ev_MarketingActivityRecorded": "Bericht verstuurd",
        "ev_SubjectErased": "Gegevens verwijderd",
        "who_subject": "klant",
        "who_staff": "medewerker",
        "who_importer": "DMS-import",
        "who_system": "systeem",
        "who_operator": "beheerder platform",
        "who_api": "koppeling",
        "how_portal": "privacyportaal",
        "how_staff_portal": "AVG Beheer",
        "how_phone": "telefonisch",
        "how_email": "e-mail",
        "how_in_person": "aan de balie",
        "how_import": "DMS-import",
        "how_api": "API",
        "how_retention": "bewaartermijn",
        "how_system": "systeem",
    },
    "en": {
        "skip": "Skip to content",
        "portal_title": "Privacy Portal",
        "portal_intro": "Read our privacy policy here and decide which messages you receive from us.",
        "source": "Data from",
        "policy": "Our privacy policy",
        "policy_version": "Version",
        "settings": "Your settings",
        "settings_help": "Choose per kind of message and per channel what you want. Your choice applies as soon "
                         "as you save.",
        "col_channel": "Channel",
        "col_now": "Now",
        "col_choice": "Your choice",
        "choice_default": "According to the term shown",
        "choice_opt_in": "Yes, please",
        "choice_opt_out": "No, thank you",
        "save": "Save settings",
        "object_title": "No more marketing",
        "object_help": "You can object to all direct marketing. We will then send you no marketing messages at "
                       "all, whatever the settings above.",
        "object_button": "Unsubscribe from all marketing",
        "objected_banner": "You have unsubscribed from all marketing. We do not send you marketing messages.",
        "withdraw_button": "Withdraw unsubscribe",
        "saved": "Your change has been saved.",
        "nothing_changed": "Nothing was changed.",
        "receipt": "Download your confirmation (JSON)",
        "receipt_help": "The confirmation states what you chose, when, and which version of our privacy policy "
                        "you saw.",
        "policy_changed": "Our privacy policy changed while you had this page open. Please read the new policy and "
                          "save your choice again.",
        "invalid_choice": "An invalid choice was sent.",
        "field_text_invalid": "The field {field} holds a character that does not belong in text (a control"
                              " character). Nothing was saved.",
        "yes": "Yes",
        "no": "No",
        "neutral_title": "Link not valid",
        "neutral_body": "This link is not (or no longer) valid. Ask the company that sent you this link for a "
                        "new one.",
        "rate_title": "Please wait",
        "rate_body": "Too many requests from your address. Please try again in a minute.",
        "forbidden_title": "No access",
        "forbidden_body": "You do not have access to this page.",
        "csrf_body": "The form has expired or was not sent from this site. Reload the page and try again.",
        "not_found_title": "Not found",
        "not_found_body": "This page does not exist.",
        "bad_request_title": "Bad request",
        "error_title": "Something went wrong",
        "error_body": "Please try again later.",
        "language": "Language",
        "preview_banner": "Staff preview: this is the portal as the customer sees it. Changes cannot be made "
                          "here; use the customer page.",
        "why_erased": "No: your data has been erased.",
        "why_objected": "No: you unsubscribed from all marketing (since {since}).",
        "why_opted_out": "No: you unsubscribed from this (since {since}).",
        "why_explicit_consent": "Yes: you gave your consent (on {since}).",
        "why_soft_opt_in": "Yes, until {until}, based on your last purchase or workshop visit ({start}).",
        "why_prospect_term": "Yes, by post until {until}: we received your details on {start}.",
        "why_term_expired": "No: the term after your last purchase or visit has ended.",
        "why_term_expired_prospect": "No: the term has ended.",
        "why_not_a_customer": "No: only if you give your consent.",
        "why_consent_required": "No: only if you give your consent.",
        "why_not_a_prospect": "No: does not apply.",
        "staff_title": "GDPR management",
        "login_title": "Log in to GDPR management",
        "login_tenant": "Company (code)",
        "login_email": "E-mail address",
        "login_password": "Password",
        "login_button": "Log in",
        "login_failed": "Login failed: check company code, e-mail address and password.",
        "login_locked": "Too many failed attempts from this address. Wait a little and try again (a little longer"
                        " after every further failure), or ask an admin to unlock the account.",
        "logout": "Log out",
        "logged_in_as": "Logged in as",
        "nav_overview": "GDPR management",
        "nav_policy": "GDPR policy",
        "nav_terms": "GDPR opt-in policy",
        "nav_customers": "Look up customer",
        "nav_reach": "Reach",
        "nav_changes": "Changes",
        "nav_users": "Users",
        "agreement": "Processor agreement signed",
        "agreement_on": "signed on",
        "module": "MijnGegevensBescherming.nl",
        "module_active": "Active",
        "module_inactive": "Not active",
        "admins": "Users with admin rights",
        "admins_none": "There are no active admins.",
        "disclaimer": "Behind the two buttons you manage your GDPR policy and your opt-in settings, based on your "
                      "own company's privacy policy. The default texts and terms are a starting point: it remains "
                      "your responsibility to adapt them to your company. What you manage here is what your "
                      "customer sees in the Privacy Portal.",
        "change": "Change",
        "signed_on_label": "Date signed",
        "date_invalid": "For a signed agreement, enter the date it was signed.",
        "set_agreement": "Save agreement",
        "set_module": "Save module",
        "saved_staff": "Saved.",
        "back_overview": "Back to the GDPR page",
        "back_list": "Back to the list",
        "new_chapter": "New chapter",
        "col_active": "Active",
        "col_title": "Title",
        "col_actions": "Actions",
        "up": "Up",
        "down": "Down",
        "delete": "Delete",
        "edit": "Edit",
        "body": "Body",
        "body_help": "HTML formatting is allowed (paragraphs, lists, bold, italics, links). Scripts and other active "
                     "content are removed.",
        "save_changes": "Save changes",
        "title_required": "Enter a title.",
        "title_too_long": "The title is too long (at most 200 characters).",
        "body_too_long": "The text is too long (at most 20,000 characters).",
        "terms_intro": "The number of months after the last invoice date (prospects: after the date the data was "
                       "acquired) in which a message may be sent.",
        "terms_disclaimer": "The default terms are based on an interpretation of the law. Adapt them to your own "
                            "company's privacy policy.",
        "col_category": "Marketing category",
        "months_invalid": "Enter a whole number from 0 to 120.",
        "terms_errors": "Not saved: check the marked fields.",
        "warnings": "Points of attention",
        "no_warnings": "No points of attention.",
        "severity_warning": "Warning",
        "severity_info": "Note",
        "law_title": "Law and codes of conduct",
        "law_intro": "What the law and the codes of conduct say about messages sent today ({date}). A statute "
                     "decides the answer to your sending systems, even if your term is longer; a code of conduct "
                     "gives a point of attention. Rules version {version}.",
        "law_in_force": "In force now",
        "law_upcoming": "Starting later",
        "law_none_upcoming": "Our rule table holds no later changes.",
        "law_kind_statute": "Statute",
        "law_kind_code": "Code of conduct",
        "law_since": "In force since {date}",
        "law_long_standing": "Long-standing",
        "law_until": "up to and including {date}",
        "law_starts": "In force from {date}",
        "law_source": "Source",
        "law_unconfirmed": "The decree that fixes this date is not in our sources yet; the date may still move.",
        "audience_customer": "customers",
        "audience_non_customer": "non-customers",
        "find_customer": "Find customer",
        "data_source": "Data source",
        "customer_ref": "Customer number",
        "find": "Search",
        "customer_not_found": "No customer with this number in this data source.",
        "customer": "Customer",
        "kind_customer": "customer",
        "kind_prospect": "prospect",
        "portal_link": "GDPR privacy preferences",
        "link_live": "A personal link exists, made on {date}. For security we do not keep the link itself; make a "
                     "new link if you want to send it.",
        "link_none": "There is no personal link yet.",
        "link_new": "Make a new link",
        "link_rotate": "Make a new link (the old link stops working)",
        "link_revoke": "Revoke link",
        "link_issued": "New personal link (visible only now):",
        "link_revoked": "The link has been revoked.",
        "open_portal": "View the portal as the customer sees it",
        "change_on_behalf": "Change on behalf of the customer",
        "request_method": "Request received",
        "method_phone": "by phone",
        "method_email": "by e-mail",
        "method_in_person": "in person",
        "reason": "Reason",
        "reason_help": "For example: customer asked by phone.",
        "reason_required": "Enter a reason.",
        "reason_too_long": "The reason is too long (at most 500 characters).",
        "objection_on_behalf": "Unsubscribe from all marketing on behalf of the customer",
        "withdraw_on_behalf": "Withdraw unsubscribe on behalf of the customer",
        "history": "History",
        "col_when": "When",
        "col_what": "What",
        "col_who": "By",
        "col_how": "Through",
        "col_version": "Policy version",
        "users_title": "Users",
        "col_email": "E-mail address",
        "col_role": "Role",
        "col_status": "Status",
        "role_admin": "admin",
        "role_staff": "staff",
        "role_marketing": "marketing (mailing export)",
        "status_active": "active",
        "status_disabled": "disabled",
        "status_locked": "locked until {until}",
        "status_backoff": "waiting after failed logins ({n} address(es))",
        "unlock": "Unlock",
        "new_user": "New user",
        "create_user": "Create user",
        "reset_password": "Reset password",
        "disable": "Disable",
        "enable": "Enable",
        "new_password_shown": "Temporary password for {email} (visible only now):",
        "email_invalid": "Enter a valid e-mail address.",
        "email_taken": "A user with this e-mail address already exists.",
        "role_invalid": "Choose a role.",
        "last_admin": "The last active admin cannot be disabled.",
        "user_unknown": "Unknown user.",
        "password_too_short": "The password must have at least 12 characters.",
        "password_too_long": "The password is too long.",
        "admin_only": "Only admins can change this.",
        "not_allowed_now": "This change could not be made: {message}",
        "conflict": "Someone else changed something at the same time. Please look at the page again.",
        "ev_InvoiceRecorded": "Invoice {invoice_date}",
        "ev_InvoiceCorrected": "Invoice corrected {invoice_date}",
        "ev_ProspectRegistered": "Data acquired on {acquired_on}",
        "ev_PreferencesChanged": "Preferences changed",
        "ev_ObjectionRecorded": "Unsubscribed from all marketing",
        "ev_ObjectionWithdrawn": "Unsubscribe withdrawn",
        "ev_MarketingActivityRecorded": "Message sent",
        "ev_SubjectErased": "Data erased",
        "who_subject": "customer",
        "who_staff": "staff",
        "who_importer": "DMS import",
        "who_system": "system",
        "who_operator": "platform operator",
        "who_api": "integration",
        "how_portal": "privacy portal",
        "how_staff_portal": "GDPR management",
        "how_phone": "by phone",
        "how_email": "e-mail",
        "how_in_person": "in person",
        "how_import": "DMS import",
        "how_api": "API",
        "how_retention": "retention period",
        "how_system": "system",
    },
}

_ACCEPT_EN: Final = ("en",)


def pick_language(query_lang: str | None, accept_language: str | None) -> tuple[Lang, bool]:
    """(language, chosen explicitly in the URL). ``?lang=`` wins, then the first supported
    language in ``Accept-Language`` (by q-value), else Dutch."""
    if query_lang in LANGS:
        return query_lang, True  # type: ignore[return-value]
    if accept_language:
        best: tuple[float, Lang] | None = None
        for part in accept_language.split(",")[:20]:
            tag, _, params = part.strip().partition(";")
            primary = tag.strip().lower().split("-")[0]
            if primary not in LANGS:
                continue
            q = 1.0
            params = params.strip()
            if params.startswith("q="):
                try:
                    q = float(params[2:])
                except ValueError:
                    q = 0.0
            if q > 0 and (best is None or q > best[0]):
                best = (q, primary)  # type: ignore[assignment]
        if best is not None:
            return best[1], False
    return "nl", False


def format_date(day: dt.date | dt.datetime | None, lang: Lang) -> str:
    """"15 juli 2025" / "15 July 2025"."""
    if day is None:
        return ""
    return f"{day.day} {MONTHS[lang][day.month - 1]} {day.year}"


class Messages:
    """The words of one language, for templates: ``t("save")``, ``t("why_soft_opt_in", until=...)``."""

    __slots__ = ("lang", "_text")

    def __init__(self, lang: Lang) -> None:
        self.lang = lang
        self._text = TEXT[lang]

    def __call__(self, key: str, **values: object) -> str:
        text = self._text.get(key, key)
        return text.format(**values) if values else text

    def date(self, day: dt.date | dt.datetime | None) -> str:
        return format_date(day, self.lang)

    def category(self, category: str) -> str:
        return CATEGORY_LABEL[self.lang].get(category, category)

    def category_admin(self, category: str) -> str:
        return CATEGORY_ADMIN[self.lang].get(category, category)

    def cell(self, category: str, channel: str) -> str:
        """"Onderhoudsherinneringen per e-mail"."""
        return f"{CATEGORY_NOUN[self.lang].get(category, category)} {CHANNEL_PHRASE[self.lang].get(channel, channel)}"

    def channel(self, channel: str) -> str:
        return CHANNEL_LABEL[self.lang].get(channel, channel)
