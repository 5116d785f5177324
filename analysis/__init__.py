"""convlens' analysis code (no Streamlit here). Importing it tunes glibc's allocator for
large tensor buffers (analysis/core/allocator.py; CONVLENS_MALLOC_TUNING=0 turns that off)."""
from analysis.core import allocator as _allocator

_allocator.tune()
