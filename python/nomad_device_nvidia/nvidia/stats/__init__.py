"""Stats: the engine contract, the hub every stream shares, the native and python engines."""
