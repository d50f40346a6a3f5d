"""zerosearch: train a search agent against a simulated search engine (ZeroSearch)."""

__version__ = "0.1.0"
