"""The operator ("customer") HTTP API and the web console."""
