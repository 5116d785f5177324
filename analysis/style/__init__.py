"""Texture synthesis and style transfer: Gatys et al. on the optimisation engine (the one documented edge style -> optimize), and fast feed-forward style networks."""
