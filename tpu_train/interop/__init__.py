"""Interoperability: Hugging Face `transformers` Llama checkpoints in and out."""
