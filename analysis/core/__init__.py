"""The floor every family stands on: errors, configuration, storage and caches, jobs, hooks, the layer table, images, data sets, predictions and model bundles. Imports nothing above it."""
