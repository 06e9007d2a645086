"""The pure consent rules (PRODUCT.md): no I/O, no clock, no logging.

Above the message types and the vocabulary (``schemas/``), below the services; the layers and
what these modules may not import are checked in CI (pyproject.toml ``[tool.importlinter]``,
docs/layering.md).

* :mod:`consent.terms`: calendar months, the ledger day, the opt-in term matrix.
* :mod:`consent.seed`: the seed's ten policy chapters and default terms.
* :mod:`consent.policy`: the policy fold and its version id.
* :mod:`consent.tenant`: the tenant fold and its history (as-of matrix and policy).
* :mod:`consent.subject`: the subject fold (invoices, acquisitions, preferences, ...).
* :mod:`consent.eligibility`: THE eligibility rule, the 25-cell matrix, the next change.
* :mod:`consent.law`: the Dutch marketing rules by send date, as dated, cited data.
* :mod:`consent.warnings`: compliance warnings on a term matrix.
* :mod:`consent.retention`: when a subject's retention ends (the daily job: services/audit).
"""
