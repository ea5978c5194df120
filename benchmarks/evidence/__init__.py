"""Evidence: scripts that reproduce the AFT paper's claims offline and write docs/evidence/ (see EVIDENCE.md)."""
