"""The lab: a fleet of boards in parallel (inventory, locks, scheduler, retries, reports, regressions)."""
