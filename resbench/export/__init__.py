"""Carry a plan to the engine a user runs: the sglang launch flags that come closest
(`sglang.sglang_flags`), or the Python that applies it to a diffusers pipeline
(`diffusers_snippet.diffusers_snippet`). Each returns what it could express and, line by
line, what it could not."""
