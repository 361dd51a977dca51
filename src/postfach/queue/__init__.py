"""The outbound queue: a pure retry schedule, SQLite persistence and the sender loop."""
