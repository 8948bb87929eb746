"""The types and primitives every layer shares: check results and statuses, reasons, plans,
exit codes, progress notes, the clock, drain ownership, the bounded subprocess and the
detached child. Nothing here imports the rest of nodecheck (docs/architecture.md)."""
