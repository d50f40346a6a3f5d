"""Search engines behind the batched ``zerosearch.protocol.SearchEngine`` interface: real ones
(BM25, dense, web), the LLM simulator with its curriculum, hybrids, and the factory."""
