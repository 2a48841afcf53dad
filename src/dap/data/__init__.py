"""Data sources: procedural synthetic panoramas, sharded datasets and ERP augmentations."""
