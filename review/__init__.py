"""The system of record for human review: schema, state machine, queue, verdicts, actions,
outbox and the hash-chained audit log.  Knows nothing of models or HTTP routing."""
