"""Vision and audio towers and projectors, shared by the multimodal models."""
