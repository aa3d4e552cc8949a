"""The measurement database: lab history and per-device calibration in one SQL store (SQLite or PostgreSQL)."""
