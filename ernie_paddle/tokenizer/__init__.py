"""Text in and out: the tokenizer, its backends, chat templates, the streaming detokenizer and VL prompts."""
