"""What the process serves: the Kopf admission handlers and the AdmissionReview checks in front of
them, the probes, the metrics and the webhook certificates."""
