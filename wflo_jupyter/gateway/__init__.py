"""Host side of LLM calls: providers, usage, and estimate→reserve→call→settle→cache→record."""
