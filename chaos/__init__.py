"""Chaos experiments: faults, probes, safeguards, rollback, journal and report."""
