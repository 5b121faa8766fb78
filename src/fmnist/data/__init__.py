"""Files -> uint8 tensors -> batches: the datasets on disk, splits, loaders and batched transforms."""
