"""Everything a run leaves on disk: the run directory, checkpoints, reports, figures, sweep summaries."""
