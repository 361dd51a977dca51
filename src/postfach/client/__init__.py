"""The client side: ``postfach fetch`` (POP3 download) and ``postfach sync`` (IMAP <-> Maildir)."""
