"""Telemetry -> Verdict -> Report: validation (pure), the Report noun, report.json/report.md/junit.xml."""
