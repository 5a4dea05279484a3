"""Evaluation of trained models: zero-shot classification, the CLIP overlap analysis (section 5), its plots."""
