"""Console entry points: thin Hydra wrappers that compose a config, call the library, report."""
