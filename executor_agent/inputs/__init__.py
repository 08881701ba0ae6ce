"""Job inputs: volume downloads (inline, HTTP, Hugging Face, multi) unpacked safely into /volume."""
