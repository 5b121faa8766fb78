"""One training run: setup (config -> objects), step runners, the epoch loop, resumable state, the run."""
