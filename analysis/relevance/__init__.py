"""Relevance: layer-wise relevance propagation with zennit (LRP) and concept relevance propagation (CRP) with its data-set galleries."""
