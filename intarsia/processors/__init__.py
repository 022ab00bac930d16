"""Input processing: media loading, per-modality processors and placeholder expansion."""
