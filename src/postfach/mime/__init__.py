"""MIME structure of stored messages (pure core); see `postfach.mime.structure`."""
