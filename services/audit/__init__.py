"""Audit and data subject rights: as-of views, policy history, consent receipts, tenant
snapshots, access export (GDPR art. 15), erasure by crypto-shredding (art. 17) and the
retention job. The consent rules themselves live in :mod:`consent`; this package only
loads events, applies those rules at a knowledge time, and presents the result."""
