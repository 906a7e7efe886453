"""A folder turned into a running model: device set-up, weights, generation, the predictor and tensor parallel."""
