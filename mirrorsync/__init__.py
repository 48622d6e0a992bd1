"""mirrorsync: keep a local Maildir a true two-way mirror of an IMAP account."""

__version__ = "0.1.0"
