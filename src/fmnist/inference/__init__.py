"""A trained checkpoint put to use: restored, evaluated, and asked for predictions."""
