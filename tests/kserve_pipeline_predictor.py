"""A predictor Clarion did not write: the kserve SDK's own ModelServer around a transformers
text-classification pipeline, as a KServe custom predictor is written (V1 and V2 on one port).

    python tests/kserve_pipeline_predictor.py MODEL_DIR NAME HTTP_PORT

V1 `:predict` answers the pipeline's own output (each text's [{"label", "score"}, ...]); V2 `infer`
answers the scores as an FP32 output `probabilities` in the model's label order. tests/test_remote_models.py
runs it.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
from transformers import pipeline


class PipelinePredictor(Model):
    def __init__(self, name: str, model_dir: str) -> None:
        super().__init__(name)
        self.model_dir = model_dir
        self.load()

    def load(self) -> bool:
        self.classifier = pipeline("text-classification", model=self.model_dir, top_k=None, device="cpu")
        config = self.classifier.model.config
        self.labels = [config.id2label[i] for i in range(config.num_labels)]
        self.ready = True
        return self.ready

    def _scores(self, texts: list[str]) -> np.ndarray:
        answers = self.classifier(texts)
        by_label = [{item["label"]: item["score"] for item in answer} for answer in answers]
        return np.asarray([[scores[label] for label in self.labels] for scores in by_label], dtype=np.float32)

    async def predict(self, payload: Any, headers: Any = None, response_headers: Any = None) -> Any:
        if isinstance(payload, InferRequest):
            texts = [t.decode() if isinstance(t, bytes) else str(t) for t in payload.inputs[0].data]
            scores = self._scores(texts)
            output = InferOutput(name="probabilities", shape=list(scores.shape), datatype="FP32")
            output.set_data_from_numpy(scores, binary_data=False)
            return InferResponse(model_name=self.name, infer_outputs=[output], response_id=payload.id)
        return {"predictions": self.classifier(list(payload["instances"]))}


if __name__ == "__main__":
    model_dir, name, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ModelServer(http_port=port, enable_grpc=False, workers=1).start([PipelinePredictor(name, model_dir)])
