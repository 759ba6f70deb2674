"""One module per benchmark scenario; each registers itself with `benchmarks.registry.scenario`.
Every module in this package (not starting with `_`) is imported by the registry."""
