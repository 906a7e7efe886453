"""Compiled CPU operators (Paddle custom C++ operators built on first use) and their build."""
