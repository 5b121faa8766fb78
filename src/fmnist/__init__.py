"""fmnist: train, evaluate and inspect small image classifiers from Hydra configs."""

__version__ = "0.1.0"
