"""``postfach sync``: all folders of an IMAP account <-> a local Maildir, both ways.

``names`` and ``plan`` are pure (what to do); ``state`` (SQLite) and ``maildir`` (files) keep
the two local halves; ``engine`` talks to the server and carries the plan out.
"""
