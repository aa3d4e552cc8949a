"""Plan -> Release -> Telemetry: package, provision, dry load, transfer, switch, run, serve; pipeline.py chains the stages."""
