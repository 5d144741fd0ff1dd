"""Built-in plugins (sources in the repository's top-level plugins/ folder)."""
