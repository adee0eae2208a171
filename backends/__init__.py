"""Backends: one package per framework, each implementing trainbench.backend.Backend."""
