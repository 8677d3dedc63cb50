"""Local stand-in for TensorFlow Serving: the PredictionService gRPC API over the same models/.

LOCAL STAND-IN ONLY. Production runs the `tensorflow/serving` image with the same models.config
(docker-compose.yml, k8s/). This server implements what our clients call (Predict,
GetModelMetadata, ModelService.GetModelStatus) with the official tensorflow-serving-api messages,
so a client cannot tell the two apart, and it manages versions the way TF Serving does:

- each model's `model_version_policy` (latest N, all, specific) picks the versions to serve from the
  numbered folders under its base path, and `version_labels` name versions ("stable", "canary");
- the folders and the config file are polled, so a new version written under a model's base path is
  loaded and swapped in without a restart, and an old one unloaded only after its successor serves;
- a version that is missing its saved_model.pb or fails to load is reported (log, GetModelStatus)
  and skipped: the previous version keeps serving. It is retried when its files change.
"""
