"""open_clip training launch, zero-shot evaluation and the CLIP overlap analysis."""
