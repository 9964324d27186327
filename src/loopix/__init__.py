"""loopix: a fast client for Loopix-style mix networks, speaking Nym's Sphinx packet format."""

__version__ = "0.1.0"
