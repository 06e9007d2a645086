"""The composition root: where the HTTP apps are assembled from the services' routes.

- :mod:`services.api.app`: ``create_app(settings)``, the JSON API of every service (ledger,
  audit, importer, projector, portal links, mailing) on one port;
- :mod:`services.api.portal`: ``create_portal_app(settings)``, the privacy portal and the
  dealer's AVG Beheer pages.

Only entry points import this package (``services/cli.py``, ``services/devstack.py``, the
portal's ``serve`` command and local-stack component, tests); no service module does, and
route modules take their request context from ``services.ledger.api.context`` and
``services.portal.context``. pyproject.toml's import contracts check both (docs/layering.md).
"""
