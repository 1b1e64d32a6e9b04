"""The TensorRT backend: plan.py (profiles, cache keys, build settings; no TensorRT needed),
memory.py (the device memory plan), cuda.py (imports and CUDA calls), build.py (`sdrt build`)
and run.py (engines at run time)."""
