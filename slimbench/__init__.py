"""slimbench: benchmark transformer compression methods apples-to-apples."""

__version__ = "0.1.0"
