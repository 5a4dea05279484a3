"""Perceptual hashing, evaluation-set indexes and near-duplicate search."""
