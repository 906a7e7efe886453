"""Layout rules and streaming conversion between the Paddle and HF ERNIE 4.5 checkpoint layouts."""
