"""Demo and test factories: tiny checkpoints, a trained demo tokenizer, MTP fitting, the built-in demo. No runtime module imports this."""
