"""zerosearch: train a search agent against a simulated search engine (ZeroSearch)."""

__version__ = "0.2.0"
