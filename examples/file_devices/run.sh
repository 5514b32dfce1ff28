#!/bin/sh
# Entry point for Nomad: the plugin under the repository's .venv interpreter.
here=$(cd "$(dirname "$0")" && pwd)
exec "$here/../../.venv/bin/python" "$here/plugin.py" "$@"
