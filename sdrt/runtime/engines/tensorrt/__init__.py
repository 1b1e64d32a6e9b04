"""The TensorRT backend: profiles.py (optimization profiles) and plan.py (cache keys, build
settings), neither needing TensorRT; memory.py (the device memory plan), cuda.py (imports and
CUDA calls), build.py (`sdrt build`) and run.py (engines at run time)."""
