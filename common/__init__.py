"""The base layer every package builds on: the user-facing error type, atomic file writes, the token types
encoders return, and deterministic crash points for the crash-safety tests. It imports nothing of the
project and nothing heavier than torch."""
