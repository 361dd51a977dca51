"""``postfach migrate``: copy a whole remote IMAP account into a postfach account."""
