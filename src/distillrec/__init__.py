"""distillrec: distil LLM recommenders into small sequential recommenders, as a DVC pipeline."""

__version__ = "0.1.0"
