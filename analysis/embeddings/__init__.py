"""Embeddings: features of a data set at a layer, nearest neighbours in feature and pixel space, and 2-D / 3-D maps (PCA, t-SNE, UMAP), up to millions of points."""
