"""Concepts discovered from data (CRAFT): crops, activations, non-negative matrix factorisation, concept importance and maps."""
