"""Prefect flows: one per DVC stage (same name), the pipeline flow and its deployment."""

import os

# Prefect's temporary local server (flows run without PREFECT_API_URL) would try to send
# telemetry and log an ERROR when offline; the Makefile sets the same default.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
