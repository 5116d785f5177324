"""Model bundles and where they come from: the embedded EfficientNet-Lite0 and digits CNN, torchvision architectures, user weights and operator-trusted model files."""
