"""Third-party servers the suite runs the product against (LiteLLM's proxy), each from an
environment of its own."""
