"""Lab CI: run the pipeline on a fleet of boards in parallel, report it, keep a history.

inventory (lab file) -> runner (thread pool: lock, ship with retries, classify) -> history
(regressions) -> reports (JSON, JUnit, HTML with plots, Markdown summary).
"""
