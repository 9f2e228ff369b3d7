"""Generated result reports (results/<profile>/REPORT.md)."""
