"""Device characterisation protocols (see issue 5)."""
