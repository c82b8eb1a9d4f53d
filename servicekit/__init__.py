"""The small kit every deployable of this project is built with.

The monolith and the extracted billing service both need the same plumbing:
one error envelope, one event envelope with an outbox and an inbox, one
idempotency mechanism, one unit of work, request ids in every log line. It
lives here once, so that extracting a module never means copying it.

servicekit depends on no deployable (an import-linter contract says so).
"""
