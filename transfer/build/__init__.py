"""Build a small model in one flow (rank, choose on a hold-out, retrain, export, report card)."""
