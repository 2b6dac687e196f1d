"""Grenache for Twisted: grapes, links and peers compatible with the Node.js implementation."""

__version__ = "0.1.0"
