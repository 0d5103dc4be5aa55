"""GGUF for llama.cpp, Ollama and LM Studio: ``prune-surgery gguf OUT FILE.gguf``.

- :mod:`.identity`: the source tokenizer's pre-tokenizer identity, recorded at pruning time
  in ``prune_surgery.json`` (``"source_tokenizer"``); core path, no torch.
- :mod:`.converter`: llama.cpp's own ``convert_hf_to_gguf.py``, fetched from the pinned
  ``llama-cpp-python`` sdist on PyPI into a cache outside the project.
- :mod:`.convert`: :func:`convert_to_gguf`, which runs the converter in a child process
  (:mod:`.driver`) with the recorded identity pinned, and writes the GGUF atomically.
"""
