"""Custom kernels by language (triton/, nki/); they import nothing of trainbench outside tests."""
