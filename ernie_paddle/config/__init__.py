"""Model configuration: the text config (both dialects), the VL additions, and the family presets."""
