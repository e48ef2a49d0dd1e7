"""What the five services share: database access, domain errors, consistency mode, crash hooks."""
