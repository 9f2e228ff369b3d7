"""The `tiny` world: tiny Llamas on a word-instruction task with a known quality (see README.md)."""
