"""The NumPy reference backend: trainbench's ground truth, runnable anywhere Python is."""
