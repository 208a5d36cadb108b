"""The model runtime: where a model comes from (source, archive), text as the model sees it
(encoding), a head's activation (heads), loading (loading), the loaded model and its forward pass
(model), its onnxruntime export (onnx), and the engine, the one loop per process that runs passes."""
