"""The gateway's web side: HTTP API and console."""
