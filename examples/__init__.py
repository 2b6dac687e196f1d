"""Runnable examples (see README.rst, "Walkthrough"); a package so handlers can be named
``examples.fibonacci_service:fibonacci`` from the repository root."""
