"""Placeholder: filled in by the model-suite work (issue 3)."""
