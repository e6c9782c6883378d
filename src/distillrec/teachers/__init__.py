"""Teachers: LLM recommenders trained on the split and exported to the common Parquet schema."""
