"""Reading the files of model folders and users (JSON, safetensors, torch zip files, ONNX
weights) safely, and checking them."""
