"""Light models trained from a store: streaming, targets, decoders, probes, training loops."""
