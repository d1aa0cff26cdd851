"""Property tests: hostile input and the model-based consistency walk."""
