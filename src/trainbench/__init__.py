"""trainbench: train one Llama-architecture transformer through pluggable backends and measure it."""

__version__ = "0.1.0"
