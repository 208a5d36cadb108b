"""The model runtime: where a model comes from (source, archive), the loaded model (model), its
onnxruntime export (onnx), and the engine, the one loop per process that runs forward passes."""
