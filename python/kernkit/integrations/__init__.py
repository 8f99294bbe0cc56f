"""Integrations with other libraries (optional dependencies, imported on demand):

- :mod:`kernkit.integrations.hf`: kernkit as a Hugging Face transformers attention implementation.
"""
