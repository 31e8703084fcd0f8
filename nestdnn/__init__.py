"""nestdnn core: model families, channel groups, data, training and the multi-capacity format."""
