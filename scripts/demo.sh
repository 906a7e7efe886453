#!/usr/bin/env bash
# The main job on the built-in demo models: nothing is downloaded from a model hub.
source "$(dirname "$0")/_setup_env.sh"
exec ernie-paddle demo "$@"
