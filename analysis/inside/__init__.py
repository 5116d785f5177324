"""Inside the network: filters, activation maps, channel and neuron gradients, maximally activating patches and receptive fields."""
