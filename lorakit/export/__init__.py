"""Deploy formats: GGUF for llama.cpp/Ollama/LM Studio, serialized bitsandbytes for transformers/vLLM."""
