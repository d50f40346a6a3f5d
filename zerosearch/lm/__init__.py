"""Language models: the model/tokenizer factory and loading, the supervised training loop, the
`hf` generator and its fast decoder step, the vLLM backend."""
