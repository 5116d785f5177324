"""Comparing two models: agreement on a data set and linear CKA between their layers."""
