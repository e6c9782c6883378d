"""Data layer: raw sources → canonical frames (ingest) → integer sequences (split)."""
